"""The control plane: every change of weights — API, CLI, reload, start-up — goes through here.

A change is validated (pure functions at the top of this module), recorded durably in the
state database (``store``), then put in force by the ``install`` callback (this process's
``Runtime``, or every worker process), and only then acknowledged. Changes are serialised
by one lock, so versions, history and what is in force never disagree. A bad change raises
a ``ControlError`` carrying its HTTP status and changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from .config import Config, Route, parse_weight, with_weights
from .store import Change, ChangeKind, HistoryEntry, RouteWeights, Store, reconcile, reconcile_changes

Weights = dict[str, float]


class ControlError(Exception):
    status = 400

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "message": self.message}
        if self.where:
            error["where"] = self.where
        return {"error": error}


class NotConfirmed(ControlError):
    """A change recorded (and so in force from now on) that a worker did not confirm."""

    status = 503


class BadRequest(ControlError):
    status = 400


class NotFound(ControlError):
    status = 404


class Stale(ControlError):
    status = 412


# ---- pure validation -------------------------------------------------------------------------


def weights_of(route: Route) -> Weights:
    return {b.name: float(b.weight) for b in route.backends}


def config_weights(config: Config) -> dict[str, Weights]:
    return {r.name: weights_of(r) for r in config.routes}


def parse_weights(route: Route, body: object) -> Weights:
    """The new weights from a ``{"weights": {...}}`` body: named backends change, others keep
    theirs. Known backends, weights by ``parse_weight``, at least one positive in the end."""
    raw = only(body, ("weights", "reason")).get("weights")
    if not isinstance(raw, Mapping) or not raw:
        raise BadRequest('"weights" must be a non-empty object of backend: weight', "weights")
    names = [b.name for b in route.backends]
    new = weights_of(route)
    for name, value in raw.items():
        if name not in new:
            raise BadRequest(
                f"no backend {name!r} in route {route.name!r} (backends: {', '.join(names)})", f"weights.{name}"
            )
        try:
            new[name] = parse_weight(value)  # the config file's rule
        except ValueError as exc:
            raise BadRequest(str(exc), f"weights.{name}") from None
    if sum(new.values()) <= 0:
        raise BadRequest("at least one backend needs a positive weight", "weights")
    return new


def only(body: object, keys: tuple[str, ...]) -> Mapping[str, object]:
    """``body`` as an object of at most ``keys``: an unknown key is a 400, as in the config
    file (a misspelt ``"reasn"`` was dropped without a word)."""
    if not isinstance(body, Mapping):
        raise BadRequest("the body must be a JSON object", "body")
    for key in body:
        if key not in keys:
            raise BadRequest(f"unknown key {key!r} (known: {', '.join(keys)})", str(key))
    return body


def parse_reason(body: object) -> str:
    if not isinstance(body, Mapping):
        raise BadRequest("the body must be a JSON object", "body")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BadRequest('"reason" must be a string', "reason")
    if len(reason) > 1000:
        raise BadRequest('"reason" is longer than 1000 characters', "reason")
    try:
        reason.encode()  # JSON's \ud800 escape decodes to a lone surrogate, which UTF-8 cannot store
    except UnicodeEncodeError as exc:
        raise BadRequest(
            f'"reason" has a lone surrogate {reason[exc.start]!r} at character {exc.start}: not Unicode text', "reason"
        ) from None
    return reason


def all_to(route: Route, backend: str) -> Weights:
    """Every share to one backend (promote, rollback): 100 to it, 0 to the others."""
    if backend not in {b.name for b in route.backends}:
        names = ", ".join(b.name for b in route.backends)
        raise BadRequest(f"no backend {backend!r} in route {route.name!r} (backends: {names})", "backend")
    return {b.name: (100.0 if b.name == backend else 0.0) for b in route.backends}


def with_route_weights(config: Config, changes: Mapping[str, Mapping[str, float]]) -> Config:
    routes = tuple(with_weights(r, changes[r.name]) if r.name in changes else r for r in config.routes)
    return dataclasses.replace(config, routes=routes)


def parse_if_match(value: str | None) -> int | None:
    """``If-Match: "12"`` → 12; absent or ``*`` → None (no precondition)."""
    if value is None:
        return None
    value = value.strip()
    if value == "*":
        return None
    if value.startswith("W/"):
        value = value[2:]
    digits = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19):  # int() would take " 9 ", "-1", "٣"
        raise BadRequest(f"If-Match must be an ETag of this API such as '\"12\"', got {value!r}", "If-Match")
    return int(digits)


# ---- the controller --------------------------------------------------------------------------


Install = Callable[[Config], Awaitable[None]]


class Outcome(NamedTuple):
    """What a change of weights did: the history entry in force after it, and whether it
    is new (False: the weights asked for were already in force; ``entry`` set them)."""

    entry: HistoryEntry
    changed: bool


class Controller:
    def __init__(self, store: Store, install: Install) -> None:
        self.store = store
        self._install = install
        self._lock = asyncio.Lock()
        self.config: Config | None = None
        self.version = 0
        self.route_versions: dict[str, int] = {}
        self._pending_start: tuple[list[Change], RouteWeights] | None = None

    @property
    def current(self) -> Config:
        assert self.config is not None, "controller not started"
        return self.config

    async def start(self, file_config: Config) -> Config:
        """Start-up: the file's config with the stored weights where they win (``store`` rule).

        Nothing is recorded yet: ``commit_start`` records it once the proxy listens, so a
        start that fails (a port taken) leaves the history and the config as last applied as
        they were."""
        async with self._lock:
            effective, changes, file_weights = await self._plan(file_config, reason="start-up")
            self._pending_start = (changes, file_weights)
            self.config = with_route_weights(file_config, effective)
            return self.config

    async def commit_start(self) -> None:
        """Record what ``start`` put in force (its changes of weights, the file's weights as
        last applied): called once the proxy listens, before any change can be made."""
        async with self._lock:
            assert self._pending_start is not None, "commit_start without start"
            changes, file_weights = self._pending_start
            self._note(await asyncio.to_thread(self.store.record_many, changes, config_weights=file_weights))
            self._pending_start = None
            self._load_versions()

    async def reload(self, file_config: Config) -> Config:
        """A reloaded file: applied with the same precedence rule as at start-up."""
        async with self._lock:
            config = await self._apply_file(file_config, reason="config reloaded")
            try:
                await self._install(config)
            except Exception as exc:  # a worker gone or stuck: recorded all the same, as change() says
                raise NotConfirmed(
                    f"version {self.version} is recorded and in force where a worker confirmed it, "
                    f"but not every worker did: {exc}"
                ) from exc
            return config

    async def _plan(
        self, file_config: Config, reason: str
    ) -> tuple[dict[str, Weights], list[Change], dict[str, Weights]]:
        """The weights in force for a file (``reconcile``), the changes to record for them,
        and the file's own weights."""
        file_weights = config_weights(file_config)

        def plan() -> tuple[dict[str, Weights], list[Change]]:
            stored = self.store.latest_weights()
            effective = reconcile(file_weights, stored, self.store.config_weights())
            return effective, reconcile_changes(effective, stored, reason=reason)

        effective, changes = await asyncio.to_thread(plan)
        return effective, changes, file_weights

    async def _apply_file(self, file_config: Config, reason: str) -> Config:
        effective, changes, file_weights = await self._plan(file_config, reason)
        self._note(await asyncio.to_thread(self.store.record_many, changes, config_weights=file_weights))
        self.config = with_route_weights(file_config, effective)
        return self.config

    def _load_versions(self) -> None:
        self.version = self.store.current_version()
        for route in self.current.routes:
            (last,) = self.store.history(route.name, limit=1) or (None,)
            self.route_versions[route.name] = last.version if last else 0

    def _note(self, entries: list[HistoryEntry]) -> None:
        for e in entries:
            self.route_versions[e.route] = e.version
            self.version = max(self.version, e.version)

    def route(self, name: str) -> Route:
        try:
            return self.current.route(name)
        except KeyError:
            raise NotFound(f"no route {name!r}", "route") from None

    async def change(
        self,
        route_name: str,
        make: Callable[[Route], Weights],
        *,
        actor: str,
        reason: str,
        kind: ChangeKind,
        if_match: int | None = None,
    ) -> Outcome:
        """Validate, record, put in force, in that order; nothing changes if any step fails
        before recording. ``make`` computes the new weights from the route as it is now.

        Weights equal to those in force are no change: nothing is recorded, the version
        stays (another client's ``If-Match`` still holds, as an unchanged Kubernetes object
        keeps its resourceVersion), and the outcome names the version that set them."""
        async with self._lock:
            route = self.route(route_name)
            if if_match is not None and if_match != self.route_versions.get(route_name, 0):
                raise Stale(
                    f"route {route_name!r} is at version {self.route_versions.get(route_name, 0)}, not {if_match}",
                    "If-Match",
                )
            before = weights_of(route)
            after = make(route)
            if after == before:
                (current,) = await asyncio.to_thread(self.store.history, route_name, limit=1) or (None,)
                if current is not None and current.version == self.route_versions.get(route_name):
                    return Outcome(current, changed=False)
            entry = await asyncio.to_thread(
                self.store.record, route_name, before, after, actor=actor, reason=reason, kind=kind
            )
            config = with_route_weights(self.current, {route_name: after})
            # Recorded, the change is the state of record: what the API, the metrics and a
            # replaced worker go by, whether or not every worker confirms it below (they
            # used to keep the weights before it while the workers served it).
            self.config = config
            self._note([entry])
            try:
                await self._install(config)
            except Exception as exc:
                raise NotConfirmed(
                    f"version {entry.version} is recorded and in force where a worker confirmed it, "
                    f"but not every worker did: {exc}"
                ) from exc
            return Outcome(entry, changed=True)

    async def set_weights(self, route: str, body: object, *, actor: str, if_match: int | None = None) -> Outcome:
        reason = parse_reason(body)  # and parse_weights refuses keys other than these two
        return await self.change(
            route, lambda r: parse_weights(r, body), actor=actor, reason=reason, kind="set", if_match=if_match
        )

    async def promote(self, route: str, body: object, *, actor: str, if_match: int | None = None) -> Outcome:
        if not isinstance(body, Mapping) or not isinstance(body.get("backend"), str):
            raise BadRequest('the body must be {"backend": "<name>"}', "backend")
        only(body, ("backend", "reason"))
        backend = body["backend"]
        reason = parse_reason(body) or f"promote {backend}"
        return await self.change(
            route, lambda r: all_to(r, backend), actor=actor, reason=reason, kind="promote", if_match=if_match
        )

    async def rollback(self, route: str, body: object, *, actor: str, if_match: int | None = None) -> Outcome:
        only(body, ("reason",))
        reason = parse_reason(body) or "rollback to baseline"
        return await self.change(
            route, lambda r: all_to(r, r.baseline), actor=actor, reason=reason, kind="rollback", if_match=if_match
        )

    async def restore(self, version: int, body: object, *, actor: str) -> Outcome:
        entry = await asyncio.to_thread(self.store.entry, version)
        if entry is None:
            raise NotFound(f"no version {version}", "version")
        only(body, ("reason",))
        reason = parse_reason(body) or f"restore version {version}"
        if entry.route not in {r.name for r in self.current.routes}:
            raise NotFound(f"version {version} is of route {entry.route!r}, which the config no longer has", "version")

        def weights(route: Route) -> Weights:
            # The version's weights, fitted to the route as it is now: backends removed
            # since are dropped, backends added since get 0.
            restored = {b.name: float(entry.after.get(b.name, 0.0)) for b in route.backends}
            if sum(restored.values()) <= 0:
                had = ", ".join(f"{name} {w:g}" for name, w in entry.after.items()) or "none"
                now = ", ".join(b.name for b in route.backends)
                raise BadRequest(
                    f"version {version} has no positive weight for the route's current backends ({now}); it had {had}",
                    "version",
                )
            return restored

        return await self.change(entry.route, weights, actor=actor, reason=reason, kind="restore")

    async def history(self, route: str | None, *, limit: int = 100, before: int | None = None) -> list[HistoryEntry]:
        entries = await asyncio.to_thread(self.store.history, route, limit=limit, before_version=before)
        # 404 for a route neither configured nor in the history, with ?before too.
        if (
            route is not None
            and not entries
            and (before is None or not await asyncio.to_thread(self.store.history, route, limit=1))
        ):
            self.route(route)
        return entries
