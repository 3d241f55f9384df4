"""Which instance of a backend takes the next request, and which backends are down.

Per backend of the routing table a ``BackendHealth`` joins the pure health state
(``health.Availability``: the active checker's verdicts and each instance's passive
outlier state) with the instances' connection pools, and keeps a round-robin cycle over
the instances that take traffic now. The cycle is rebuilt only when that set changes —
an active flip, an ejection, an ejection running out (``next_change``) — so a request pays
one ``next()``, as before health existed.

A backend none of whose instances passes its active checks is *down*: the forwarder sends
its requests (and, for as long as it lasts, its sticky users) to the route's baseline. A
down baseline is tried anyway rather than refused.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .config import OutlierDetection
from .health import Availability, OutlierPolicy, OutlierState, Transition
from .routing import BackendPlan, RoutePlan, Table
from .upstream import UpstreamPool

log = logging.getLogger("splitproxy")

Key = tuple[str, str, str]  # (route, backend, upstream url), as the health checker names them


def policy_of(od: OutlierDetection) -> OutlierPolicy:
    return OutlierPolicy(
        consecutive_failures=od.consecutive_failures,
        base_ejection=od.base_ejection,
        max_ejection=od.max_ejection,
        max_ejection_percent=od.max_ejection_percent,
    )


def going_on(
    old: Iterator[UpstreamPool] | None, pools: list[UpstreamPool], order: list[UpstreamPool]
) -> Iterator[UpstreamPool]:
    """A round-robin over ``pools`` that goes on where ``old`` would have: from the instance
    it would have handed out next, or, when that one no longer serves, from the next one
    that does in the backend's own ``order``. Started afresh at the first instance, every
    weight change, reload or health flip sent the next request to the same instance (ten
    changes between ten requests: all ten to one)."""
    if old is None or len(pools) < 2:
        return itertools.cycle(pools)
    nxt = next(old)
    where = {id(p): i for i, p in enumerate(order)}
    at = where.get(id(nxt))
    if at is None:
        return itertools.cycle(pools)
    # The first serving instance at or after it, in the backend's order (wrapping round).
    start = min(range(len(pools)), key=lambda i: (where.get(id(pools[i]), 0) - at) % len(order))
    return itertools.cycle(pools[start:] + pools[:start])


@dataclass
class BackendHealth:
    route: RoutePlan
    backend: BackendPlan
    pools: list[UpstreamPool]
    urls: list[str]
    avail: Availability
    passive: bool  # outlier detection enabled for the route
    index: dict[int, int] = field(default_factory=dict)  # id(pool) -> instance index
    failing: bool = False  # some instance has a failure streak (successes must reset it)

    def __post_init__(self) -> None:
        self.index = {id(p): i for i, p in enumerate(self.pools)}

    @property
    def key(self) -> tuple[str, str]:
        return (self.route.name, self.backend.name)


class Balancer:
    """The health-aware round-robin of every backend; rebuilt on ``install``."""

    def __init__(self, now: Callable[[], float], on_event: Callable[[str, tuple[str, ...]], None]) -> None:
        self.now = now
        self._on_event = on_event  # (metric, labels): ejections and failovers are counted
        self.cycles: dict[int, Iterator[UpstreamPool]] = {}
        # The same round-robin for mirror and replay legs, on a cursor of their own: sharing
        # the live one, a replay after every live request sent every live request of a
        # two-instance backend to the same instance.
        self.mirror_cycles: dict[int, Iterator[UpstreamPool]] = {}
        self.current: dict[tuple[str, str], int] = {}  # (route, backend) -> id(BackendPlan) now
        self.down: set[int] = set()  # id(BackendPlan) of backends with no instance passing
        self.backends: dict[int, BackendHealth] = {}
        self.active_down: frozenset[Key] = frozenset()
        self.next_change: float | None = None
        # id(BackendPlan) of backends with a failure streak on some instance: their
        # successes must be recorded to end it (all other successes cost nothing).
        self.failing: set[int] = set()
        self.listeners: list[Callable[[], None]] = []  # told after every change of who serves

    def install(self, table: Table, pool: Callable[[str, int], UpstreamPool]) -> None:
        """Health for a new table; an instance kept by (route, backend, url) keeps its state."""
        old = {
            (bh.route.name, bh.backend.name, url): bh.avail.outliers[i]
            for bh in self.backends.values()
            for i, url in enumerate(bh.urls)
        }
        backends: dict[int, BackendHealth] = {}
        for plan in table.plans.values():
            od = plan.route.outlier_detection
            policy = policy_of(od)
            for backend in plan.backends:
                urls = [u.url for u in backend.upstreams]
                outliers = []
                for url in urls:
                    kept = old.get((plan.name, backend.name, url))
                    if kept is not None and od.enabled:
                        # Kept through any change of the settings (they apply from now on):
                        # new settings used to wipe every ejection and streak of the route.
                        kept.policy = policy
                        outliers.append(kept)
                    else:  # new, or detection turned off: no ejection outlives it
                        outliers.append(OutlierState(policy))
                active = [(plan.name, backend.name, url) not in self.active_down for url in urls]
                backends[id(backend)] = BackendHealth(
                    route=plan,
                    backend=backend,
                    pools=[pool(u.host, u.port) for u in backend.upstreams],
                    urls=urls,
                    avail=Availability(outliers, active),
                    passive=od.enabled,
                    failing=any(o.failures for o in outliers),
                )
        cycles: dict[int, Iterator[UpstreamPool]] = {}
        mirror_cycles: dict[int, Iterator[UpstreamPool]] = {}
        down: set[int] = set()
        for bh in backends.values():
            pools, is_down = self._serving(bh)
            was = self.current.get(bh.key)
            cycles[id(bh.backend)] = going_on(self.cycles.get(was) if was else None, pools, bh.pools)
            mirror_cycles[id(bh.backend)] = going_on(self.mirror_cycles.get(was) if was else None, pools, bh.pools)
            if is_down:
                down.add(id(bh.backend))
        self.backends, self.cycles, self.mirror_cycles, self.down = backends, cycles, mirror_cycles, down
        self.current = {bh.key: id(bh.backend) for bh in backends.values()}
        self.failing = {id(bh.backend) for bh in backends.values() if bh.failing}
        self._plan_next_change()

    # -- state changes ----------------------------------------------------------------------

    def set_active_down(self, keys: Iterable[Key]) -> None:
        """The active checker's verdicts: every (route, backend, url) now failing its checks."""
        self.active_down = frozenset(keys)
        for bh in self.backends.values():
            changed = False
            for i, url in enumerate(bh.urls):
                healthy = (bh.route.name, bh.backend.name, url) not in self.active_down
                if bh.avail.active[i] != healthy:
                    bh.avail.set_active(i, healthy)
                    changed = True
            if changed:
                self._rebuild(bh)

    def result(self, backend: BackendPlan, pool: UpstreamPool, ok: bool) -> None:
        """A live result for ``pool`` as an instance of ``backend`` (slow path: a failure,
        or a success while some instance of the backend has a failure streak)."""
        bh = self.backends.get(id(backend))
        if bh is None or not bh.passive:
            return
        i = bh.index.get(id(pool))
        if i is None:
            return
        now = self.now()
        transition = bh.avail.record(i, ok, now)
        bh.failing = any(o.failures for o in bh.avail.outliers)
        if bh.failing:
            self.failing.add(id(bh.backend))
        else:
            self.failing.discard(id(bh.backend))
        if transition is Transition.DOWN:
            state = bh.avail.outliers[i]
            until = (state.ejected_until or now) - now
            log.warning(
                "ejected upstream %s of route %s, backend %s for %.0fs after %d failures in a row",
                bh.urls[i],
                bh.route.name,
                bh.backend.name,
                until,
                bh.avail.policy.consecutive_failures,
            )
            self._on_event("splitproxy_outlier_ejections", (bh.route.name, bh.backend.name))
            self._rebuild(bh)

    def tick(self, now: float) -> None:
        """Ejections that ran out put their instances back."""
        if self.next_change is not None and now >= self.next_change:
            for bh in self.backends.values():
                self._rebuild(bh)

    def failover(self, plan: RoutePlan, backend: BackendPlan) -> BackendPlan:
        """The backend to use instead of a down one: the baseline, unless it is down too."""
        baseline = plan.backends[plan.baseline]
        if baseline is backend or id(baseline) in self.down:
            return backend
        self._on_event("splitproxy_failovers", (plan.name, backend.name))
        return baseline

    # -- derived state --------------------------------------------------------------------

    def _serving(self, bh: BackendHealth) -> tuple[list[UpstreamPool], bool]:
        idx = bh.avail.available(self.now())
        if not idx:
            return bh.pools, True  # down: if it is still chosen (no baseline to take over), try all
        return [bh.pools[i] for i in idx], False

    def _rebuild(self, bh: BackendHealth) -> None:
        pools, is_down = self._serving(bh)
        key = id(bh.backend)
        self.cycles[key] = going_on(self.cycles.get(key), pools, bh.pools)
        self.mirror_cycles[key] = going_on(self.mirror_cycles.get(key), pools, bh.pools)
        was_down = id(bh.backend) in self.down
        if is_down and not was_down:
            self.down.add(id(bh.backend))
            baseline = bh.route.backends[bh.route.baseline].name
            if baseline == bh.backend.name:
                where = "it is the baseline: its instances are all tried anyway"
            else:
                where = f"its traffic goes to the baseline {baseline} (unless that is down too)"
            log.warning(
                "failover: route %s, backend %s has no healthy instance; %s", bh.route.name, bh.backend.name, where
            )
        elif was_down and not is_down:
            self.down.discard(id(bh.backend))
            log.info("recovered: route %s, backend %s takes its traffic again", bh.route.name, bh.backend.name)
        self._plan_next_change()
        for listener in self.listeners:
            listener()

    def _plan_next_change(self) -> None:
        now = self.now()
        ends = [t for bh in self.backends.values() if (t := bh.avail.next_change(now)) is not None]
        self.next_change = min(ends) if ends else None

    def snapshot(self) -> dict[Key, dict[str, object]]:
        """Per instance: active verdict, ejection, failure streak, and whether it serves."""
        now = self.now()
        out: dict[Key, dict[str, object]] = {}
        for bh in self.backends.values():
            serving = set(bh.avail.available(now))
            for i, url in enumerate(bh.urls):
                state = bh.avail.outliers[i]
                ejected = state.is_ejected(now)
                out[(bh.route.name, bh.backend.name, url)] = {
                    "active_healthy": bh.avail.active[i],
                    "ejected": ejected,
                    "ejected_for": round((state.ejected_until or now) - now, 1) if ejected else 0.0,
                    "failures": state.failures,
                    "serving": i in serving,
                }
        return out
