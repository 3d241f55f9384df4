"""Shadow traffic: mirror a sample of live requests, capture both answers, hand them to the diff.

The live request never waits for, and is never changed by, anything here:

- the forwarder only *copies* into a ``Mirror``: the request body while it streams (up to
  ``shadow.max_body``; a larger request is not mirrored) and the live response while it
  streams to the client (up to the same cap; a larger one is compared by status and
  headers only);
- mirrored requests go out on their own connections from the same pools, through the same
  ``UpstreamConnection`` parser, with a ``ShadowLeg`` in place of a client: a slow, dead,
  resetting or garbage-answering shadow upstream ends only its leg;
- a ``Mirror`` is compared once the live response *and* its legs are done, in a callback of
  its own after the live response is already written.

A leg is the shadow request (to ``shadow.backend``, with ``X-Shadow-Request: 1`` and the live
``X-Request-Id``) or, for ``shadow.noise.percent`` of safe requests, a replay to the live
request's own backend (another instance of it when it has several) to learn which fields
differ between two answers of the same version: noise.

Mirrors in flight are bounded per route by ``max_in_flight``: when full, the mirror is
dropped and counted (``dropped_full``), never queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from .diffing import Captured, EndpointCap, RouteStats, compare, endpoint_template, merge
from .errors import UpstreamError, UpstreamReset, UpstreamTimeout
from .headers import with_host

if TYPE_CHECKING:
    from .config import ShadowDiff
    from .forwarder import Exchange
    from .routing import RoutePlan
    from .runtime import Runtime
    from .upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("splitproxy")

ENDPOINT_CACHE = 4096  # remembered (route, method, url) -> endpoint; cleared when full
ENDPOINT_CACHE_URL = 2048  # longest url remembered there

# Back-off of a failing shadow instance: one that refused a connection (at once), or broke
# FAILURES_IN_A_ROW answers in a row (a reset mid-body, garbage): 100 ms, doubling up to
# 10 s while it keeps failing. Its next whole answer ends it. (outlier_detection's default
# streak, for live instances, is also 5.)
BACKOFF_BASE = 0.1
BACKOFF_MAX = 10.0
FAILURES_IN_A_ROW = 5

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
SHADOW_HEADER = b"X-Shadow-Request: 1\r\n"

# Outcomes, as the ``outcome`` label of splitproxy_shadow_requests_total.
COMPARED: Final = "compared"
DROPPED_FULL: Final = "dropped_full"
SKIPPED_BODY: Final = "skipped_body"
SKIPPED_METHOD: Final = "skipped_method"
TIMEOUT: Final = "timeout"
ERROR: Final = "error"


# Joined header block -> its (name, value) pairs. Heads repeat from response to response
# (the same Server, Content-Type...; Date changes once a second), so most are parsed once and
# their strings are then the same objects, hashes already computed for the diff's dicts.
# Bounded by clearing: at most _HEADS_MAX heads of at most _HEAD_MAX bytes (~4 MiB); a head
# with a unique header (X-Request-Id) is parsed each time, as before.
_HEADS: dict[bytes, tuple[tuple[str, str], ...]] = {}
_HEADS_MAX: Final = 4096
_HEAD_MAX: Final = 1024


def _parse_text(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for line in text.split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            value = value.strip()
            if not value.isascii():
                value = _utf8_or_latin1(value)
            out.append((name.strip().lower(), value))
    return tuple(out)


def _utf8_or_latin1(value: str) -> str:
    """A value decoded as Latin-1 read as the UTF-8 it most likely is (``X-Name: Zoë`` was
    shown as ``ZoÃ«``); kept as Latin-1 when its bytes are not UTF-8. Value by value, so one
    header that is not UTF-8 does not change how the others read (a false difference)."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return value


def parse_lines(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    """Header parts or lines (anything that joins to ``Name: value\\r\\n`` lines, as
    ``UpstreamConnection`` hands them on) back into (lower-case name, value) pairs."""
    head = b"".join(lines)
    pairs = _HEADS.get(head)
    if pairs is None:
        # One decode for the whole head, then str operations: several times cheaper than
        # decoding every name and value on its own.
        pairs = _parse_text(head.decode("latin-1"))
        if len(head) <= _HEAD_MAX:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[head] = pairs
    return pairs


def _announced(value: bytes) -> int:
    """The value of a Content-Length the parser accepted; 0 if it does not read as one."""
    try:
        return int(value)
    except ValueError:
        return 0


class Capture:
    """A response as it streams, kept up to ``cap`` bytes of body.

    ``t_start`` .. ``t_end``: from the moment the whole request was at hand (the mirror's
    launch, for the live answer and each leg alike) to the response's head. Not to its last
    byte: the live answer's end waits for the client (a slow reader holds the upstream back),
    which a leg's never does, so live and shadow would not compare."""

    __slots__ = ("body", "cap", "lines", "size", "status", "t_end", "t_start", "truncated")

    def __init__(self, cap: int, t_start: float) -> None:
        self.cap = cap
        self.status = 0
        self.lines: list[bytes] = []
        self.body: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.t_start = t_start
        self.t_end = 0.0

    def head(self, status: int, lines: list[bytes], extra: list[bytes]) -> None:
        self.status = status
        self.lines = [*lines, *extra]

    def take(self, data: bytes) -> bool:
        """Keep ``data`` if under the cap; False once the cap is passed."""
        self.size += len(data)
        if self.size > self.cap:
            self.truncated = True
            self.body.clear()
            return False
        self.body.append(data)
        return True

    def captured(self) -> Captured:
        return Captured(self.status, parse_lines(self.lines), b"".join(self.body), self.truncated)

    def seconds(self) -> float:
        # 0 for a live answer that came before its request's body was whole (an early 401).
        return max(0.0, self.t_end - self.t_start)


class ShadowLeg:
    """One mirrored request: stands in for the client of an ``UpstreamConnection``."""

    __slots__ = (
        "capture",
        "conn",
        "deadline",
        "done",
        "head",
        "last_io",
        "method",
        "mirror",
        "outcome",
        "pool",
        "resp_started",
        "role",
        "rt",
        "transport",
        "upstream_full",
    )

    def __init__(self, mirror: Mirror, role: str, pool: UpstreamPool, head: bytes) -> None:
        self.mirror = mirror
        self.role = role  # "shadow" or "replay"
        self.rt = mirror.rt
        self.pool = pool
        self.head = head
        self.method = mirror.method
        self.capture = Capture(mirror.cap, self.rt.now())
        self.conn: UpstreamConnection | None = None
        self.deadline = 0.0
        self.done = False
        self.outcome = ""
        self.resp_started = False
        self.last_io = 0.0
        self.upstream_full = False
        self.transport = None

    def start(self) -> None:
        self.deadline = self.rt.now() + self.mirror.timeout
        conn = self.pool.take_idle()
        if conn is not None:
            self._attach(conn)
        else:
            self.rt.spawn(self._connect(), "shadow-connect")

    async def _connect(self) -> None:
        try:
            conn = await self.pool.connect(min(self.rt.connect_timeout, self.mirror.timeout))
        except UpstreamError as err:
            if not err.local:  # the proxy out of sockets: no reason to back off the shadow
                self.mirror.manager.failed(self.pool, refused=True)
            self._end(TIMEOUT if isinstance(err, UpstreamTimeout) else ERROR)
            return
        if self.done:
            conn.release(reusable=True)
        else:
            self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.bind(self, self)  # a leg is its own client and exchange
        conn.transport.write(self.head + self.mirror.request_body())

    def check_deadline(self, now: float) -> None:
        if not self.done and now >= self.deadline:
            self._abort_conn()
            self._end(TIMEOUT)

    # -- called by UpstreamConnection, like ClientConnection -------------------------------

    def response_head(
        self, ex: object, conn: UpstreamConnection, status: int, lines: list[bytes], hdict: dict[bytes, bytes]
    ) -> None:
        if status == 101:  # a mirror asks for no upgrade: a broken answer
            self.upstream_failed(ex, UpstreamReset("upstream switched protocols unasked"), retryable=False)
            return
        self.resp_started = True
        self.capture.t_end = self.rt.now()
        cl = hdict.get(b"content-length")
        extra = [b"content-length: " + cl + b"\r\n"] if cl is not None else []
        self.capture.head(status, lines, extra)
        if cl is not None and _announced(cl) > self.capture.cap and self.method != b"HEAD" and status not in (204, 304):
            # A body announced over the cap is not compared: none of it is read (a 50 MB
            # answer costs its head). The leg counts as compared (status and headers).
            self.capture.truncated = True
            self._answered()

    def response_body(self, ex: object, body: bytes) -> None:
        if not self.capture.take(body):
            # Over the cap (a chunked or close-delimited body): nothing more is needed
            # from this answer. The leg still counts as compared.
            self._answered()

    def _answered(self) -> None:
        self._abort_conn()
        self.mirror.manager.answered(self.pool)
        self._end(COMPARED)

    def response_complete(self, ex: object, conn: UpstreamConnection, reusable: bool) -> None:
        self.conn = None
        conn.release(reusable=reusable)
        self.mirror.manager.answered(self.pool)
        self._end(COMPARED)

    def upstream_failed(self, ex: object, err: UpstreamError, *, retryable: bool, sent: bool = True) -> None:
        self._abort_conn()
        timed_out = isinstance(err, UpstreamTimeout)
        if not timed_out:
            self.mirror.manager.failed(self.pool)
        self._end(TIMEOUT if timed_out else ERROR)

    def flush(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def update_reading(self) -> None:
        pass

    # -- endings --------------------------------------------------------------------------

    def _abort_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def _end(self, outcome: str) -> None:
        if self.done:
            return
        self.done = True
        self.outcome = outcome
        self.mirror.leg_done()


class Mirror:
    """One sampled live request and everything compared about it."""

    __slots__ = (
        "body",
        "body_size",
        "cap",
        "ex",
        "launched",
        "legs",
        "live",
        "live_done",
        "manager",
        "method",
        "plan",
        "rt",
        "timeout",
        "url",
        "wants_body",
    )

    def __init__(self, manager: ShadowManager, ex: Exchange, plan: RoutePlan) -> None:
        shadow = plan.route.shadow
        assert shadow is not None
        self.manager = manager
        self.rt = manager.rt
        self.ex: Exchange | None = ex
        self.plan = plan
        self.method = ex.method
        self.url = ex.url
        self.cap = shadow.max_body
        self.timeout = shadow.timeout
        self.body: list[bytes] = []
        self.body_size = 0
        self.wants_body = ex.req_chunked or bool(ex.content_length)
        self.live = Capture(self.cap, 0.0)  # t_start: at launch
        self.live_done = False
        self.launched = False
        self.legs: list[ShadowLeg] = []

    # -- fed by the forwarder -------------------------------------------------------------

    def request_body(self) -> bytes:
        return b"".join(self.body)

    def take_request_body(self, data: bytes) -> None:
        self.body_size += len(data)
        if self.body_size > self.cap:
            self.manager.cancel(self, SKIPPED_BODY)
            return
        self.body.append(data)

    def live_head(self, status: int, lines: list[bytes], hdict: dict[bytes, bytes]) -> None:
        cl = hdict.get(b"content-length")
        self.live.t_end = self.rt.now()
        self.live.head(status, lines, [b"content-length: " + cl + b"\r\n"] if cl is not None else [])

    def live_body(self, data: bytes) -> None:
        if not self.live.truncated:
            self.live.take(data)

    def live_finished(self, ok: bool) -> None:
        """The live exchange ended; ``ok``: a whole response reached the client."""
        self.ex = None
        self.live_done = True
        if not ok:
            self.manager.cancel(self, ERROR)
        elif not self.launched:
            # A body request whose body never completed is not mirrored.
            self.manager.cancel(self, SKIPPED_BODY)
        else:
            self.leg_done()

    def leg_done(self) -> None:
        if self.live_done and all(leg.done for leg in self.legs):
            self.manager.completed(self)


Observer = Callable[[Mirror], None]


def _unlink(mirror: Mirror) -> None:
    """Drop a finished mirror's legs. A leg and its mirror refer to each other; unlinked,
    both are freed at once by reference counting. Left as a cycle, every mirror waited for
    the cycle collector, whose young generation ``serve()`` lets grow to 50,000 objects: at
    100 % shadowing, a pass over them every ~2 s took ~40 ms, the p99 of every request."""
    mirror.legs = []


class ShadowManager:
    """Decides which requests are mirrored, launches their legs, and hands finished mirrors
    to ``on_complete`` (the comparison) — with per-route bounds and counted outcomes."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.in_flight: dict[str, set[Mirror]] = {}
        self.on_complete: Observer | None = None
        self.listeners: list[Callable[[str, str], None]] = []  # (route, outcome), for tests and logs
        # Failing shadow instances: pool -> (until, back-off seconds); legs failed in a row.
        self.backed_off: dict[UpstreamPool, tuple[float, float]] = {}
        self.failures: dict[UpstreamPool, int] = {}

    def failed(self, pool: UpstreamPool, *, refused: bool = False) -> None:
        """A leg to ``pool`` failed: it could not connect (``refused``; backed off at once),
        or its answer broke (a reset, garbage; backed off at FAILURES_IN_A_ROW in a row).
        The back-off doubles, up to a cap, each time it is taken up again."""
        n = self.failures[pool] = self.failures.get(pool, 0) + 1
        if not refused and n < FAILURES_IN_A_ROW:
            return
        now = self.rt.now()
        until, backoff = self.backed_off.get(pool, (0.0, BACKOFF_BASE / 2))
        if now < until:
            return  # backed off already: these are legs launched before it began
        backoff = min(backoff * 2, BACKOFF_MAX)
        self.backed_off[pool] = (now + backoff, backoff)

    def answered(self, pool: UpstreamPool) -> None:
        """A leg to ``pool`` got its answer (as much of it as is compared): not failing."""
        if self.failures:
            self.failures.pop(pool, None)
            self.backed_off.pop(pool, None)

    def _all_backed_off(self, plan: RoutePlan, backend_name: str) -> bool:
        now = self.rt.now()
        for b in plan.backends:
            if b.name == backend_name:
                for pool in self.rt.balancer.backends[id(b)].pools:
                    until = self.backed_off.get(pool)
                    if until is None or now >= until[0]:
                        return False  # this one may be tried (again)
                return True
        return False

    def _checked_down(self, plan: RoutePlan, backend_name: str) -> bool:
        down = self.rt.balancer.down
        return any(b.name == backend_name and id(b) in down for b in plan.backends)

    def begin(self, ex: Exchange, plan: RoutePlan) -> Mirror | None:
        shadow = plan.route.shadow
        assert shadow is not None
        route = plan.name
        if ex.method.decode("latin-1") not in shadow.methods:
            self._count(route, SKIPPED_METHOD)
            return None
        if shadow.percent < 100 and self.rt.random() * 100 >= shadow.percent:
            return None
        if ex.backend is not None and ex.backend.name == shadow.backend:
            # Served live by the shadow's own version (its weight, an override): comparing
            # a version with itself would only dilute the report.
            return None
        if ex.upgrade or (ex.content_length is not None and ex.content_length > shadow.max_body):
            self._count(route, SKIPPED_BODY)
            return None
        if self.rt.balancer.down and self._checked_down(plan, shadow.backend):
            # No instance of the shadow passes its health checks (the balancer has it down, as
            # it would take live traffic away from it): not dialled; mirrors end as errors at once.
            self._count(route, ERROR)
            return None
        if self.backed_off and self._all_backed_off(plan, shadow.backend):
            # A failing shadow is not dialled for every request: while every instance of
            # it is backed off, mirrors end as errors at once.
            self._count(route, ERROR)
            return None
        flying = self.in_flight.setdefault(route, set())
        if len(flying) >= shadow.max_in_flight:
            self._count(route, DROPPED_FULL)
            return None
        mirror = Mirror(self, ex, plan)
        flying.add(mirror)
        return mirror

    def launch(self, mirror: Mirror) -> None:
        """Send the legs: at once for a request without body, else once the body is whole."""
        ex = mirror.ex
        if mirror.launched or ex is None:
            return
        mirror.launched = True
        mirror.live.t_start = self.rt.now()  # the legs' Captures start now too
        plan = mirror.plan
        shadow = plan.route.shadow
        assert shadow is not None
        head = self._head(ex, mirror)
        target = plan.route.backend(shadow.backend)
        backend_plan = next(b for b in plan.backends if b.name == target.name)
        pool = self.rt.next_pool(plan.name, backend_plan, mirror=True)
        if pool is None:  # a reload took the shadow backend away while the body was coming
            self.cancel(mirror, ERROR)
            return
        # A request that came without Host (HTTP/1.0) names each leg's own upstream, as the
        # live request does.
        legs = [ShadowLeg(mirror, "shadow", pool, with_host(head, ex.host_filled, pool.hostport))]
        if ex.method in SAFE_METHODS and shadow.noise.percent > 0 and self.rt.random() * 100 < shadow.noise.percent:
            replay = self._replay_pool(ex)
            legs.append(ShadowLeg(mirror, "replay", replay, with_host(head, ex.host_filled, replay.hostport)))
        mirror.legs = legs
        for leg in legs:
            leg.start()

    def _head(self, ex: Exchange, mirror: Mirror) -> bytes:
        head = ex.head
        if ex.req_chunked:
            # The mirror carries the whole (capped) body with a length, in place of the
            # framing the forwarder put after every header of the client's
            # (headers.request_head): the last such line, not a client's header that ends
            # alike (X-Original-Transfer-Encoding: chunked), which left the chunked framing
            # in place over a de-chunked body: request smuggling.
            before, _, after = head.rpartition(b"Transfer-Encoding: chunked\r\n")
            head = before + b"Content-Length: %d\r\n" % mirror.body_size + after
        return head[:-2] + SHADOW_HEADER + b"\r\n"

    def _replay_pool(self, ex: Exchange) -> UpstreamPool:
        """Another instance of the live backend when there is one (noise between instances
        of one version is noise too), else the same."""
        assert ex.backend is not None
        assert ex.pool is not None
        route = ex.plan.name if ex.plan is not None else ""
        for _ in range(len(ex.backend.upstreams)):
            pool = self.rt.next_pool(route, ex.backend, mirror=True)
            if pool is None:
                break
            if pool is not ex.pool:
                return pool
        return ex.pool

    def cancel(self, mirror: Mirror, outcome: str) -> None:
        flying = self.in_flight.get(mirror.plan.name)
        if flying is None or mirror not in flying:
            return
        flying.discard(mirror)
        ex = mirror.ex
        if ex is not None:
            ex.mirror = None
        mirror.ex = None
        for leg in mirror.legs:
            if not leg.done:
                leg._abort_conn()
                leg.done = True
        _unlink(mirror)
        self._count(mirror.plan.name, outcome)

    def completed(self, mirror: Mirror) -> None:
        flying = self.in_flight.get(mirror.plan.name)
        if flying is None or mirror not in flying:
            return
        flying.discard(mirror)
        shadow_leg = mirror.legs[0]
        if shadow_leg.outcome != COMPARED:
            _unlink(mirror)
            self._count(mirror.plan.name, shadow_leg.outcome)
            return
        route = mirror.plan.name
        self._count(route, COMPARED)
        counts = self.rt.counts
        counts.shadow_duration(route, "live", mirror.live.seconds())
        counts.shadow_duration(route, "shadow", shadow_leg.capture.seconds())
        if self.on_complete is not None:
            # Compared in a callback of its own: never inside the live request's callbacks.
            self.rt.loop.call_soon(self._compare, mirror)
        else:
            _unlink(mirror)

    def _compare(self, mirror: Mirror) -> None:
        try:
            if self.on_complete is not None:
                self.on_complete(mirror)
        finally:
            _unlink(mirror)

    def tick(self, now: float) -> None:
        for flying in self.in_flight.values():
            for mirror in list(flying):
                for leg in mirror.legs:
                    leg.check_deadline(now)

    def _count(self, route: str, outcome: str) -> None:
        self.rt.counts.count("splitproxy_shadow_requests", (route, outcome))
        if log.isEnabledFor(logging.DEBUG):  # `-v`
            log.debug("shadow: route=%s mirror %s", route, outcome)
        for listener in self.listeners:
            listener(route, outcome)


class DiffRecorder:
    """Compares finished mirrors and keeps the results per route (the data-plane side).

    ``batch`` holds what was found since the last ``drain``; ``seen`` everything before it
    in this process, so that a request is classified (real or noise, for
    ``splitproxy_shadow_diffs_total``) with the noise learnt so far. The supervisor drains
    the batches of every process, sums them, stores them and serves the report.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.batch: dict[str, RouteStats] = {}
        self.seen: dict[str, RouteStats] = {}
        self.caps: dict[str, EndpointCap] = {}
        # (route, method, url) -> (endpoint, request line, the key under which the JSON walk
        # keeps the endpoint's last live answer to build the next ones on): the same URLs come
        # again and again.
        self._endpoints: dict[tuple[str, bytes, bytes], tuple[str, str, str]] = {}
        # route -> (its diff config; ignore_headers, redact_headers, redact_query as sets),
        # rebuilt when a reload swaps it.
        self._options: dict[str, tuple[ShadowDiff, frozenset[str], frozenset[str], frozenset[str]]] = {}

    def __call__(self, mirror: Mirror) -> None:
        plan = mirror.plan
        shadow = plan.route.shadow
        if shadow is None:  # the route lost its shadow in a reload meanwhile
            return
        route = plan.name
        options = self._options.get(route)
        if options is None or options[0] is not shadow.diff:  # first time, or a reload
            if options is not None and options[0].endpoints != shadow.diff.endpoints:
                self._endpoints.clear()  # URLs already seen are grouped by the new templates
            d = shadow.diff
            options = self._options[route] = (
                d,
                frozenset(d.ignore_headers),
                frozenset(d.redact_headers),
                frozenset(d.redact_query),
            )
        diff_config, ignore_headers, redact_headers, redact_query = options
        known = self._endpoints.get((route, mirror.method, mirror.url))
        if known is None:
            known = self._endpoint(route, mirror.method, mirror.url, shadow.diff.endpoints)
        endpoint, request, reuse = known
        ignore_fields = diff_config.ignore_fields
        live = mirror.live.captured()
        batch = self.batch.get(route)
        if batch is None:
            batch = self.batch[route] = RouteStats()
        for leg in mirror.legs[1:]:
            if leg.role == "replay" and leg.outcome == COMPARED:
                # Two answers of the same version: what differs here is noise.
                replay = compare(
                    live,
                    leg.capture.captured(),
                    ignore_headers=ignore_headers,
                    ignore_fields=ignore_fields,
                    reuse=reuse,
                )
                batch.record_noise(endpoint, replay, diff_config.redact_fields)
        leg = mirror.legs[0]
        shadow_answer = leg.capture.captured()
        kind = batch.record(
            endpoint,
            compare(live, shadow_answer, ignore_headers=ignore_headers, ignore_fields=ignore_fields, reuse=reuse),
            live=live,
            shadow=shadow_answer,
            request=request,
            live_seconds=mirror.live.seconds(),
            shadow_seconds=leg.capture.seconds(),
            point=self.rt.random(),
            noise=shadow.noise,
            redact_fields=diff_config.redact_fields,
            redact_headers=redact_headers,
            redact_query=redact_query,
            prior=self.seen.get(route),
        )
        if kind != "none":
            self.rt.counts.count("splitproxy_shadow_diffs", (route, endpoint, kind))

    def _endpoint(self, route: str, bmethod: bytes, burl: bytes, templates: tuple[str, ...]) -> tuple[str, str, str]:
        method, url = bmethod.decode("latin-1"), burl.decode("latin-1")
        cap = self.caps.get(route)
        if cap is None:
            cap = self.caps[route] = EndpointCap()
        endpoint = cap.admit(endpoint_template(method, url, templates))
        got = (endpoint, f"{method} {url}", f"{route} {endpoint}")
        if len(burl) <= ENDPOINT_CACHE_URL:  # a long target is not remembered (4,096 of 60 KB: 457 MiB)
            if len(self._endpoints) >= ENDPOINT_CACHE:
                self._endpoints.clear()
            self._endpoints[(route, bmethod, burl)] = got
        return got

    def drain(self) -> dict[str, dict[str, object]]:
        """The batches as plain data (for the supervisor), folded into ``seen``."""
        out = {}
        for route, batch in self.batch.items():
            out[route] = batch.to_dict()
            prior = self.seen.get(route)
            self.seen[route] = batch if prior is None else merge(prior, batch)
        self.batch = {}
        return out

    def admit(self, known: Mapping[str, list[str]]) -> None:
        """Admit, per route, endpoints the stored report already tracks (most compared
        first), before any new one: the cap then holds across restarts, where it admitted
        another 100 endpoints (rows of the report, labels of the metrics) each time."""
        for route, names in known.items():
            cap = self.caps.get(route)
            if cap is None:
                cap = self.caps[route] = EndpointCap()
            for name in names:
                cap.admit(name)

    def clear(self, route: str | None) -> None:
        """Forget what was found (the report's DELETE). The endpoints admitted stay admitted:
        they are labels of ``splitproxy_shadow_diffs_total`` too, and a cap that started over
        with every clear would let a process's label set grow by one cap's worth each time."""
        self._endpoints.clear()
        self._options.clear()
        for table in (self.batch, self.seen):
            if route is None:
                table.clear()
            else:
                table.pop(route, None)
