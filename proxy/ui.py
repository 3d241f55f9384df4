"""The report viewer, ``GET /ui/`` on the admin listener (SPEC §5): one server-rendered page.

It shows what the JSON API already serves — ``route_json`` for routes, backends and
weights, the recent history, and ``Reports.to_json`` for the shadow-diff report — as HTML
rendered from Jinja2 templates shipped in ``proxy/templates``, with autoescape on.

Safety: response bodies and values in samples come from upstreams and are attacker-shaped
text. Everything reaches the page through autoescape or through ``body_html``, which builds
its markup from escaped pieces only; the page has no script, and its Content-Security-Policy
(``default-src 'none'``, styles only from ``/ui/static/``) would refuse one anyway.

The view model (``page_context`` and the helpers above it) is pure: plain JSON-shaped dicts
in, dicts and ``Markup`` out, tested without a server. The handlers are the thin shell.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from .admin import SERVER_KEY, check_query, route_json
from .client import health_text
from .control import BadRequest, NotFound
from .diffing import parse_field_path

if TYPE_CHECKING:
    from .server import Server

HISTORY_SHOWN: Final = 20

# Every /ui response. No script may run: default-src 'none' leaves only what is named, and
# styles come from our own static file, never inline. frame-ancestors: not framable (clickjacking).
MAX_INDENT: Final = 24  # levels of indentation in a pretty-printed sample body
# Characters of samples (bodies, values, request lines) one page holds: the rest of its
# samples are a count and a link to their endpoint's page, which shows them all. Every body
# of 100 endpoints made pages of 15 to 60 MB that took seconds to render (and the data
# plane's CPU); past the bodies, the values and request lines of 12,000 samples still made
# a 30 MB page (QA, seventh round).
PAGE_BODY_CHARS: Final = 1 << 20
# Fields one endpoint lists on a page of several endpoints (real ones first); its own page
# lists them all.
OVERVIEW_FIELDS: Final = 10

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# name -> content type; the only files /ui/static/ serves.
STATIC_FILES: Final = {
    "ui.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

CLASS_HELP: Final = {
    "real": "differs live vs shadow clearly more often than live differs from itself",
    "noise": "differs about as often when live is replayed against itself",
    "none": "differed only between live and its own replay, never live vs shadow",
}


# ---- formatting (pure) -------------------------------------------------------------------------


def shape_text(f: Mapping[str, Any]) -> str:
    """A field's differences of shape (missing, extra, another type) against live's own, when
    it had any: what makes a field real whose value alone is noise."""
    n = f.get("shape_differing") or 0
    if not n:
        return ""
    return (
        f"missing, extra or another type: {n} / {f.get('compared', 0)},"
        f" live against itself {f.get('noise_shape_differing') or 0} / {f.get('noise_compared', 0)}"
    )


def fmt_number(value: float | int | None) -> str:
    """``90.0`` -> ``90``, ``12.5`` -> ``12.5``; weights and counts read without noise."""
    if value is None:
        return "—"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}"


def fmt_rate(rate: float | None) -> str:
    """A fraction as a percentage; a tiny non-zero rate is not shown as 0."""
    if rate is None:
        return "—"
    pct = rate * 100
    if 0 < pct < 0.1:
        return "<0.1 %"
    return f"{pct:.1f} %"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1000
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    return f"{ms:,.0f} ms"


def fmt_weights(weights: Mapping[str, Any]) -> str:
    if not weights:
        return "—"
    return " · ".join(f"{name} {fmt_number(w)}" for name, w in weights.items())


def fmt_iso(iso: str) -> str:
    """``2026-11-23T16:47:59.979Z`` -> ``2026-11-23 16:47:59 UTC``."""
    return iso[:19].replace("T", " ") + " UTC" if len(iso) >= 19 else iso


# ---- bodies with the differing value marked (pure) ---------------------------------------------

_LINE_PATH: Final = re.compile(r"body\.line\[([0-9]+)\]")


def _esc(text: str) -> str:
    return str(escape(text))


def _mark(html: str) -> str:
    return f"<mark>{html}</mark>"


def _json_leaf(value: object) -> str:
    return _esc(json.dumps(value, ensure_ascii=False))


def _json_html(value: object, target: Sequence[object] | None, level: int, compact: bool = False) -> str:
    """``value`` pretty-printed (indent 2) as escaped HTML; the node at ``target`` (the rest
    of the path while we are on it, else None) wrapped in ``<mark>``. ``compact``: on one
    line, for a body whose pretty form would be too large (``body_html``). An array of
    scalars is on one line either way: one number a line made a page of a 2 KB body 50 KB."""
    if target is not None and not target:
        return _mark(_json_html(value, None, level, compact))
    head = target[0] if target else None
    if compact or (isinstance(value, list) and not any(isinstance(v, dict | list) for v in value)):
        if isinstance(value, dict) and value:
            parts = []
            for k, v in value.items():
                sub = target[1:] if target and isinstance(head, str) and head == k else None
                parts.append(f"{_json_leaf(k)}: {_json_html(v, sub, level + 1, True)}")
            return "{" + ", ".join(parts) + "}"
        if isinstance(value, list) and value:
            parts = []
            for i, v in enumerate(value):
                sub = target[1:] if target and type(head) is int and head == i else None
                parts.append(_json_html(v, sub, level + 1, True))
            return "[" + ", ".join(parts) + "]"
        return _json_leaf(value)
    # Indentation stops growing at MAX_INDENT levels: a body nested hundreds deep made a
    # page of the square of its size (a 1.2 KB body, 700 KB of spaces).
    pad, end = "  " * min(level + 1, MAX_INDENT), "  " * min(level, MAX_INDENT)
    if isinstance(value, dict) and value:
        items = []
        for k, v in value.items():
            sub = target[1:] if target and isinstance(head, str) and head == k else None
            items.append(f"{pad}{_json_leaf(k)}: {_json_html(v, sub, level + 1)}")
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, list) and value:
        items = []
        for i, v in enumerate(value):
            sub = target[1:] if target and type(head) is int and head == i else None
            items.append(pad + _json_html(v, sub, level + 1))
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    return _json_leaf(value)


def _exact_segments(path: str) -> tuple[object, ...] | None:
    """The segments of an exact JSON path (keys and indexes only), else None."""
    try:
        segments = parse_field_path(path)
    except ValueError:
        return None
    if all(isinstance(s, str) or type(s) is int for s in segments):
        return segments
    return None


def _mark_unique(text: str, value: str | None) -> str:
    """``text`` (JSON cut at the sample limit) escaped, with ``value`` marked if it occurs
    exactly once as a JSON value (after ``:``, ``[`` or ``,``, before ``,``, ``]``, ``}``
    or the cut): a ``5`` inside ``98765`` is not the value (else nothing is marked)."""
    if not value:
        return _esc(text)
    found = [m.start() for m in re.finditer(re.escape(value), text)]
    found = [i for i in found if _json_value_at(text, i, i + len(value))]
    if len(found) != 1:
        return _esc(text)
    i = found[0]
    return _esc(text[:i]) + _mark(_esc(value)) + _esc(text[i + len(value) :])


def _json_value_at(text: str, start: int, end: int) -> bool:
    before = text[:start].rstrip()
    after = text[end:].lstrip()
    return before[-1:] in (":", "[", ",") and (not after or after[0] in ",]}…")


def body_html(body: str, path: str, value: str | None) -> Markup:
    """A sample body for a ``<pre>``: escaped, the differing part marked where it can be found.

    - JSON path (``$.items[3].price``) and a body that parses: pretty-printed, that node marked;
    - a body cut at the sample limit (so not parseable): the value marked if it occurs once;
    - ``body.line[N]``: line N (1-based) marked;
    - anything else (status, headers, whole-body differences): the body as it is.
    """
    if path.startswith("$"):
        segments = _exact_segments(path)
        if segments is not None:
            try:
                doc = json.loads(body)
                pretty = _json_html(doc, segments, 0)
                if len(pretty) > 4 * len(body) + 1024:  # deep nesting: its indentation dominates
                    pretty = _json_html(doc, segments, 0, compact=True)
                return Markup(pretty)  # built from escaped pieces only
            except (ValueError, RecursionError):
                pass
        return Markup(_mark_unique(body, value))
    if m := _LINE_PATH.fullmatch(path):
        # Lines as the diff numbers them: only "\n" ends one (not "\r", "\f", U+2028, which
        # str.splitlines() also breaks at: the wrong line was marked).
        lines = [line + "\n" for line in body.split("\n")]
        lines[-1] = lines[-1][:-1]
        n = int(m.group(1)) - 1
        if 0 <= n < len(lines):
            line = lines[n]
            stripped = line.rstrip("\r\n")
            marked = _mark(_esc(stripped)) + _esc(line[len(stripped) :])
            rest = "".join(_esc(x) for x in lines[n + 1 :])
            return Markup("".join(_esc(x) for x in lines[:n]) + marked + rest)
    return escape(body)


# ---- the view model (pure) ---------------------------------------------------------------------

_CLASS_RANK: Final = {"real": 0, "noise": 1, "none": 2}


class Budget:
    """What is left of a page's PAGE_BODY_CHARS."""

    def __init__(self, chars: int = PAGE_BODY_CHARS) -> None:
        self.left = chars


def sample_view(sample: Mapping[str, Any], budget: Budget | None = None) -> dict[str, Any]:
    path = str(sample.get("path", ""))
    live, shadow = sample.get("live"), sample.get("shadow")
    request = sample.get("request", "")
    bodies: dict[str, Markup | None] = {
        "live_body": body_html(str(sample.get("live_body", "")), path, live),
        "shadow_body": body_html(str(sample.get("shadow_body", "")), path, shadow),
    }
    if budget is not None:
        budget.left -= len(bodies["live_body"] or "") + len(bodies["shadow_body"] or "")
        budget.left -= len(str(request)) + len(str(live or "")) + len(str(shadow or "")) + len(path)
    return {
        "request": request,
        "path": path,
        "kind": sample.get("kind", ""),
        "live": live,
        "shadow": shadow,
        "live_status": sample.get("live_status"),
        "shadow_status": sample.get("shadow_status"),
        "status_differs": path == "status",
        **bodies,
    }


def endpoint_view(name: str, ep: Mapping[str, Any], budget: Budget | None = None, route: str = "") -> dict[str, Any]:
    """``budget``: a page of several endpoints (None: this endpoint's own page, everything)."""
    listed = [(key, f, f.get("classification", "real")) for key, f in ep.get("fields", {}).items()]
    # The report orders real first already; keep that whatever its order becomes.
    listed.sort(key=lambda kfc: _CLASS_RANK.get(kfc[2], 3))
    hidden = 0
    if budget is not None and len(listed) > OVERVIEW_FIELDS:
        hidden = len(listed) - OVERVIEW_FIELDS
        listed = listed[:OVERVIEW_FIELDS]
    fields = []
    for key, f, cls in listed:
        samples = list(f.get("samples", ()))
        withheld = len(samples) if budget is not None and budget.left <= 0 else 0
        fields.append(
            {
                "key": key,
                **f,
                "classification": cls,
                "help": CLASS_HELP.get(cls, ""),
                "shape": shape_text(f),
                "samples": [] if withheld else [sample_view(s, budget) for s in samples],
                "samples_withheld": withheld,
            }
        )
    latency = ep.get("latency", {})
    return {
        **ep,
        "name": name,
        "fields": fields,
        "fields_hidden": hidden,
        "samples_withheld": sum(f["samples_withheld"] for f in fields),
        "real_fields": sum(1 for f in fields if f["classification"] == "real"),
        "link": f"/ui/?route={quote(route, safe='')}&endpoint={quote(name, safe='')}",
        "latency": {side: latency.get(side, {}) for side in ("live", "shadow")},
    }


def report_route_view(
    entry: Mapping[str, Any], budget: Budget | None = None, only: str | None = None
) -> dict[str, Any]:
    """``only``: that endpoint alone (``?endpoint=``)."""
    items = [(name, ep) for name, ep in entry.get("endpoints", {}).items() if only is None or name == only]
    # Worst first: where real differences are most frequent is where to look, and where the
    # page's budget of sample bodies goes.
    items.sort(key=lambda kv: (-float(kv[1].get("real_diff_rate") or 0), -int(kv[1].get("compared") or 0), kv[0]))
    route = str(entry.get("route", ""))
    return {**entry, "endpoints": [endpoint_view(name, ep, budget, route) for name, ep in items]}


def check_text(check: object) -> str:
    """An active health check's last probes in a line (empty when the route has none)."""
    if not isinstance(check, Mapping):
        return ""
    age = check.get("last_probe_age")
    if age is None:
        return "active check: no probe yet"
    run = check.get("consecutive_ok") if check.get("healthy") else check.get("consecutive_fail")
    verdict = "passing" if check.get("healthy") else "failing"
    last = f"last probe {age:g} s ago"
    if check.get("last_error"):
        last += f": {check['last_error']}"
    elif check.get("last_status") is not None:
        last += f": {check['last_status']}"
    return f"active check {verdict} ({run} in a row, {last})"


def route_view(route: Mapping[str, Any]) -> dict[str, Any]:
    """``route_json`` with the parts the template reads in one fixed shape."""
    backends = []
    for b in route.get("backends", ()):
        upstreams = [
            {
                "url": u.get("url", ""),
                "healthy": bool(u.get("healthy", True)) and not u.get("ejected"),
                # what `splitproxy status` says (QA: the API's fields were dumped raw, a
                # whole JSON object for an active check)
                "state": health_text(u),
                "check": check_text(u.get("check")),
            }
            for u in b.get("upstreams", ())
        ]
        backends.append({**b, "upstreams": upstreams})
    overrides = []
    for o in route.get("overrides", ()):
        # route_json names the override by its kind: {"header": "x-canary", "value", "backend"}
        kind = next((k for k in o if k not in ("value", "backend")), "")
        overrides.append({"kind": kind, "name": o.get(kind, ""), "value": o.get("value"), "backend": o.get("backend")})
    sticky = route.get("sticky") or {}
    return {
        **route,
        "backends": backends,
        "overrides": overrides,
        "sticky": {"by": sticky.get("by") or "none", "name": sticky.get("name")},
    }


def history_view(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **entry,
        "when": fmt_iso(str(entry.get("time_iso", ""))),
        "before_text": fmt_weights(entry.get("before", {})),
        "after_text": fmt_weights(entry.get("after", {})),
    }


def page_context(
    *,
    version: int,
    route_names: Iterable[str],
    selected: str | None,
    routes: Iterable[Mapping[str, Any]],
    history: Iterable[Mapping[str, Any]],
    report: Mapping[str, Any],
    generated_iso: str,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """Everything ``index.html`` shows, from the API's JSON shapes. ``endpoint``: that one of
    the selected route's alone."""
    # One endpoint's own page shows all of its samples (at most 16 fields x 3 of them, each
    # body cut at 2048 characters): its link is where the budget sends them.
    budget = Budget() if endpoint is None else None
    return {
        "version": version,
        "route_names": list(route_names),
        "selected": selected,
        "endpoint": endpoint,
        "routes": [route_view(r) for r in routes],
        "history": [history_view(e) for e in history],
        "shadow": [report_route_view(r, budget, endpoint) for r in report.get("routes", ())],
        "generated": generated_iso,
        "page_body_kib": PAGE_BODY_CHARS >> 10,
    }


# ---- templates ---------------------------------------------------------------------------------


# Unicode's bidirectional controls and marks. Text from an upstream that holds one would
# reorder what the page shows around it (an unterminated U+202E turns the rest of its line
# around: "Trojan Source"), so the page shows them as escapes, as `splitproxy report` does.
_BIDI: Final = {c: f"\\u{c:04x}" for c in (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}


# Control characters but tab and line ends (ESC, BEL from a body or a history reason), as
# `splitproxy report` shows them: \x1b.
_CONTROLS: Final = {c: f"\\x{c:02x}" for c in (*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0))}
# Characters that take no room (zero-width spaces and joiners, the soft hyphen, the BOM):
# "$.zw\u200bx" looked like "$.zwx"; and lone surrogates (a JSON string's "\ud800" escape,
# which Python's parser keeps), which UTF-8 cannot encode: the page failed with a 500.
_INVISIBLE: Final = {
    **_BIDI,
    **_CONTROLS,
    **{c: f"\\u{c:04x}" for c in (0x00AD, 0x180E, *range(0x200B, 0x200E), *range(0x2060, 0x2065), 0xFEFF)},
    **{c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)},
}
_HAS_INVISIBLE: Final = re.compile(
    "[" + re.escape("".join(chr(c) for c in _INVISIBLE if not 0xD800 <= c < 0xE000)) + "\ud800-\udfff]|\r(?!\n)"
)


def _shown(m: re.Match[str]) -> str:
    ch = m.group()
    return "\\r" if ch == "\r" else _INVISIBLE[ord(ch)]


def visible_bidi(value: object) -> object:
    """Every ``{{ }}`` of the templates goes through here (``finalize``): bidirectional
    controls, control characters, characters that take no room and lone surrogates in text,
    escaped or not, become ``\\u202e``- and ``\\x1b``-style escapes; a CR that does not end
    a line becomes ``\\r`` (a browser breaks the line of a ``<pre>`` there; only LF ends one)."""
    if isinstance(value, str) and _HAS_INVISIBLE.search(value) is not None:
        shown = _HAS_INVISIBLE.sub(_shown, value)
        return Markup(shown) if isinstance(value, Markup) else shown  # markup stays markup
    return value


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("proxy", "templates"),
        autoescape=True,  # every value is text unless it is Markup built by body_html
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=visible_bidi,
    )
    env.filters.update(num=fmt_number, rate=fmt_rate, seconds=fmt_seconds, weights=fmt_weights)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def _render_index(context: dict[str, Any]) -> str:
    return render("index.html", **page_context(**context))


@cache
def static_file(name: str) -> bytes:
    return (resources.files("proxy") / "static" / name).read_bytes()


# ---- handlers ----------------------------------------------------------------------------------


def html_response(text: str, status: int = 200) -> web.Response:
    # backslashreplace: what visible_bidi did not see (none is known) still makes a page
    body = text.encode("utf-8", "backslashreplace")
    return web.Response(body=body, status=status, content_type="text/html", charset="utf-8")  # + _ui_headers


async def ui_index(request: web.Request) -> web.Response:
    server: Server = request.app[SERVER_KEY]
    try:
        check_query(request, ("route", "endpoint"))  # ?route=a&route=b showed a, as if b were not asked
        if "endpoint" in request.query and "route" not in request.query:
            raise BadRequest("?endpoint= names an endpoint of a route: give ?route= too", "endpoint")
    except BadRequest as exc:  # the page's own 400, as its 404 (the API's is JSON)
        text = await asyncio.to_thread(render, "bad_request.html", why=str(exc))
        return html_response(text, status=400)
    selected = request.query.get("route")
    endpoint = request.query.get("endpoint")
    if selected is not None and not server.reports.has(selected):  # a removed route's report too
        try:
            server.controller.route(selected)
        except NotFound:
            text = await asyncio.to_thread(render, "not_found.html", what=f"route {selected!r}")
            return html_response(text, status=404)
    await server.collect_shadow(persist=False)  # include what was found up to now
    config = server.config
    shown = [r for r in config.routes if selected is None or r.name == selected]
    entries = await server.controller.history(selected, limit=HISTORY_SHOWN)
    report = server.reports.to_json(config, selected)  # here: it prunes the live sums
    context = {
        "version": server.controller.version,
        "route_names": [r.name for r in config.routes],
        "selected": selected,
        "routes": [route_json(server, r) for r in shown],
        "history": [e.to_json() for e in entries],
        "report": report,
        "generated_iso": fmt_iso(datetime.fromtimestamp(report["generated_at"], UTC).isoformat()),
        "endpoint": endpoint,
    }
    # Laying out and rendering a large report (every sample body is re-printed) takes a
    # while: off the event loop, which the admin API may share with the data plane.
    text = await asyncio.to_thread(_render_index, context)
    return html_response(text)


async def ui_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        text = await asyncio.to_thread(render, "not_found.html", what=f"file {name!r}")
        return html_response(text, status=404)
    return web.Response(body=static_file(name), headers={"Content-Type": content_type})  # + _ui_headers


async def ui_redirect(request: web.Request) -> web.Response:
    query = request.rel_url.raw_query_string  # as sent: decoded, a %23 became a fragment
    raise web.HTTPPermanentRedirect("/ui/" + (f"?{query}" if query else ""))  # ?route= kept, as nginx keeps it


async def ui_not_found(request: web.Request) -> web.Response:
    """Any other path under /ui/ (``/ui/static/``, ``/ui/x``): the page's 404, not the API's JSON."""
    text = await asyncio.to_thread(render, "not_found.html", what=f"page {request.path!r}")
    return html_response(text, status=404)


async def _ui_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under /ui carries the page's security headers, the redirect and the
    errors (401, 405) too: a 308 without ``Cache-Control`` may be cached."""
    if request.path == "/ui" or request.path.startswith("/ui/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


def add_ui_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_ui_headers)
    app.router.add_get("/ui", ui_redirect)
    app.router.add_get("/ui/", ui_index)
    app.router.add_get("/ui/static/{name}", ui_static)
    app.router.add_get("/ui/{tail:.+}", ui_not_found)  # after the others: they match first
