"""The data plane's shared, mutable references — the only state requests read.

``Runtime.table`` is one immutable ``routing.Table``; a reload or an admin change builds
a new one and swaps this single reference between two callbacks, so every request sees
one whole config: requests already routed keep the plan they hold, the next request
gets the new one. Pools outlive tables: an upstream kept across a swap keeps its warm
connections.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import headers as h
from . import tasks
from .accesslog import AccessLog
from .accesslog import where as log_where
from .balancer import Balancer
from .config import Config
from .metrics import Counts
from .routing import BackendPlan, Table
from .shadow import DiffRecorder, ShadowManager
from .upstream import UpstreamPool

if TYPE_CHECKING:
    from .errors import UpstreamError
    from .forwarder import ClientConnection, Exchange

log = logging.getLogger("splitproxy")

MAX_HOSTS_SEEN = 4096
MAX_ERRORS_LOGGED = 1024  # upstream error lines' keys remembered for their once a second
MAX_HOST_REMEMBERED = 260


class Runtime:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        rng: random.Random | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.loop = loop
        # Durations and deadlines: time.monotonic, not loop.time — uvloop's clock has
        # millisecond resolution, too coarse for a proxy's latency histograms.
        self.now = time.monotonic
        self.clock = self.now()  # coarse clock for idle checks, advanced by tick()
        # The Date of the proxy's own answers and of upstream answers without one, made
        # again by tick() (not per request): the value and the whole header line.
        self.date = b""
        self.date_line = b""
        self._date_second = -1
        self._date_now()
        self._local_logged = -1e9  # when the proxy's own shortage of sockets was last logged
        # (route, backend, upstream, reason) -> (when last logged, errors not logged since)
        self._errors_logged: dict[tuple[str, str, str, str], tuple[float, int]] = {}
        self.random = (rng or random.Random()).random
        self.access_log = access_log or AccessLog(config.access_log)
        self.counts = Counts()
        self._log_where: dict[tuple[str, str, str], bytes] = {}
        self.shadow = ShadowManager(self)
        self.diffs = DiffRecorder(self)
        self.shadow.on_complete = self.diffs
        self.pools: dict[tuple[str, int], UpstreamPool] = {}
        self.connections: set[ClientConnection] = set()
        # Request ids (made in forwarder._start): a random per-process prefix and a
        # counter, unique without a syscall per request.
        self.rid_prefix = os.urandom(6).hex().encode() + b"-"
        # Host values already found valid (headers.valid_host), so that each is checked once.
        self.hosts_seen: set[bytes] = set()
        self.rid_counter = itertools.count(1)
        self.balancer = Balancer(self.now, self.counts.count)
        self.install(config)

    # -- config ---------------------------------------------------------------------------

    def install(self, config: Config) -> None:
        """Swap in a complete, validated config (and the table built from it)."""
        table = Table(config)
        # The balancer's cycles before the table, so a request never pairs a new table
        # with old cycles.
        self.balancer.install(table, self._pool)
        self.config = config
        self.max_body = config.limits.max_request_body
        self.connect_timeout = config.timeouts.connect
        self.response_timeout = config.timeouts.response
        self.idle_timeout = config.timeouts.idle
        self.table = table
        self._close_unused_pools()
        if log.isEnabledFor(logging.DEBUG):  # `-v`
            log.debug(
                "data plane: config installed: %s",
                "; ".join(
                    f"{r.name} " + ", ".join(f"{b.name}={b.weight:g}" for b in r.backends) for r in config.routes
                ),
            )

    def _pool(self, host: str, port: int) -> UpstreamPool:
        pool = self.pools.get((host, port))
        if pool is None:
            pool = self.pools[(host, port)] = UpstreamPool(host, port)
        return pool

    def _close_unused_pools(self) -> None:
        used = {(u.host, u.port) for r in self.config.routes for b in r.backends for u in b.upstreams}
        for key in [k for k in self.pools if k not in used]:
            self.pools.pop(key).close()

    # -- per request ----------------------------------------------------------------------

    def next_pool(self, route: str, backend: BackendPlan, *, mirror: bool = False) -> UpstreamPool | None:
        """Round-robin over the backend's instances that take traffic (see ``balancer``);
        ``mirror``: for a mirror or replay leg, on a cursor of its own. ``backend`` may be
        of a plan a reload or weight change has since replaced (a mirror launched once its
        request's body ended, a retry): then the backend of that name now, None if the
        route has none (it was a KeyError: the live request got no answer)."""
        cycles = self.balancer.mirror_cycles if mirror else self.balancer.cycles
        cycle = cycles.get(id(backend))
        if cycle is None:
            now = self.balancer.current.get((route, backend.name))
            if now is None:
                return None
            cycle = cycles[now]
        return next(cycle)

    def saw_host(self, host: bytes) -> None:
        """Remember a valid Host value (bounded: a client inventing names empties it; and
        only a short one, as long as a DNS name with a port can be: 4,096 Hosts of 60 KB
        each held 240 MiB)."""
        if len(host) > MAX_HOST_REMEMBERED:
            return
        if len(self.hosts_seen) >= MAX_HOSTS_SEEN:
            self.hosts_seen.clear()
        self.hosts_seen.add(host)

    @staticmethod
    def new_sticky_key() -> bytes:
        return os.urandom(16).hex().encode()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        tasks.spawn(coro, name)

    def finished(self, conn: ClientConnection, ex: Exchange) -> None:
        """An exchange ended (answered, failed or abandoned): health, metrics, access log,
        and the shadow mirror that waited for the live answer."""
        plan, backend = ex.plan, ex.backend
        duration = self.now() - ex.t0
        upstream_status = ex.upstream_status
        # Passive health: a 5xx is a failure; a success matters only to end a streak, and
        # only a whole one counts (a body cut short was counted by upstream_error, or the
        # client left: it must not end the streak).
        if (
            upstream_status
            and backend is not None
            and ex.pool is not None
            and (
                upstream_status >= 500
                or (ex.complete and self.balancer.failing and id(backend) in self.balancer.failing)
            )
        ):
            self.balancer.result(backend, ex.pool, upstream_status < 500)
        self.counts.request(plan.name if plan else "", backend.name if backend else "", ex.method, ex.status, duration)
        if self.access_log.enabled:
            pool, decision = ex.pool, ex.decision
            key = (plan.name if plan else "-", backend.name if backend else "-", pool.address if pool else "-")
            fields = self._log_where.get(key)
            if fields is None:
                fields = self._log_where[key] = log_where(*key)
            self.access_log.add(
                (
                    time.time(),
                    conn.ip,
                    ex.method,
                    ex.url,
                    ex.status,
                    fields,
                    duration,
                    ex.bytes_in,
                    ex.bytes_out,
                    ex.request_id,
                    decision.by if decision else "-",
                )
            )
        mirror = ex.mirror
        if mirror is not None:
            ex.mirror = None
            mirror.live_finished(ex.complete)

    def retried(self, ex: Exchange, err: UpstreamError) -> None:
        plan, backend = ex.plan, ex.backend
        route = plan.name if plan else ""
        name = backend.name if backend else ""
        self.counts.count("splitproxy_retries", (route, name, err.reason))

    def upstream_error(self, ex: Exchange, err: UpstreamError) -> None:
        plan, backend = ex.plan, ex.backend
        if err.local:  # the proxy's own shortage: said once a second at most, nothing charged
            now = self.now()
            if now - self._local_logged >= 1.0:
                self._local_logged = now
                log.error(
                    "%s (route=%s): requests fail with 503 until sockets free up", err, plan.name if plan else "-"
                )
            return
        self._log_upstream_error(ex, err)
        self.counts.upstream_error(plan.name if plan else "", backend.name if backend else "", err.reason)
        if backend is not None and ex.pool is not None:
            self.balancer.result(backend, ex.pool, ok=False)

    def _log_upstream_error(self, ex: Exchange, err: UpstreamError) -> None:
        """A line per upstream and reason once a second at most, saying how many more there
        were since (QA, eighth round: a dead canary under load wrote ~6,000 lines a second;
        ``splitproxy_upstream_errors_total`` counts every one)."""
        plan, backend = ex.plan, ex.backend
        where = (plan.name if plan else "-", backend.name if backend else "-", ex.pool.address if ex.pool else "-")
        key = (*where, err.reason)
        now = self.now()
        seen = self._errors_logged.get(key)
        if seen is not None and now - seen[0] < 1.0:
            self._errors_logged[key] = (seen[0], seen[1] + 1)
            return
        if len(self._errors_logged) >= MAX_ERRORS_LOGGED:
            self._errors_logged.clear()
        self._errors_logged[key] = (now, 0)
        more = f" ({seen[1]} more like it since the last such line)" if seen is not None and seen[1] else ""
        log.warning("upstream error: route=%s backend=%s upstream=%s reason=%s: %s%s", *where, err.reason, err, more)

    # -- housekeeping ---------------------------------------------------------------------

    def tick(self) -> None:
        """Ten times a second: advance the coarse clock, time out upstreams that have not
        answered, close idle client connections, flush the access log.

        Response time-outs are checked here rather than with a timer per request: one
        pass over the connections costs less than a ``call_later`` and ``cancel`` for
        every request, at the price of up to one tick of lateness.
        """
        self.clock = now = self.now()
        self._date_now()
        idle = self.idle_timeout
        for conn in list(self.connections):
            try:
                self._tick_connection(conn, now, idle)
            except Exception:  # our bug: that connection ends, the others are still timed
                log.exception("internal error while timing a client connection; closing it")
                conn.transport.abort()
        self.shadow.tick(now)
        self.balancer.tick(now)
        self.access_log.flush()

    @staticmethod
    def _tick_connection(conn: ClientConnection, now: float, idle: float) -> None:
        ex = conn.active
        if ex is None:
            if conn.draining:
                # Answered and closing (forwarder._close): no head is timed, a pipelined one
                # read away included (its 408 was written after write_eof, and the error
                # ended this task). A client that takes none of the last bytes for the idle
                # time-out is cut, as a stalled answer is below: uvloop's close() waits for
                # the buffer to drain, for good.
                if now - conn.last_io > idle and conn.transport.is_closing():
                    if conn.sending():
                        conn.last_io = now
                    else:
                        conn.transport.abort()
                return
            head = conn.parsing
            began = conn.head_began  # its first byte, before its method was whole too
            if head is not None and head.head_read >= 0 and (not began or head.t0 < began):
                began = head.t0  # a pipelined head, begun in an earlier request's read
            if began:
                # A head still coming after the idle time-out, however often its bytes
                # come (a slow-loris client): 408, as nginx's client_header_timeout.
                # Timed from the head's start alone (last_io would close the connection
                # silently instead).
                if now - began > idle:
                    conn.head_timed_out()
            elif conn.tunnel is None and now - conn.last_io > idle:
                conn.shutdown()
        elif not ex.resp_started:
            if ex.req_complete:
                # timeouts.response counts from the whole request sent (see _attach)
                if ex.conn is not None and now >= ex.deadline:
                    ex.conn.timed_out()
            elif now - conn.last_io > idle:
                # The body stopped coming for the idle time-out: the upstream's doing if
                # it stopped taking it (the client's reads are paused), else the client's.
                if conn.read_paused and ex.conn is not None:
                    ex.conn.timed_out()
                else:
                    conn.body_timed_out(ex)
        elif now - conn.last_io > idle:
            # A response that stalled mid-body for longer than the idle time-out: the
            # client's doing if it stopped taking the body (as nginx's send_timeout: a
            # slow reader still taking it is no stall), else the upstream's.
            if conn.write_paused:
                if conn.sending():
                    conn.last_io = now
                else:
                    conn.transport.abort()
            elif ex.conn is not None and not ex.conn.finished:
                ex.conn.timed_out()  # a time-out of the upstream's, counted as one
            else:
                conn.transport.abort()

    def _date_now(self) -> None:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            self.date = h.http_date(second)
            self.date_line = b"Date: " + self.date + b"\r\n"

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.access_log.close()
