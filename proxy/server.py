"""One proxy process: the data listener, the admin listener, reload and shutdown.

The data listener is a plain ``loop.create_server`` with ``forwarder.ClientConnection``
as the protocol; the admin listener is an aiohttp application (``admin``). Signals:
SIGHUP re-reads the config file (kept on any error), SIGTERM and SIGINT drain and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from . import data_plane_build, process, tasks
from .accesslog import AccessLog, AccessLogError
from .checker import HealthChecker, targets_from_config
from .client import is_loopback
from .config import DEFAULT_TOKEN_ENV, Address, Config, ConfigError, load_file
from .control import Controller, NotConfirmed, config_weights
from .dataplane import DataPlane, LocalDataPlane
from .metrics import Counts, GaugeSample, SplitproxyCollector
from .report import EXPIRE_SECONDS, PERSIST_SECONDS, Reports
from .runtime import Runtime
from .store import StateLock, Store, StoreError
from .workers import WorkerError, WorkerPool

log = logging.getLogger("splitproxy")

SHADOW_DRAIN_SECONDS = 1.0


class StartupError(Exception):
    """The proxy cannot start as configured; the message says why and what to do."""


def admin_token(config: Config) -> str | None:
    """The admin bearer token, from the environment variable named by ``admin.token_env``.

    Refuses a non-loopback admin listener without one (SPEC §3: "required when admin is
    not on loopback"): an open admin API on a network is a remote weight switch.
    """
    env = config.admin.token_env
    token = os.environ.get(env, "").strip() if env else ""
    if token:
        return token
    if config.admin.protect_reads:
        where = f"${env}" if env else "an environment variable named by admin.token_env"
        raise StartupError(f"admin.protect_reads is true but there is no token: set one in {where}")
    if not is_loopback(config.admin.listen.host):
        where = f"${env}" if env else "an environment variable named by admin.token_env"
        raise StartupError(
            f"admin.listen {config.admin.listen} is not a loopback address: set a bearer token in {where}, "
            "or listen on 127.0.0.1"
        )
    if env and env != DEFAULT_TOKEN_ENV:
        # A variable named on purpose and not set: the operator meant a token (QA).
        log.warning("admin API without a token: $%s is not set; changes are open to local processes", env)
    return None


class Server:
    """One splitproxy: the state database and controller, the admin listener, and the data
    plane — in this process, or in ``workers`` processes sharing the port (SO_REUSEPORT)."""

    def __init__(
        self,
        config: Config,
        config_path: str | Path | None = None,
        *,
        workers: int = 1,
        grace: float = 30.0,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.workers = workers
        self.grace = grace
        self.store: Store | None = None
        self.state_lock: StateLock | None = None
        self.stopping = False
        self._reload_lock = asyncio.Lock()  # reload_file: one at a time
        self.reloads = {"applied": 0, "refused": 0}  # SIGHUP reloads, for /metrics
        self.last_reload_ok = True
        self._backends_of: tuple[Config | None, dict[str, frozenset[str]]] = (None, {})
        self.controller: Controller = None  # type: ignore[assignment]  # set in start()
        self.admin_token: str | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.plane: DataPlane = LocalDataPlane() if workers == 1 else WorkerPool(workers)
        self.admin_port = 0
        self.ready = False
        self._admin: web.AppRunner | None = None
        self._counts = Counts()
        self._shadow_task: asyncio.Task[None] | None = None
        self.checker: HealthChecker | None = None
        self._active_down: frozenset[tuple[str, str, str]] = frozenset()
        # The data plane's per-instance health (balancer.snapshot), refreshed each second.
        self.balance: dict[tuple[str, str, str], dict[str, object]] = {}
        self.reports: Reports = None  # type: ignore[assignment]  # set in start()

    @property
    def data_port(self) -> int:
        return self.plane.port

    @property
    def runtime(self) -> Runtime:
        """This process's runtime (single-process mode only; used by tests and the demo)."""
        assert isinstance(self.plane, LocalDataPlane), "the data plane runs in worker processes"
        return self.plane.runtime

    async def start(self) -> None:
        from .admin import make_admin_app

        self.admin_token = admin_token(self.config)
        try:
            AccessLog(self.config.access_log).close()  # one that cannot be opened says so now, by name
        except AccessLogError as exc:
            raise StartupError(str(exc)) from None
        try:
            self.state_lock = StateLock(self.config.state.path)
            self.store = Store(self.config.state.path)
        except StoreError as exc:
            self._release_state()
            raise StartupError(str(exc)) from None
        self.controller = Controller(self.store, self._install)
        self.reports = Reports(self.store)
        try:
            self.config = config = await self.controller.start(self.config)
            await asyncio.to_thread(self.reports.load)
        except StoreError as exc:  # a damaged database: refused by name, as one that is not SQLite
            self._release_state()
            raise StartupError(str(exc)) from None
        self.registry.register(
            SplitproxyCollector(
                counts=lambda: self._counts,
                weights=lambda: config_weights(self.config),
                config_version=lambda: self.controller.version,
                healthy_upstreams=self._healthy_samples,
                reloads=lambda: (self.reloads, self.last_reload_ok),
                configured=self._route_backends,
            )
        )
        try:
            await self.plane.start(config)
        except BaseException:
            self._release_state()
            raise
        await self.plane.admit_endpoints(self.reports.known_endpoints())
        # `-v`: every admin request in the log (aiohttp's access log, at debug level only)
        access = log if log.isEnabledFor(logging.DEBUG) else None
        # lingering_time=0: a body not read to its end closes the connection after the answer.
        # aiohttp would read the rest to keep the connection, and log an "Unhandled
        # exception" traceback for each body it cannot decode (Content-Encoding: gzip on
        # plain text), read by a handler or not: a client could fill the log (review).
        self._admin = web.AppRunner(make_admin_app(self), access_log=access, handle_signals=False, lingering_time=0)
        try:
            await self._admin.setup()
            site = web.TCPSite(self._admin, config.admin.listen.host, config.admin.listen.port)
            await site.start()
        except BaseException:
            # The admin port is taken (or worse): undo what started, then say why.
            await self._admin.cleanup()
            await self.plane.stop(0, announce=False)
            self._release_state()
            raise
        self.admin_port = self._admin.addresses[0][1]
        # Both listen: only now is the start-up recorded (a start that failed left no trace).
        # The controller's lock is taken before any admin request can run.
        try:
            await self.controller.commit_start()
        except StoreError as exc:
            await self._admin.cleanup()
            await self.plane.stop(0, announce=False)
            self._release_state()
            raise StartupError(str(exc)) from None
        self.balance = await self.plane.balance()
        self.checker = HealthChecker(targets_from_config(config), self._health_changed, rng=random.Random())
        self.checker.start()
        self._shadow_task = tasks.spawn(self._shadow_loop(), "shadow-report")
        self.ready = True
        log.info(
            "listening: proxy on %s, admin on %s (%d worker%s); data plane: %s; state: %s",
            Address(config.listen.host, self.data_port),
            Address(config.admin.listen.host, self.admin_port),
            self.workers,
            "" if self.workers == 1 else "s",
            data_plane_build(),
            # Where the history is (state.path is relative to the working directory: started
            # elsewhere, another one, and an empty history; QA, eighth round).
            os.path.abspath(config.state.path),  # noqa: ASYNC240  # getcwd, no file I/O
        )

    async def _shadow_loop(self) -> None:
        while True:
            await asyncio.sleep(SHADOW_DRAIN_SECONDS)
            try:
                await self.shadow_tick()
            except (StoreError, OSError, WorkerError) as exc:
                log.error("shadow report: %s", exc)

    async def shadow_tick(self) -> None:
        """One turn of the periodic work: the balancer's view, the data plane's batches, and
        storing them every PERSIST_SECONDS (retention with it), or retention alone every
        EXPIRE_SECONDS when nothing new came."""
        self.balance = await self.plane.balance()
        await self.collect_shadow(persist=False)
        now = time.monotonic()
        if self.reports.dirty and now - self.reports.last_persist >= PERSIST_SECONDS:
            self.reports.forget(await asyncio.to_thread(self.reports.persist))
        elif now - self.reports.last_expire >= EXPIRE_SECONDS:
            self.reports.forget(await asyncio.to_thread(self.reports.expire))

    async def collect_shadow(self, *, persist: bool) -> None:
        """Sum what the data plane found since last time; optionally store it now."""
        self.reports.absorb(await self.plane.drain_shadow())
        if persist and self.reports.dirty:
            self.reports.forget(await asyncio.to_thread(self.reports.persist))

    async def clear_shadow(self, route: str | None) -> None:
        await self.plane.clear_shadow(route)
        self.reports.clear(route)
        await asyncio.to_thread(self.reports.clear_stored, route)
        self.reports.found_since_clear(route)

    async def _install(self, config: Config) -> None:
        """Put a config in force (called by the controller, after recording the change): the
        state of record from here on, even if a worker fails to confirm it."""
        self.config = config
        trimmed = False
        if self.checker is not None:
            targets = targets_from_config(config)
            self.checker.update(targets)
            # An instance no longer probed (health_check removed, the instance or its route
            # gone) is not down by checks any more: it stayed down for good, as no probe
            # would ever report it up (a later probe of it starts healthy).
            probed = {t.key for t in targets}
            if not self._active_down <= probed:
                self._active_down = self._active_down & probed
                trimmed = True
        await self.plane.install(config)
        if trimmed:  # onto the new table: on the old one, a removed route's backend was "recovered" (QA)
            await self._push_health()

    def _route_backends(self) -> dict[str, frozenset[str]]:
        """The backend names of each route in force (for /metrics), worked out once per config."""
        config = self.config
        if self._backends_of[0] is not config:
            self._backends_of = (config, {r.name: frozenset(b.name for b in r.backends) for r in config.routes})
        return self._backends_of[1]

    # -- views for the admin API -----------------------------------------------------------

    def health_view(self, route: str) -> dict[tuple[str, str], dict[str, object]]:
        """Per instance, by (backend, url): whether it takes traffic (``healthy``), the
        active checks' details, and its passive state (ejection, failure streak)."""
        now = asyncio.get_running_loop().time()
        checks = self.checker.snapshot() if self.checker is not None else {}
        out: dict[tuple[str, str], dict[str, object]] = {}
        for (r, backend, url), state in self.balance.items():
            if r != route:
                continue
            check = checks.get((r, backend, url))
            out[(backend, url)] = {
                "healthy": state["serving"],
                "ejected": state["ejected"],
                "ejected_for": state["ejected_for"],
                "failures": state["failures"],
                "check": None if check is None else check.to_json(now),
            }
        return out

    def _healthy_samples(self) -> Iterable[GaugeSample]:
        serving: dict[tuple[str, str], int] = {}
        for (route, backend, _url), state in self.balance.items():
            serving[(route, backend)] = serving.get((route, backend), 0) + bool(state["serving"])
        for route_config in self.config.routes:
            for b in route_config.backends:
                n = serving.get((route_config.name, b.name), len(b.upstreams))
                yield GaugeSample((route_config.name, b.name), float(n))

    def _health_changed(self, route: str, backend: str, url: str, healthy: bool) -> None:
        """The active checker flipped an instance: tell the data plane (every worker)."""
        key = (route, backend, url)
        self._active_down = self._active_down - {key} if healthy else self._active_down | {key}
        tasks.spawn(self._push_health(), "push-health")

    async def _push_health(self) -> None:
        try:
            await self.plane.set_active_down(self._active_down)
            self.balance = await self.plane.balance()
        except (WorkerError, OSError) as exc:
            log.error("health: could not update the data plane: %s", exc)

    async def render_metrics(self) -> bytes:
        # Counts come from every process first; the collector then reads this snapshot.
        self._counts = await self.plane.counts()
        return generate_latest(self.registry)

    # -- reload ---------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the config file in the background."""
        if not self.ready:
            log.warning("reload: %s; SIGHUP ignored", "stopping" if self.stopping else "still starting")
            return
        tasks.spawn(self.reload_file(), "reload")

    async def reload_file(self) -> bool:
        """Re-read the config file; swap it in if valid, keep the running one if not. One
        reload at a time, each reading the file when its turn comes: with the parse in a
        thread, a slow parse of an older file could finish last and be applied over a
        newer one (review: two SIGHUPs left the older file in force)."""
        async with self._reload_lock:
            applied = await self._reload_file()
        # For automation that edits the file and sends SIGHUP (a refused reload showed only
        # in the log): splitproxy_config_reloads_total and ..._last_reload_successful.
        self.reloads["applied" if applied else "refused"] += 1
        self.last_reload_ok = applied
        return applied

    async def _reload_file(self) -> bool:
        if self.config_path is None:
            log.warning("reload: no config file to re-read")
            return False
        try:
            # Parsed off the event loop: a large file held every request (2 s for 5,000 routes).
            config = await asyncio.to_thread(load_file, self.config_path)
        except ConfigError as exc:
            log.error("reload of %s failed; the running config stays:\n%s", self.config_path, exc)
            return False
        old = self.config
        fixed = [
            name for name in ("listen", "admin", "state", "access_log") if getattr(old, name) != getattr(config, name)
        ]
        if fixed:
            log.warning(
                "reload: %s %s a restart to change; the running values stay",
                ", ".join(fixed),
                "needs" if len(fixed) == 1 else "need",
            )
            config = dataclasses.replace(
                config, listen=old.listen, admin=old.admin, state=old.state, access_log=old.access_log
            )
        try:
            await self.controller.reload(config)
        except StoreError as exc:
            log.error("reload of %s failed; the running config stays: %s", self.config_path, exc)
            return False
        except NotConfirmed as exc:
            log.warning("reloaded %s: %s", self.config_path, exc)
            return True
        n = len(config.routes)
        log.info(
            "reloaded %s: %d route%s, version %d", self.config_path, n, "" if n == 1 else "s", self.controller.version
        )
        return True

    # -- shutdown -------------------------------------------------------------------------

    async def stop(self) -> None:
        """Drain the data plane (see ``LocalDataPlane.stop``), then close the admin
        listener and the state database."""
        self.ready = False
        self.stopping = True
        if self._shadow_task is not None:
            self._shadow_task.cancel()
        if self.checker is not None:
            await self.checker.stop()
        # The shadow report's last batches: from the workers before they go, from this
        # process after its in-flight requests finished.
        with contextlib.suppress(StoreError, OSError, WorkerError):
            await self.collect_shadow(persist=False)
        await self.plane.stop(self.grace)
        if self.store is not None:
            try:
                # This process's comparisons of the drain, or the workers' (their last lines).
                await self.collect_shadow(persist=False)
                if self.reports.dirty:
                    self.reports.forget(await asyncio.to_thread(self.reports.persist))
            except (StoreError, OSError) as exc:
                log.error("shadow report: last batch not stored: %s", exc)
        if self._admin is not None:
            await self._admin.cleanup()
        self._release_state()

    def _release_state(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.state_lock is not None:
            self.state_lock.release()


async def serve(
    config: Config,
    config_path: str | Path | None,
    *,
    grace: float,
    workers: int = 1,
    on_started: Callable[[Server], object] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads, SIGUSR1 reopens the access log. For
    ``splitproxy run`` and ``demo``; without a config file (the demo, in a terminal) SIGHUP
    stops it, as a hangup stops an interactive command."""
    server = Server(config, config_path, workers=workers, grace=grace)
    # Signals first: one that arrives while starting (or right after "listening") is
    # handled like any other, never the default kill.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, server.reload)
    else:  # QA (eighth round): the demo outlived its closed terminal, holding its ports
        loop.add_signal_handler(signal.SIGHUP, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, server.plane.reopen_logs)  # logrotate's postrotate
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()  # a signal meanwhile sets `stop`, acted on right after
    if on_started is not None:
        on_started(server)
    if not stop.is_set():
        process.settle()  # the collector and the allocator tuned for serving
        await stop.wait()
    await server.stop()
    log.info("stopped")
