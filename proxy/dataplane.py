"""Where requests are served: in this process (``LocalDataPlane``) or in worker processes
(``workers.WorkerPool``). The ``Server`` talks to either through the same five calls:
``start``, ``install``, ``counts``, ``stop`` and ``port``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from . import tasks
from .config import Config
from .forwarder import ClientConnection
from .metrics import Counts
from .runtime import Runtime

log = logging.getLogger("splitproxy")

TICK_SECONDS = 0.1


class DataPlane(Protocol):
    port: int

    async def start(self, config: Config) -> None: ...

    async def install(self, config: Config) -> None:
        """Put ``config`` in force; return only when it is (in every process)."""

    async def counts(self) -> Counts: ...

    async def drain_shadow(self) -> dict[str, dict[str, Any]]:
        """Shadow-diff batches found since the last drain, per route (summed over processes)."""

    async def clear_shadow(self, route: str | None) -> None: ...

    async def admit_endpoints(self, known: Mapping[str, list[str]]) -> None:
        """Endpoints the stored report tracks, per route: admitted first by each process's
        endpoint cap, so that a restart does not admit another cap's worth."""

    async def set_active_down(self, keys: frozenset[tuple[str, str, str]]) -> None:
        """The instances failing their active health checks (in every process)."""

    async def balance(self) -> dict[tuple[str, str, str], dict[str, object]]:
        """Per instance: served or not, ejected, failure streak (``Balancer.snapshot``)."""

    def reopen_logs(self) -> None:
        """SIGUSR1: every serving process reopens its access log (``AccessLog.reopen``)."""

    async def stop(self, grace: float, *, announce: bool = True) -> None: ...


class LocalDataPlane:
    """The data listener and its ``Runtime`` in this process."""

    def __init__(self, *, reuse_port: bool = False) -> None:
        self.reuse_port = reuse_port
        self.rt: Runtime | None = None
        self.port = 0
        self._listener: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def runtime(self) -> Runtime:
        assert self.rt is not None, "data plane not started"
        return self.rt

    async def start(self, config: Config) -> None:
        loop = asyncio.get_running_loop()
        self.rt = rt = Runtime(config, loop)
        self._listener = await loop.create_server(
            lambda: ClientConnection(rt),
            config.listen.host,
            config.listen.port,
            reuse_port=self.reuse_port or None,
            backlog=2048,
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        self._ticker = tasks.spawn(self._tick(), "tick")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                self.runtime.tick()
            except Exception:  # our bug: logged, and the time-outs go on being kept
                log.exception("internal error in the data plane's housekeeping tick")

    async def install(self, config: Config) -> None:
        self.runtime.install(config)

    async def counts(self) -> Counts:
        return self.runtime.counts

    async def drain_shadow(self) -> dict[str, dict[str, Any]]:
        return self.runtime.diffs.drain() if self.rt is not None else {}

    async def clear_shadow(self, route: str | None) -> None:
        self.runtime.diffs.clear(route)

    async def admit_endpoints(self, known: Mapping[str, list[str]]) -> None:
        self.runtime.diffs.admit(known)

    async def set_active_down(self, keys: frozenset[tuple[str, str, str]]) -> None:
        self.runtime.balancer.set_active_down(keys)

    async def balance(self) -> dict[tuple[str, str, str], dict[str, object]]:
        return self.runtime.balancer.snapshot()

    def reopen_logs(self) -> None:
        if self.rt is not None:
            self.rt.access_log.reopen()

    async def stop(self, grace: float, *, announce: bool = True) -> None:
        rt = self.runtime
        # 1. Stop accepting new connections.
        if self._listener is not None:
            self._listener.close()
        busy = sum(1 for c in rt.connections if c.active is not None)
        (log.info if announce else log.debug)(
            "stopping: no longer accepting; %d requests in flight, up to %.0fs to finish", busy, grace
        )
        # 2. Idle keep-alive connections close now; busy ones after their response.
        for conn in list(rt.connections):
            conn.shutdown()
        # 3. Let in-flight requests finish, and the mirrors of those that did (each ends
        # within its shadow.timeout), up to the grace period.
        deadline = rt.loop.time() + grace
        while any(c.active is not None or c.tunnel is not None for c in rt.connections) or any(
            rt.shadow.in_flight.values()
        ):
            if rt.loop.time() >= deadline:
                log.warning("shutdown: %d connections still busy after %.1fs; closing them", len(rt.connections), grace)
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)  # the comparisons of the last mirrors run in callbacks of their own
        # 4. Close whatever is left, and the upstream pools; flush the access log.
        for conn in list(rt.connections):
            conn.transport.abort()
        if self._ticker is not None:
            self._ticker.cancel()
        rt.close()
