"""Active health checks: the asyncio shell around ``proxy.health``.

One probe loop per target — a (route, backend, upstream instance, ``HealthCheck``) — sends
``GET health_check.path`` with ``User-Agent: splitproxy-health/1`` (and ``Host:
health_check.host`` when set, else the instance's host:port) and a time-out of
``health_check.timeout``; a status within ``expect_status`` (inclusive) is a good probe,
anything else (another status, a refused connection, a time-out, a reset) a failed one.
``health.ActiveState`` turns results into flips, and each flip is logged once and handed
to ``on_change(route, backend, url, healthy)``: what to do with it (take the instance out
of rotation, update a gauge) is the caller's.

Schedule: the first probe of each target is at a uniform point of ``[0, interval)`` and
each next one ``interval`` ± 10 % after the *start* of the previous one (never before it
ended), so a slow or timed-out probe does not stretch the period, and many targets
started together do not probe in lock-step. All randomness comes from the injected RNG.

Connections: one ``aiohttp.ClientSession`` for the checker, opened in ``start`` and
closed in ``stop``, with a fresh connection per probe (``force_close``), as HAProxy's
checks do. A probe then tests what a new request needs — that the instance still accepts
connections — not just that an old socket is open; and it never races the upstream's
keep-alive idle time-out, which with typical servers (Node.js 5 s, gunicorn 2 s) is at or
below our default 5 s interval: a probe written on a connection the server is closing
fails with a reset that says nothing about the instance. The cost, one handshake per
instance per interval, is negligible. The session keeps no cookies, ignores proxy
settings from the environment, never follows redirects and has no connection limit, so
a probe never queues behind another and spends its time-out waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp

from . import tasks
from .config import Config, HealthCheck, Upstream
from .health import ActiveState, Transition, first_probe_delay, next_probe_delay, probe_ok

__all__ = ["USER_AGENT", "HealthChecker", "InstanceHealth", "OnChange", "Target", "targets_from_config"]

log = logging.getLogger("splitproxy")

USER_AGENT = "splitproxy-health/1"

Key = tuple[str, str, str]  # (route, backend, upstream url)
OnChange = Callable[[str, str, str, bool], None]


class Target(NamedTuple):
    """One instance to probe, as one route's backend sees it."""

    route: str
    backend: str
    upstream: Upstream
    check: HealthCheck

    @property
    def key(self) -> Key:
        return (self.route, self.backend, self.upstream.url)


def targets_from_config(config: Config) -> tuple[Target, ...]:
    """Every instance of every backend of the routes that have a ``health_check``."""
    return tuple(
        Target(route.name, backend.name, upstream, route.health_check)
        for route in config.routes
        if route.health_check is not None
        for backend in route.backends
        for upstream in backend.upstreams
    )


@dataclass(frozen=True, slots=True)
class InstanceHealth:
    """What ``snapshot`` reports for one target. Times are on the checker's clock."""

    route: str
    backend: str
    url: str
    healthy: bool
    consecutive_ok: int
    consecutive_fail: int
    probes: int  # completed probes
    last_probe: float | None  # when the last completed probe started
    last_duration: float | None  # seconds it took
    last_status: int | None  # None: no answer (see last_error)
    last_error: str | None  # why the last probe failed; None when it passed

    def to_json(self, now: float) -> dict[str, Any]:
        """For the admin API: the probe time as an age, since the clock has no epoch."""
        return {
            "healthy": self.healthy,
            "consecutive_ok": self.consecutive_ok,
            "consecutive_fail": self.consecutive_fail,
            "probes": self.probes,
            "last_probe_age": None if self.last_probe is None else round(now - self.last_probe, 3),
            "last_duration": None if self.last_duration is None else round(self.last_duration, 4),
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


class _Probe:
    """The mutable per-target record behind a loop."""

    __slots__ = ("last_duration", "last_error", "last_probe", "last_status", "probes", "state", "target", "task")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.state = ActiveState(target.check)
        self.task: asyncio.Task[None] | None = None
        self.probes = 0
        self.last_probe: float | None = None
        self.last_duration: float | None = None
        self.last_status: int | None = None
        self.last_error: str | None = None


class HealthChecker:
    """Probes every target until stopped; see the module docstring.

    ``start()`` (inside a running loop) opens the session and starts one loop per
    target; ``await stop()`` ends them and closes the session. ``update(targets)`` swaps
    the target set on a reload: a kept target keeps its health and streaks.
    """

    def __init__(
        self,
        targets: Iterable[Target],
        on_change: OnChange,
        *,
        rng: random.Random,
        clock: Callable[[], float] | None = None,
        jitter: float = 0.1,
    ) -> None:
        self._on_change = on_change
        self._rng = rng
        self._clock = clock  # None: the running loop's time, resolved in start()
        self._jitter = jitter
        self._probes: dict[Key, _Probe] = {}
        self._retired: set[asyncio.Task[None]] = set()  # cancelled by update(), awaited in stop()
        self._session: aiohttp.ClientSession | None = None
        self._stopped = False
        for target in targets:
            self._probes.setdefault(target.key, _Probe(target))  # a duplicate instance is probed once

    # -- lifetime -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._session is not None and not self._stopped

    def start(self) -> None:
        if self._session is not None:
            raise RuntimeError("HealthChecker.start() called twice")
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        for probe in self._probes.values():
            self._launch(probe)

    async def stop(self) -> None:
        if self._session is None or self._stopped:
            return
        self._stopped = True
        # 1. Stop every loop, mid-probe or asleep, and wait until they have ended.
        running = [p.task for p in self._probes.values() if p.task is not None] + list(self._retired)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._retired.clear()
        # 2. Only then close the session: no probe can be using it any more.
        await self._session.close()

    def update(self, targets: Iterable[Target]) -> None:
        """Swap in a new target set. Kept targets keep their state; a kept target whose
        ``HealthCheck`` changed restarts its loop (so a shorter interval applies now)."""
        wanted: dict[Key, Target] = {}
        for target in targets:
            wanted.setdefault(target.key, target)
        for key in [k for k in self._probes if k not in wanted]:
            self._retire(self._probes.pop(key))
        for key, target in wanted.items():
            probe = self._probes.get(key)
            if probe is None:
                probe = self._probes[key] = _Probe(target)
                self._launch(probe)
            elif target != probe.target:
                probe.target = target
                probe.state.check = target.check
                self._retire(probe)
                self._launch(probe)

    def _launch(self, probe: _Probe) -> None:
        if self.running:
            url = probe.target.upstream.url
            probe.task = tasks.spawn(self._run(probe), f"health {probe.target.route}/{probe.target.backend} {url}")

    def _retire(self, probe: _Probe) -> None:
        if probe.task is not None:
            probe.task.cancel()
            self._retired.add(probe.task)
            probe.task.add_done_callback(self._retired.discard)
            probe.task = None

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self) -> dict[Key, InstanceHealth]:
        """Per target, keyed by (route, backend, url), in target order."""
        return {
            key: InstanceHealth(
                route=p.target.route,
                backend=p.target.backend,
                url=p.target.upstream.url,
                healthy=p.state.healthy,
                consecutive_ok=p.state.successes,
                consecutive_fail=p.state.failures,
                probes=p.probes,
                last_probe=p.last_probe,
                last_duration=p.last_duration,
                last_status=p.last_status,
                last_error=p.last_error,
            )
            for key, p in self._probes.items()
        }

    # -- probing ------------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._clock is not None  # set in start(), before any loop runs
        return self._clock()

    async def _run(self, probe: _Probe) -> None:
        check = probe.target.check
        due = self._now() + first_probe_delay(check.interval, self._rng.random())
        while True:
            await asyncio.sleep(max(0.0, due - self._now()))
            started = self._now()
            status, error = await self._probe(probe.target)
            self._record(probe, started, status, error)
            due = started + next_probe_delay(check.interval, self._rng.random(), self._jitter)

    async def _probe(self, target: Target) -> tuple[int | None, str | None]:
        """One probe: (status, None) when it passed, (status or None, why) when it failed."""
        assert self._session is not None
        check = target.check
        try:
            async with self._session.get(
                target.upstream.url + check.path,
                headers=None if check.host is None else {"Host": check.host},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=check.timeout),
            ) as resp:
                status = resp.status
        except TimeoutError:  # aiohttp's time-outs derive from it
            return None, f"no answer within {check.timeout:g}s"
        except aiohttp.ClientConnectorError as exc:
            return None, f"connect failed: {exc.os_error.strerror or exc.os_error}"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            # A bug, not an answer: logged loudly, but the loop must go on probing, or the
            # instance would silently keep its last state for good.
            log.exception("health check: probe of %s%s failed unexpectedly", target.upstream.url, check.path)
            return None, f"unexpected {type(exc).__name__}: {exc}"
        if not probe_ok(status, check.expect_status):
            low, high = check.expect_status
            return status, f"status {status}, expected {low}-{high}"
        return status, None

    def _record(self, probe: _Probe, started: float, status: int | None, error: str | None) -> None:
        probe.probes += 1
        probe.last_probe = started
        probe.last_duration = self._now() - started
        probe.last_status = status
        probe.last_error = error
        log.debug(
            "health check: %s%s: %s in %.1f ms",
            probe.target.upstream.url,
            probe.target.check.path,
            error or f"status {status}",
            probe.last_duration * 1000,
        )
        flip = probe.state.record_probe(error is None)
        if flip is None:
            return
        t, healthy = probe.target, flip is Transition.UP
        if healthy:
            log.info(
                "health check: route=%s backend=%s upstream=%s is up after %d good probe(s)",
                t.route,
                t.backend,
                t.upstream.url,
                probe.state.successes,
            )
        else:
            log.warning(
                "health check: route=%s backend=%s upstream=%s is down after %d failed probe(s): %s",
                t.route,
                t.backend,
                t.upstream.url,
                probe.state.failures,
                error,
            )
        try:
            self._on_change(t.route, t.backend, t.upstream.url, healthy)
        except Exception:
            # The caller's bug must not end probing of this instance.
            log.exception("health check: on_change failed for %s", t.upstream.url)
