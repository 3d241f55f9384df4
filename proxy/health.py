"""Health core: which instances of a backend take traffic. Pure.

No sockets, no event loop, no clock and no RNG: time comes in as ``now`` (seconds on any
monotonic clock) and randomness as a ``point`` in ``[0, 1)``. The asyncio shell that
probes instances is ``proxy.checker``; the forwarder feeds live results to ``Availability``.

Two independent signals, as in Envoy, decide whether an instance takes traffic:

**Active** (``ActiveState``, one per probed instance): ``GET health_check.path`` every
``interval``. ``unhealthy_threshold`` consecutive failed probes take a healthy instance
down, ``healthy_threshold`` consecutive good ones bring a down instance back up.

Initial state — *healthy, but the first probe is decisive* (HAProxy's rule:
``check.health = rise; /* up, but will fall down at first failure */``). Traffic flows
from the first moment, so a start, a reload or a newly added instance never causes an
outage while the first round of probes is still spread over ``interval``; yet an
instance whose *first* probe fails goes down at once, because thresholds exist to ride
out a blip of an instance with a good record, and a new one has none. Envoy does the
mirror image — new hosts start failed and one good probe marks them healthy, with the
cluster held back ("warming") until the first round completes — which needs a readiness
gate we do not have, and would drop traffic to a new instance for up to ``interval``.

**Passive** (``OutlierState``, one per instance, fed from live traffic): after
``consecutive_failures`` failures in a row (connect errors, time-outs, resets and 5xx
responses; see ``live_ok``) the instance is *ejected* for
``base_ejection * 2**(n-1)``, capped at ``max_ejection``, where ``n`` counts this
ejection and the earlier ones not yet forgiven. Envoy grows the time linearly
(``base * n``); doubling reaches the cap in 4 ejections instead of 10 with the defaults
(30, 60, 120, 240, 300 s), and every return of a still-broken instance costs
``consecutive_failures`` user requests. ``n`` stops growing once the cap is reached
(as Envoy's multiplier does), so forgiveness takes a bounded time.

Decay (forgiveness): for each whole ``base_ejection`` spent un-ejected, counted from the
end of the last ejection, ``n`` drops by one. Envoy does the same once per sweep
``interval`` (10 s) spent healthy; we have no sweep, and tying it to ``base_ejection``
makes one forgiven step cost as much good time as the shortest ejection. Failures below
the threshold do not stop the decay; only an ejection does.

Results that arrive while an instance is ejected (requests that were in flight, or
traffic sent there by the panic rule below) are ignored, and the failure count starts
from zero when it returns.

**How many may be ejected** (``may_eject``): at most ``max_ejection_percent`` of a
backend's instances, but at least one whenever the backend has two or more, and never
the only instance. Envoy's default is 10 %, and its docs say it "will eject at least one
host regardless of the value", yet its code enforces the percentage strictly unless
``always_eject_one_host`` (1.31+, off by default) is set; gRPC's xDS outlier detection
always allows one. We default to 50 % because our backends are small (one to a few
instances per version): 10 % would never eject anything below ten instances. The only
instance is never ejected: ejecting it turns every request into a certain failure and
stops the live traffic that would show its recovery; active checks, which keep probing,
may still take it down. Only outlier ejections count towards the limit (as in Envoy);
instances down by active checks do not.

**Panic** (``Availability.available``): outlier ejection alone never empties a backend.
When every actively-healthy instance is ejected, ejections are ignored and all of them
take traffic (Envoy's panic mode, limited here to passive ejection). When active checks
have every instance down, the backend is down (``Availability.down``) and the caller
decides: fail fast, or fall back to the baseline.

Probe schedule: the first probe of each instance is at a uniform point of
``[0, interval)`` (``first_probe_delay``) and each next one ``interval`` ± ``jitter``
later (``next_probe_delay``), so that many routes started together never probe in
lock-step (Envoy's ``initial_jitter`` and ``interval_jitter_percent``). Our jitter is
symmetric, so the mean period stays ``interval``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .config import HealthCheck

__all__ = [
    "ActiveState",
    "Availability",
    "OutlierPolicy",
    "OutlierState",
    "Transition",
    "first_probe_delay",
    "live_ok",
    "may_eject",
    "next_probe_delay",
    "probe_ok",
]


class Transition(enum.StrEnum):
    """A change of an instance's health, returned by the ``record`` methods when it flips."""

    DOWN = "down"
    UP = "up"


# ---- classifying results ----------------------------------------------------------------------


def probe_ok(status: int, expect: tuple[int, int]) -> bool:
    """A probe answered ``status``: good when within ``expect_status`` (inclusive)."""
    return expect[0] <= status <= expect[1]


def live_ok(status: int | None) -> bool:
    """A live request's outcome for outlier detection; ``None`` is a transport error
    (connect failure, time-out, reset). 5xx counts as a failure, as Envoy's consecutive_5xx;
    4xx is the client's doing and says nothing about the instance."""
    return status is not None and status < 500


# ---- active checks ---------------------------------------------------------------------------


class ActiveState:
    """Active health of one instance, moved only by ``record_probe``. See the module docstring."""

    __slots__ = ("check", "failures", "healthy", "probed", "successes")

    def __init__(self, check: HealthCheck) -> None:
        self.check = check  # may be replaced on reload; streaks and health are kept
        self.healthy = True
        self.probed = False  # no probe has completed yet: the first one is decisive
        self.successes = 0  # consecutive good probes
        self.failures = 0  # consecutive failed probes

    def record_probe(self, ok: bool) -> Transition | None:
        first = not self.probed
        self.probed = True
        if ok:
            self.successes += 1
            self.failures = 0
            if not self.healthy and self.successes >= self.check.healthy_threshold:
                self.healthy = True
                return Transition.UP
            return None
        self.failures += 1
        self.successes = 0
        if self.healthy and (first or self.failures >= self.check.unhealthy_threshold):
            self.healthy = False
            return Transition.DOWN
        return None

    def __repr__(self) -> str:
        return (
            f"ActiveState(healthy={self.healthy}, probed={self.probed}, "
            f"successes={self.successes}, failures={self.failures})"
        )


# ---- probe schedule ----------------------------------------------------------------------------


def _check_point(point: float) -> None:
    if not 0.0 <= point < 1.0:
        raise ValueError(f"point must be in [0, 1), got {point!r}")


def first_probe_delay(interval: float, point: float) -> float:
    """Delay of an instance's first probe: uniform over ``[0, interval)``."""
    _check_point(point)
    return interval * point


def next_probe_delay(interval: float, point: float, jitter: float = 0.1) -> float:
    """Delay from one probe to the next: uniform over ``[interval * (1 - jitter),
    interval * (1 + jitter))``; the mean stays ``interval``."""
    _check_point(point)
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
    return interval * (1.0 + jitter * (2.0 * point - 1.0))


# ---- passive checks (outlier detection) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """When live traffic ejects an instance. Defaults as Envoy's, but 50 % (module docstring)."""

    consecutive_failures: int = 5
    base_ejection: float = 30.0  # seconds
    max_ejection: float = 300.0  # seconds
    max_ejection_percent: float = 50.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be >= 1")
        if not self.base_ejection > 0:
            raise ValueError("base_ejection must be > 0")
        if not self.max_ejection >= self.base_ejection:
            raise ValueError("max_ejection must be >= base_ejection")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be between 0 and 100")

    @property
    def max_level(self) -> int:
        """The smallest ``n`` whose ejection time reaches ``max_ejection``; ``n`` stops there."""
        n = 1
        while self.base_ejection * (1 << (n - 1)) < self.max_ejection:
            n += 1
        return n

    def ejection_time(self, n: int) -> float:
        """How long the ``n``-th ejection in a row lasts (``n >= 1``)."""
        return min(self.base_ejection * (1 << (min(n, self.max_level) - 1)), self.max_ejection)


def may_eject(ejected: int, total: int, percent: float) -> bool:
    """Whether one more of ``total`` instances may be ejected while ``ejected`` already are.

    At most ``percent`` % ejected, but at least one when ``total >= 2``; never the only one.
    """
    if total <= 1:
        return False
    if ejected == 0:
        return True
    # (ejected + 1) / total <= percent / 100, kept exact for whole percentages.
    return (ejected + 1) * 100 <= percent * total


class OutlierState:
    """Passive health of one instance, moved by ``record``. See the module docstring.

    ``level`` is ``n``, the number of ejections not yet forgiven; it decays lazily, when
    ``record`` or ``level_at`` is called, so no timer is needed.
    """

    __slots__ = ("_clean_since", "ejected_until", "failures", "level", "policy")

    def __init__(self, policy: OutlierPolicy) -> None:
        self.policy = policy
        self.failures = 0  # consecutive failures since the last success or return
        self.level = 0
        self.ejected_until: float | None = None
        self._clean_since = 0.0  # when the current un-ejected period began

    def is_ejected(self, now: float) -> bool:
        until = self.ejected_until
        return until is not None and now < until

    def level_at(self, now: float) -> int:
        """``level`` with returns and decay up to ``now`` applied; does not change state."""
        return self._settled(now)[0]

    def _settled(self, now: float) -> tuple[int, float, bool]:
        """(level, clean_since, returned) as of ``now``."""
        level, since, returned = self.level, self._clean_since, False
        until = self.ejected_until
        if until is not None:
            if now < until:
                return level, since, False
            since, returned = until, True
        if level:
            steps = min(level, int((now - since) // self.policy.base_ejection))
            level -= steps
            since += steps * self.policy.base_ejection
        return level, since, returned

    def record(self, ok: bool, now: float, *, may_eject: bool = True) -> Transition | None:
        """Count one live result; ``DOWN`` when it ejects the instance.

        ``may_eject`` is the backend-wide limit (``Availability.record`` works it out).
        When it refuses, the failures keep counting and every further failure tries
        again, so the instance goes as soon as room frees up (Envoy instead waits for
        the count to restart from zero and reach the threshold again).
        """
        if self.is_ejected(now):
            return None
        self.level, self._clean_since, returned = self._settled(now)
        if returned:
            self.ejected_until = None
            self.failures = 0
        if ok:
            self.failures = 0
            return None
        self.failures += 1
        if self.failures < self.policy.consecutive_failures or not may_eject:
            return None
        self.level = min(self.level + 1, self.policy.max_level)
        self.ejected_until = now + self.policy.ejection_time(self.level)
        self.failures = 0
        return Transition.DOWN

    def __repr__(self) -> str:
        return f"OutlierState(failures={self.failures}, level={self.level}, ejected_until={self.ejected_until})"


# ---- one backend -------------------------------------------------------------------------------


class Availability:
    """The instances of one backend that take traffic, by index into its upstreams.

    ``active[i]`` is the active checker's verdict for instance ``i`` (set from its
    ``on_change``; all True when the route has no health check); ``outliers[i]`` is the
    instance's passive state. Both may be carried over from an earlier ``Availability``
    when a reload keeps an instance, so health survives weight changes.
    """

    __slots__ = ("active", "outliers", "policy")

    def __init__(self, outliers: Sequence[OutlierState], active: Sequence[bool] | None = None) -> None:
        if not outliers:
            raise ValueError("a backend has at least one instance")
        policy = outliers[0].policy
        if any(o.policy != policy for o in outliers):
            raise ValueError("all instances of a backend share one outlier policy")
        if active is not None and len(active) != len(outliers):
            raise ValueError("active and outliers must have one entry per instance")
        self.policy = policy
        self.outliers = tuple(outliers)
        self.active = list(active) if active is not None else [True] * len(outliers)

    @classmethod
    def fresh(cls, size: int, policy: OutlierPolicy | None = None) -> Availability:
        policy = policy or OutlierPolicy()
        return cls([OutlierState(policy) for _ in range(size)])

    def __len__(self) -> int:
        return len(self.outliers)

    def set_active(self, index: int, healthy: bool) -> None:
        self.active[index] = healthy

    def record(self, index: int, ok: bool, now: float) -> Transition | None:
        """A live result for instance ``index``; ``DOWN`` when it ejects the instance."""
        state = self.outliers[index]
        allowed = True
        if not ok and state.failures + 1 >= self.policy.consecutive_failures:
            # Counted only when this failure could eject: the common path stays O(1).
            allowed = may_eject(self.ejected(now), len(self.outliers), self.policy.max_ejection_percent)
        return state.record(ok, now, may_eject=allowed)

    def ejected(self, now: float) -> int:
        return sum(o.is_ejected(now) for o in self.outliers)

    def available(self, now: float) -> tuple[int, ...]:
        """Indices of the instances taking traffic at ``now``, in order; empty when down."""
        healthy = [i for i, up in enumerate(self.active) if up]
        serving = tuple(i for i in healthy if not self.outliers[i].is_ejected(now))
        # Panic: ejection alone never empties a backend (module docstring).
        return serving or tuple(healthy)

    def down(self, now: float) -> bool:
        """No instance takes traffic: active checks have every instance down."""
        return not self.available(now)

    def next_change(self, now: float) -> float | None:
        """When ``available`` may next change by time alone (the earliest ejection end), or
        None; a caller may cache ``available(now)`` until then, or until ``record`` returns
        ``DOWN`` or ``set_active`` is called."""
        ends = [o.ejected_until for o in self.outliers if o.ejected_until is not None and now < o.ejected_until]
        return min(ends) if ends else None
