"""The shadow-diff report: what every process found, summed, stored, and served.

Data planes (this process, or each worker) compare mirrors and keep batches
(``shadow.DiffRecorder``); the supervisor drains them about once a second
(``Server._shadow_loop``), sums them here, and writes the endpoints that changed to the
state database every few seconds — batched, in a worker thread, never on a request's path.
The report the admin API serves is ``diffing.report`` of these sums.

Retention: an endpoint not updated for ``RETENTION_SECONDS`` is dropped, and the database
keeps at most ``MAX_ROWS`` endpoints (least recently updated go first); within an endpoint,
``diffing.Limits`` bounds fields, signatures and samples.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from .config import Config
from .diffing import OTHER_ENDPOINT, EndpointStats, RouteStats, merge, report
from .store import Store

log = logging.getLogger("splitproxy")

RETENTION_SECONDS = 7 * 24 * 3600.0
MAX_ROWS = 5000
PERSIST_SECONDS = 2.0
# Retention also runs this often when nothing new comes to store (an idle proxy), and at start.
EXPIRE_SECONDS = 600.0


class Reports:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.routes: dict[str, RouteStats] = {}
        self._dirty: dict[str, set[str]] = {}
        self.last_persist = 0.0
        self.last_expire = time.monotonic()
        # The database side (persist, expire, clear_stored: worker threads) one at a time: a
        # clear that came while a write was under way deleted first, and the write then put the
        # cleared rows back (served again after a restart).
        self._io = threading.Lock()

    def load(self) -> None:
        """The stored sums, retention applied first (a bad row is logged and skipped, never
        fatal)."""
        self.expire()
        for route, endpoints in self.store.shadow_endpoints().items():
            stats = RouteStats()
            for name, doc in endpoints.items():
                try:
                    stats.endpoints[name] = EndpointStats.from_dict(doc, f"{route} {name}")
                except ValueError as exc:
                    log.warning("shadow report: skipping a stored endpoint: %s", exc)
            self.routes[route] = stats

    def known_endpoints(self) -> dict[str, list[str]]:
        """Per route, the endpoints stored (not the overflow ones), most compared first."""
        return {
            route: sorted(
                (name for name in stats.endpoints if not name.endswith(" " + OTHER_ENDPOINT)),
                key=lambda name: (-stats.endpoints[name].compared, name),
            )
            for route, stats in self.routes.items()
        }

    def absorb(self, deltas: Mapping[str, Mapping[str, Any]]) -> None:
        for route, doc in deltas.items():
            try:
                batch = RouteStats.from_dict(doc)
            except ValueError as exc:
                log.warning("shadow report: dropping a batch for route %s: %s", route, exc)
                continue
            if not batch.endpoints:
                continue
            prior = self.routes.get(route)
            self.routes[route] = batch if prior is None else merge(prior, batch)
            self._dirty.setdefault(route, set()).update(batch.endpoints)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def persist(self) -> list[tuple[str, str]]:
        """Write the endpoints that changed and apply retention. Runs in a worker thread;
        returns what retention removed, for ``forget`` on the event loop."""
        with self._io:
            dirty, self._dirty = self._dirty, {}
            rows = {}
            for route, names in dirty.items():
                # .get, not a test and then [], here and below: the event loop may drop a route
                # or an endpoint meanwhile (clear, forget); what is read is never changed.
                stats = self.routes.get(route)
                endpoints = stats.endpoints if stats is not None else {}
                rows[route] = {name: ep.to_dict() for name in names if (ep := endpoints.get(name)) is not None}
            try:
                self.store.save_shadow_endpoints(rows)
            except BaseException:
                # Still to be written: with the next turn (or at shutdown), not only when those
                # endpoints next change (a locked database lost comparisons for good).
                for route, names in dirty.items():
                    self._dirty.setdefault(route, set()).update(names)
                raise
            finally:
                self.last_persist = time.monotonic()  # a failing database is tried again in PERSIST_SECONDS
            return self._expire()

    def expire(self) -> list[tuple[str, str]]:
        """Apply retention to the stored rows (a worker thread); what went, for ``forget``."""
        with self._io:
            return self._expire()

    def _expire(self) -> list[tuple[str, str]]:
        self.last_expire = time.monotonic()
        return self.store.prune_shadow(max_age=RETENTION_SECONDS, max_rows=MAX_ROWS)

    def forget(self, gone: list[tuple[str, str]]) -> None:
        """Drop from memory the endpoints retention removed from the database (on the event
        loop, where batches are absorbed), unless a batch updated one since: that one is
        stored again with the next persist."""
        for route, endpoint in gone:
            stats = self.routes.get(route)
            if stats is None or endpoint in self._dirty.get(route, ()):
                continue
            stats.endpoints.pop(endpoint, None)
            if not stats.endpoints:
                del self.routes[route]

    def clear(self, route: str | None) -> None:
        """Forget what was found, in memory: on the event loop, where batches are absorbed
        (in a thread, an absorb under way could put the old sums back). ``clear_stored`` then."""
        if route is None:
            self.routes.clear()
            self._dirty.clear()
        else:
            self.routes.pop(route, None)
            self._dirty.pop(route, None)

    def clear_stored(self, route: str | None) -> None:
        """Delete the stored report (a worker thread, after ``clear``), after any write under
        way: what it wrote goes too. Then ``found_since_clear``."""
        with self._io:
            self.store.clear_shadow(route)

    def found_since_clear(self, route: str | None) -> None:
        """On the event loop, after ``clear_stored``: what was found between ``clear`` and the
        delete (a write may have stored it just before the delete) is written again."""
        for name, stats in self.routes.items():
            if route is None or name == route:
                self._dirty.setdefault(name, set()).update(stats.endpoints)

    def to_json(self, config: Config, route: str | None = None) -> dict[str, Any]:
        """The report of every shadowed route (or one), with its shadow settings."""
        out = []
        for r in config.routes:
            if route is not None and r.name != route:
                continue
            stats = self.routes.get(r.name)
            if r.shadow is None and stats is None:
                continue
            noise = r.shadow.noise if r.shadow is not None else None
            entry: dict[str, Any] = {
                "route": r.name,
                "shadow": None
                if r.shadow is None
                else {
                    "backend": r.shadow.backend,
                    "percent": r.shadow.percent,
                    "methods": list(r.shadow.methods),
                    "noise_percent": r.shadow.noise.percent,
                },
            }
            entry.update(report(stats or RouteStats(), noise=noise))
            out.append(entry)
        # Routes the config no longer has, with a report still stored: shown (and so can be
        # cleared) until cleared or expired. They were kept, invisible, and came back with
        # the route's name.
        configured = {r.name for r in config.routes}
        for name in sorted(self.routes.keys() - configured):
            if route is None or name == route:
                out.append({"route": name, "shadow": None, "removed": True, **report(self.routes[name], noise=None)})
        return {"generated_at": time.time(), "routes": out}

    def has(self, route: str) -> bool:
        return route in self.routes
