"""The admin listener (SPEC §5): health, readiness, metrics and the control API, on aiohttp.

Off the hot path, so aiohttp's comfort costs nothing here. Every answer is JSON (but
``/metrics``); every error is ``{"error": {"status", "message", "where"?}}`` and changes
nothing. Mutations need ``Authorization: Bearer <token>`` when a token is configured; reads
too with ``admin.protect_reads``. The token is compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .client import is_loopback
from .config import not_underflowed
from .control import BadRequest, ControlError, NotFound, Outcome, parse_if_match
from .store import StoreError

if TYPE_CHECKING:
    from .config import Route
    from .server import Server

SERVER_KEY: web.AppKey[Server] = web.AppKey("server")
MAX_VERSION = 2**63 - 1  # versions are SQLite INTEGERs
log = logging.getLogger("splitproxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, where: str | None = None) -> web.Response:
    body: dict[str, Any] = {"status": status, "message": message}
    if where:
        body["where"] = where
    return web.json_response({"error": body}, status=status)


class _StoreErrorLog:
    """At most one log line a second for the admin API's refusals for the state database
    (a controller retrying would fill the log), with how many were not logged meanwhile."""

    last = -1.0
    quiet = 0


def _log_store_error(request: web.Request, exc: StoreError) -> None:
    now = asyncio.get_running_loop().time()
    if now - _StoreErrorLog.last < 1.0:
        _StoreErrorLog.quiet += 1
        return
    more = f" (and {_StoreErrorLog.quiet} more refusals since the last line)" if _StoreErrorLog.quiet else ""
    _StoreErrorLog.last, _StoreErrorLog.quiet = now, 0
    log.error("admin API: %s %s refused, 503: %s%s", request.method, request.path, exc, more)


@web.middleware
async def close_after_an_unread_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An answer to a request whose body was not read to its end says ``Connection: close``:
    the listener does not read the rest (``lingering_time=0``, server.py) and closes the
    connection after it, so a client must not send another request on it."""
    resp = await handler(request)
    if request.body_exists and not request.content.is_eof() and not resp.prepared:
        resp.force_close()
    return resp


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure is a JSON error naming what is wrong; never a traceback."""
    try:
        return await handler(request)
    except ControlError as exc:
        return web.json_response(exc.to_json(), status=exc.status)
    except StoreError as exc:
        _log_store_error(request, exc)
        return error(503, f"state database unavailable: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error(exc.status, exc.reason)
        if "Allow" in exc.headers:  # a 405 says which methods are (RFC 9110 §15.5.6)
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except Exception:
        # A bug of ours: logged with its traceback, answered as JSON without it.
        log.exception("admin API: %s %s failed", request.method, request.path)
        return error(500, "internal error; the proxy log has the details")


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    token = server.admin_token
    path = request.path
    if token is None or path in ("/healthz", "/readyz"):
        return await handler(request)
    is_read = request.method in ("GET", "HEAD")
    if is_read and not server.config.admin.protect_reads:
        return await handler(request)
    if not _token_presented(request, token):
        resp = error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="splitproxy"'
        return resp
    return await handler(request)


def _token_presented(request: web.Request, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # hmac.compare_digest: the time taken does not depend on where the strings differ. On
    # bytes: aiohttp decodes a header's bytes that are not UTF-8 as lone surrogates
    # (surrogateescape), which a plain .encode() refuses; surrogatepass encodes any string.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass")
    )


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _is_ip_or_localhost(host: str) -> bool:
    """``host`` (a Host header: name, optional port) is an IP address or localhost."""
    name = host[1 : host.find("]")] if host.startswith("[") else host.partition(":")[0]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.lower().rstrip(".") == "localhost"
    return True


@web.middleware
async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What a web page the operator opens could make their browser send here is refused.

    - Cross-site request forgery: a change (any method but GET, HEAD, OPTIONS) that a
      browser marks as sent from another origin (``Origin`` not this listener's,
      ``Sec-Fetch-Site`` other than same-origin or none) is ``403``; and a body must be
      labelled JSON (``read_json``), which no HTML form can send.
    - DNS rebinding: without a token, only a ``Host`` that is an IP address or
      ``localhost`` is answered; a page on a name that resolves to this listener is not.
      With a token on a loopback listener, another name needs the token too, reads
      included (``protect_reads`` off leaves them open to local tools, not to such a page).
    """
    host = request.headers.get("Host", "")
    # A browser always sends a Host; an HTTP/1.0 tool may not.
    if host and request.path not in _OPEN_PATHS and not _is_ip_or_localhost(host):
        server = request.app[SERVER_KEY]
        token = server.admin_token
        if token is None:
            return error(
                403, f"Host {host!r} refused: without a token the admin API answers an IP address or localhost"
            )
        if is_loopback(server.config.admin.listen.host) and not _token_presented(request, token):
            return error(
                403,
                f"Host {host!r} refused: on a loopback listener a name other than localhost needs the token, "
                "reads too (DNS rebinding)",
            )
    if request.method not in _SAFE_METHODS:
        origin = request.headers.get("Origin")
        site = request.headers.get("Sec-Fetch-Site")
        if (origin is not None and origin.lower() != f"http://{host}".lower()) or site not in (
            None,
            "same-origin",
            "none",
        ):
            return error(403, "a change sent from another web origin is refused (cross-site request)")
    return await handler(request)


class UnsupportedMediaType(ControlError):
    status = 415


class BodyTooLarge(ControlError):
    status = 413


class BodyTimeout(ControlError):
    status = 408


MAX_BODY: Final = 1 << 20  # the admin API's bodies are a few weights
BODY_SECONDS: Final = 10.0


def _is_json_media(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object, refused with a key given twice (json keeps the last one silently)."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} is given twice")
        out[key] = value
    return out


async def read_json(request: web.Request, *, optional: bool = False) -> object:
    if not request.can_read_body:
        if optional:
            return {}
        raise BadRequest("a JSON body is required", "body")
    try:
        async with asyncio.timeout(BODY_SECONDS):  # a body that stops coming held the connection
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"the body is over the admin API's limit of {MAX_BODY >> 20} MiB", "body") from None
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {BODY_SECONDS:g}s", "body") from None
    except ConnectionError:  # the client went away mid-body: its mistake, not ours to log
        raise BadRequest("the connection closed before the body was whole", "body") from None
    except web.RequestPayloadError as exc:  # "Content-Encoding: gzip" on a plain body: a 500 before
        why = " ".join(str(exc).split())
        raise BadRequest(f"the body cannot be read ({why}); send JSON without a Content-Encoding", "body") from None
    if not raw.strip() and optional:
        return {}
    if not _is_json_media(request.headers.get("Content-Type", "")):
        # No HTML form can send it, so no other web page can make a browser send a change.
        raise UnsupportedMediaType("the body must be sent as Content-Type: application/json", "body")
    try:
        return json.loads(raw, object_pairs_hook=_no_repeated_keys, parse_int=_int, parse_float=_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", "body") from None
    except ValueError as exc:  # a repeated key; an integer of more than 4300 digits
        raise BadRequest(f"the body cannot be read: {exc}", "body") from None
    except RecursionError:
        # json's decoder recurses once per [ or {: about a thousand levels exhaust the stack.
        raise BadRequest("the body is nested too deeply to be read as JSON", "body") from None


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 4300:  # int()'s limit, whose message names sys.set_int_max_str_digits()
        raise ValueError(f"a number of {digits} digits is too large to read")
    return int(text)


def _float(text: str) -> float:
    return not_underflowed(float(text), text)


MAX_ACTOR: Final = 100  # characters of X-Splitproxy-Actor


def actor_of(request: web.Request) -> str:
    """Who made a change: the client's ``X-Splitproxy-Actor`` (the CLI sends ``cli:USER``),
    else ``api``. Bounded and printable, as it is stored and shown."""
    # Bytes that are not UTF-8 (aiohttp's surrogate escapes) are left out; the rest is
    # refused rather than cut or cleaned (QA, eighth round: stored changed, with a 200).
    actor = "".join(ch for ch in request.headers.get("X-Splitproxy-Actor", "api") if not "\udc80" <= ch <= "\udcff")
    if len(actor) > MAX_ACTOR:
        raise BadRequest(f"X-Splitproxy-Actor: at most {MAX_ACTOR} characters, got {len(actor)}", "X-Splitproxy-Actor")
    if not actor.isprintable():
        raise BadRequest(
            "X-Splitproxy-Actor: printable characters only (no tab or control character)", "X-Splitproxy-Actor"
        )
    if actor.strip().lower() == "config":  # QA: a client could record changes as the proxy's own
        raise BadRequest(
            "X-Splitproxy-Actor: 'config' is the proxy's own, for changes from the config file", "X-Splitproxy-Actor"
        )
    return actor or "api"


# ---- views -----------------------------------------------------------------------------------


def route_json(server: Server, route: Route) -> dict[str, Any]:
    controller = server.controller
    total = sum(b.weight for b in route.backends)
    health = server.health_view(route.name)
    return {
        "name": route.name,
        "version": controller.route_versions.get(route.name, 0),
        "match": {"host": route.match.host, "path_prefix": route.match.path_prefix},
        "baseline": route.baseline,
        "sticky": {"by": route.sticky.by, "name": route.sticky.name},
        "backends": [
            {
                "name": b.name,
                "weight": b.weight,
                "share": (b.weight / total) if total > 0 else 0.0,
                "upstreams": [{"url": u.url, **health.get((b.name, u.url), {"healthy": True})} for u in b.upstreams],
            }
            for b in route.backends
        ],
        "overrides": [{o.kind: o.name, "value": o.value, "backend": o.backend} for o in route.overrides],
        "shadow": None
        if route.shadow is None
        else {"backend": route.shadow.backend, "percent": route.shadow.percent, "methods": list(route.shadow.methods)},
    }


def etag(version: int) -> str:
    return f'"{version}"'


def change_response(server: Server, outcome: Outcome) -> web.Response:
    """``change``: the entry in force after the call; ``changed`` false when the weights
    asked for were already in force (nothing recorded, ``change`` is the entry that set them)."""
    entry = outcome.entry
    route = server.controller.route(entry.route)
    resp = web.json_response(
        {"route": route_json(server, route), "change": entry.to_json(), "changed": outcome.changed}
    )
    resp.headers["ETag"] = etag(entry.version)
    return resp


# ---- handlers --------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    if not server.ready:
        return web.json_response({"status": "not ready"}, status=503)
    return web.json_response(
        {"status": "ready", "routes": len(server.config.routes), "version": server.controller.version}
    )


async def metrics(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    body = await server.render_metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_routes(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    check_query(request, ())
    routes = [route_json(server, r) for r in server.config.routes]
    resp = web.json_response({"version": server.controller.version, "routes": routes})
    resp.headers["ETag"] = etag(server.controller.version)
    return resp


async def get_route(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    route = server.controller.route(request.match_info["route"])
    check_query(request, ())
    resp = web.json_response(route_json(server, route))
    resp.headers["ETag"] = etag(server.controller.route_versions.get(route.name, 0))
    return resp


RouteChange = Callable[..., Awaitable[Outcome]]


async def _route_change(request: web.Request, change: RouteChange, *, body_optional: bool = False) -> web.Response:
    """A change of one route's weights: 404 for the route first, then the precondition
    and the body (400, 412), then the change itself."""
    server = request.app[SERVER_KEY]
    name = request.match_info["route"]
    server.controller.route(name)
    check_query(request, ())  # PUT ...?dry_run=1 was applied, and the body's backend beat ?backend=
    if_match = parse_if_match(request.headers.get("If-Match"))
    body = await read_json(request, optional=body_optional)
    return change_response(server, await change(name, body, actor=actor_of(request), if_match=if_match))


async def put_weights(request: web.Request) -> web.Response:
    return await _route_change(request, request.app[SERVER_KEY].controller.set_weights)


async def promote(request: web.Request) -> web.Response:
    return await _route_change(request, request.app[SERVER_KEY].controller.promote)


async def rollback(request: web.Request) -> web.Response:
    return await _route_change(request, request.app[SERVER_KEY].controller.rollback, body_optional=True)


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def check_query(request: web.Request, allowed: tuple[str, ...]) -> None:
    """400 for a query parameter the endpoint does not take, or one given twice: a typo
    (``?Route=``, ``?rout=``) would otherwise be ignored, and a ``DELETE`` of one route's
    report would clear every route's."""
    for name in request.query:
        if name not in allowed:
            takes = ", ".join(f"?{a}" for a in allowed) or "no parameters"
            raise BadRequest(f"unknown query parameter ?{name}; this endpoint takes {takes}", name)
        if len(request.query.getall(name)) > 1:
            raise BadRequest(f"?{name} is given more than once", name)


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _is_digits(raw):
        raise BadRequest(f"?{name} must be a whole number, got {raw!r}", name)
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"?{name} must be between {low} and {high}, got {value}", name)
    return value


async def history(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    check_query(request, ("route", "limit", "before"))
    route = request.query.get("route")
    limit = _int_param(request, "limit", 100, 1, 1000)
    before = _int_param(request, "before", None, 1, MAX_VERSION)
    assert limit is not None
    entries = await server.controller.history(route, limit=limit, before=before)
    return web.json_response({"version": server.controller.version, "entries": [e.to_json() for e in entries]})


async def restore(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    raw = request.match_info["version"]
    if not _is_digits(raw):  # int() takes " 1", "+1" and full-width digits too
        raise NotFound(f"no version {raw!r}", "version")
    version = int(raw)
    if not 1 <= version <= MAX_VERSION:
        raise NotFound(f"no version {raw}", "version")
    check_query(request, ())
    body = await read_json(request, optional=True)
    return change_response(server, await server.controller.restore(version, body, actor=actor_of(request)))


def _report_route(request: web.Request) -> str | None:
    server = request.app[SERVER_KEY]
    check_query(request, ("route",))
    route = request.query.get("route")
    if route is not None and not server.reports.has(route):
        server.controller.route(route)  # 404 for a route neither configured nor reported on
    return route


async def get_report(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    route = _report_route(request)
    await server.collect_shadow(persist=False)  # include what was found up to now
    report = server.reports.to_json(server.config, route)
    # Encoded off the loop, in pieces: one json.dumps of a large report (14 MB: ~100 ms)
    # holds the GIL throughout, and the admin API may share its loop with the data plane.
    text = await asyncio.to_thread(lambda: "".join(json_pieces(report, REPORT_PIECE_DEPTH)))
    return web.Response(text=text, content_type="application/json")


# generated_at/routes -> the routes -> one route -> its endpoints: each endpoint a piece.
REPORT_PIECE_DEPTH: Final = 4


def json_pieces(value: object, depth: int) -> Iterator[str]:
    """``json.dumps(value)``'s text in pieces: containers down to ``depth`` levels are
    written here, what is below them by one ``json.dumps`` each (between two, another
    thread may take the GIL)."""
    if depth > 0 and isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            key = k if isinstance(k, str) else json.dumps(k)  # as json.dumps writes 1, True, None
            yield f"{', ' if i else ''}{json.dumps(key)}: "
            yield from json_pieces(v, depth - 1)
        yield "}"
    elif depth > 0 and isinstance(value, list):
        yield "["
        for i, v in enumerate(value):
            if i:
                yield ", "
            yield from json_pieces(v, depth - 1)
        yield "]"
    else:
        yield json.dumps(value)


async def delete_report(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    route = _report_route(request)
    await server.collect_shadow(persist=False)
    await server.clear_shadow(route)
    return web.json_response({"cleared": route if route is not None else "all"})


class _ClientMistakes(logging.Filter):
    """aiohttp logs a request it cannot parse (a header with a DEL byte) as an ERROR with
    a traceback, and answers it 400: the client's mistake, not a fault to look into, and any
    local process could fill the log with them."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500)


_CLIENT_MISTAKES: Final = _ClientMistakes()


def make_admin_app(server: Server) -> web.Application:
    logging.getLogger("aiohttp.server").addFilter(_CLIENT_MISTAKES)  # a second add is a no-op
    app = web.Application(
        middlewares=[close_after_an_unread_body, errors_as_json, browser_guard, bearer_auth], client_max_size=MAX_BODY
    )
    app[SERVER_KEY] = server
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/api/v1/routes", list_routes)
    r.add_get("/api/v1/routes/{route}", get_route)
    r.add_put("/api/v1/routes/{route}/weights", put_weights)
    r.add_post("/api/v1/routes/{route}/promote", promote)
    r.add_post("/api/v1/routes/{route}/rollback", rollback)
    r.add_get("/api/v1/history", history)
    r.add_post("/api/v1/history/{version}/restore", restore)
    r.add_get("/api/v1/shadow/report", get_report)
    r.add_delete("/api/v1/shadow/report", delete_report)
    from .ui import add_ui_routes  # here: proxy.ui imports this module

    add_ui_routes(app)
    return app


def render_metrics(registry: Any) -> bytes:
    return generate_latest(registry)
