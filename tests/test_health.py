"""Tier 1: the health core (proxy.health) as tables — no sockets, no loop, time passed in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import HealthCheck
from proxy.health import (
    ActiveState,
    Availability,
    OutlierPolicy,
    OutlierState,
    Transition,
    first_probe_delay,
    live_ok,
    may_eject,
    next_probe_delay,
    probe_ok,
)

DOWN, UP = Transition.DOWN, Transition.UP

# ---- active checks ---------------------------------------------------------------------------

# Probes as "+" (good) and "-" (failed); transitions as "." (none), "v" (down), "^" (up).
SYMBOL = {None: ".", DOWN: "v", UP: "^"}


@pytest.mark.parametrize(
    ("unhealthy", "healthy", "probes", "expected", "ends_healthy"),
    [
        pytest.param(3, 2, "", "", True, id="starts-healthy"),
        pytest.param(3, 2, "+++", "...", True, id="good-while-healthy-no-transition"),
        pytest.param(3, 2, "-", "v", False, id="first-probe-failed-down-at-once"),
        pytest.param(3, 2, "+--", "...", True, id="after-a-good-probe-two-failures-are-not-enough"),
        pytest.param(3, 2, "+---", "...v", False, id="down-exactly-at-unhealthy-threshold"),
        pytest.param(3, 2, "+--+--", "......", True, id="failure-streak-broken-by-a-good-probe"),
        pytest.param(3, 2, "-----", "v....", False, id="failures-while-down-do-not-repeat-down"),
        pytest.param(3, 2, "-+", "v.", False, id="one-good-probe-is-not-enough"),
        pytest.param(3, 2, "-++", "v.^", True, id="up-exactly-at-healthy-threshold"),
        pytest.param(3, 2, "-+-++", "v...^", True, id="good-streak-broken-by-a-failure"),
        pytest.param(3, 2, "-+++---", "v.^...v", False, id="up-then-down-again-needs-full-threshold"),
        pytest.param(1, 1, "+-+-", ".v^v", False, id="thresholds-of-one-flip-every-time"),
        pytest.param(2, 3, "+--+++", "..v..^", True, id="healthy-threshold-three"),
    ],
)
def test_active_transitions(unhealthy: int, healthy: int, probes: str, expected: str, ends_healthy: bool) -> None:
    state = ActiveState(HealthCheck(unhealthy_threshold=unhealthy, healthy_threshold=healthy))
    got = "".join(SYMBOL[state.record_probe(p == "+")] for p in probes)
    assert got == expected
    assert state.healthy is ends_healthy


def test_active_streaks_are_counted() -> None:
    state = ActiveState(HealthCheck(unhealthy_threshold=3, healthy_threshold=2))
    for ok in (True, True, False, False):
        state.record_probe(ok)
    assert (state.successes, state.failures, state.probed) == (0, 2, True)


def test_active_kept_state_takes_new_thresholds() -> None:
    state = ActiveState(HealthCheck(unhealthy_threshold=3))
    state.record_probe(True)
    state.record_probe(False)
    state.check = HealthCheck(unhealthy_threshold=2)  # a reload lowered the threshold
    assert state.record_probe(False) is DOWN


@pytest.mark.parametrize(
    ("status", "expect", "ok"),
    [
        pytest.param(199, (200, 399), False, id="below-range"),
        pytest.param(200, (200, 399), True, id="low-bound-inclusive"),
        pytest.param(399, (200, 399), True, id="high-bound-inclusive"),
        pytest.param(400, (200, 399), False, id="above-range"),
        pytest.param(204, (204, 204), True, id="single-status"),
        pytest.param(503, (500, 503), True, id="a-range-of-errors-may-mean-healthy"),
    ],
)
def test_probe_ok(status: int, expect: tuple[int, int], ok: bool) -> None:
    assert probe_ok(status, expect) is ok


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        pytest.param(None, False, id="transport-error"),
        pytest.param(200, True, id="2xx"),
        pytest.param(404, True, id="4xx-is-the-client"),
        pytest.param(499, True, id="499"),
        pytest.param(500, False, id="500"),
        pytest.param(503, False, id="503"),
    ],
)
def test_live_ok(status: int | None, ok: bool) -> None:
    assert live_ok(status) is ok


# ---- probe schedule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "point", "jitter", "expected"),
    [
        pytest.param(10.0, 0.0, 0.1, 9.0, id="lowest-point-is-minus-jitter"),
        pytest.param(10.0, 0.5, 0.1, 10.0, id="middle-is-the-interval"),
        pytest.param(10.0, 0.75, 0.2, 11.0, id="wider-jitter"),
        pytest.param(10.0, 0.3, 0.0, 10.0, id="no-jitter"),
    ],
)
def test_next_probe_delay(interval: float, point: float, jitter: float, expected: float) -> None:
    assert next_probe_delay(interval, point, jitter) == pytest.approx(expected)


@given(point=st.floats(0.0, 1.0, exclude_max=True), jitter=st.floats(0.0, 0.9))
def test_next_probe_delay_stays_within_jitter(point: float, jitter: float) -> None:
    delay = next_probe_delay(5.0, point, jitter)
    assert 5.0 * (1 - jitter) - 1e-9 <= delay <= 5.0 * (1 + jitter) + 1e-9


@given(point=st.floats(0.0, 1.0, exclude_max=True))
def test_first_probe_delay_within_one_interval(point: float) -> None:
    assert 0.0 <= first_probe_delay(5.0, point) < 5.0


@pytest.mark.parametrize(
    ("point", "jitter"),
    [
        pytest.param(1.0, 0.1, id="point-one"),
        pytest.param(-0.1, 0.1, id="point-negative"),
        pytest.param(0.5, 1.0, id="jitter-one"),
        pytest.param(0.5, -0.1, id="jitter-negative"),
    ],
)
def test_probe_delay_rejects_bad_inputs(point: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="must be in"):
        next_probe_delay(5.0, point, jitter)


@pytest.mark.parametrize("seed", range(10))
def test_first_probes_of_many_routes_are_spread(seed: int) -> None:
    # 50 routes, 5 s interval: on average one first probe per 100 ms window.
    rng = random.Random(seed)
    starts = sorted(first_probe_delay(5.0, rng.random()) for _ in range(50))
    busiest = max(sum(1 for u in starts if t <= u < t + 0.1) for t in starts)
    assert busiest <= 8, starts  # lock-step would put all 50 in one window
    assert starts[0] < 0.5
    assert starts[-1] > 4.5
    halves = sum(1 for t in starts if t < 2.5)
    assert 15 <= halves <= 35


# ---- passive checks --------------------------------------------------------------------------

POLICY = OutlierPolicy()  # 5 failures, 30 s base, 300 s max, 50 %


def fail(state: OutlierState, times: int, now: float) -> list[Transition | None]:
    return [state.record(False, now) for _ in range(times)]


def test_outlier_policy_defaults() -> None:
    assert (POLICY.consecutive_failures, POLICY.base_ejection, POLICY.max_ejection, POLICY.max_ejection_percent) == (
        5,
        30.0,
        300.0,
        50.0,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"consecutive_failures": 0}, "consecutive_failures", id="zero-failures"),
        pytest.param({"base_ejection": 0.0}, "base_ejection", id="zero-base"),
        pytest.param({"base_ejection": 60.0, "max_ejection": 30.0}, "max_ejection", id="max-below-base"),
        pytest.param({"max_ejection_percent": 101.0}, "max_ejection_percent", id="percent-over-100"),
        pytest.param({"max_ejection_percent": -1.0}, "max_ejection_percent", id="percent-negative"),
    ],
)
def test_outlier_policy_rejects(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutlierPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "seconds"),
    [
        pytest.param(1, 30.0, id="first-is-base"),
        pytest.param(2, 60.0, id="second-doubles"),
        pytest.param(3, 120.0, id="third"),
        pytest.param(4, 240.0, id="fourth"),
        pytest.param(5, 300.0, id="fifth-capped"),
        pytest.param(9, 300.0, id="stays-capped"),
    ],
)
def test_ejection_time_doubles_up_to_the_cap(n: int, seconds: float) -> None:
    assert POLICY.ejection_time(n) == seconds


@pytest.mark.parametrize(
    ("policy", "level"),
    [
        pytest.param(POLICY, 5, id="30s-to-300s"),
        pytest.param(OutlierPolicy(base_ejection=30.0, max_ejection=30.0), 1, id="max-equals-base"),
        pytest.param(OutlierPolicy(base_ejection=10.0, max_ejection=80.0), 4, id="exact-power-of-two"),
    ],
)
def test_level_stops_growing_at_the_cap(policy: OutlierPolicy, level: int) -> None:
    assert policy.max_level == level


def test_ejected_exactly_at_consecutive_failures() -> None:
    state = OutlierState(POLICY)
    assert fail(state, 5, now=100.0) == [None, None, None, None, DOWN]
    assert state.is_ejected(100.0)
    assert state.is_ejected(129.999)
    assert not state.is_ejected(130.0)  # ejected for exactly base_ejection


def test_a_success_resets_the_failure_count() -> None:
    state = OutlierState(POLICY)
    fail(state, 4, now=0.0)
    assert state.record(True, 0.0) is None
    assert fail(state, 4, now=0.0) == [None] * 4
    assert state.record(False, 0.0) is DOWN


def test_results_while_ejected_are_ignored_and_the_count_restarts() -> None:
    state = OutlierState(POLICY)
    fail(state, 5, now=0.0)
    assert fail(state, 10, now=10.0) == [None] * 10  # in-flight failures neither extend nor count
    assert state.ejected_until == 30.0
    assert fail(state, 4, now=30.0) == [None] * 4  # back, and counting from zero
    assert state.record(False, 30.0) is DOWN


def eject_back_to_back(state: OutlierState, times: int) -> list[float]:
    """Eject ``times`` times, each as soon as the previous ejection ends; the durations."""
    now, durations = 0.0, []
    for _ in range(times):
        assert fail(state, 5, now)[-1] is DOWN
        assert state.ejected_until is not None
        durations.append(state.ejected_until - now)
        now = state.ejected_until
    return durations


def test_back_to_back_ejections_grow_and_cap() -> None:
    state = OutlierState(POLICY)
    assert eject_back_to_back(state, 7) == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 300.0]
    assert state.level == POLICY.max_level


@pytest.mark.parametrize(
    ("clean", "next_ejection"),
    [
        pytest.param(0.0, 120.0, id="no-clean-time-grows"),
        pytest.param(29.9, 120.0, id="just-under-one-base-still-grows"),
        pytest.param(30.0, 60.0, id="one-base-forgives-one"),
        pytest.param(59.9, 60.0, id="just-under-two-bases"),
        pytest.param(60.0, 30.0, id="two-bases-forgive-both"),
        pytest.param(10_000.0, 30.0, id="never-below-zero"),
    ],
)
def test_level_decays_one_step_per_base_ejection_spent_unejected(clean: float, next_ejection: float) -> None:
    state = OutlierState(POLICY)
    eject_back_to_back(state, 2)  # level 2, the second ejection ends at 90 s
    assert state.ejected_until == 90.0
    now = 90.0 + clean
    assert state.level_at(now) == {120.0: 2, 60.0: 1, 30.0: 0}[next_ejection]
    fail(state, 5, now)
    assert state.ejected_until == now + next_ejection


def test_failures_below_the_threshold_do_not_stop_the_decay() -> None:
    state = OutlierState(POLICY)
    eject_back_to_back(state, 1)  # level 1, back at 30 s
    for t in (35.0, 45.0, 55.0):
        fail(state, 4, t)
        state.record(True, t)
    fail(state, 5, 60.0)
    assert state.ejected_until == 90.0  # level decayed to 0 at 60 s: base again


def test_refused_ejection_retries_on_every_further_failure() -> None:
    state = OutlierState(POLICY)
    assert [state.record(False, 0.0, may_eject=False) for _ in range(7)] == [None] * 7
    assert state.record(False, 0.0, may_eject=True) is DOWN


# ---- how many may be ejected ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ejected", "total", "percent", "allowed"),
    [
        pytest.param(0, 0, 50, False, id="no-instances"),
        pytest.param(0, 1, 50, False, id="sole-instance-never"),
        pytest.param(0, 1, 100, False, id="sole-instance-never-even-at-100"),
        pytest.param(0, 2, 50, True, id="first-of-two"),
        pytest.param(1, 2, 50, False, id="second-of-two-would-be-100"),
        pytest.param(1, 2, 100, True, id="second-of-two-at-100"),
        pytest.param(0, 3, 10, True, id="at-least-one-despite-10-percent"),
        pytest.param(0, 10, 0, True, id="at-least-one-even-at-0-percent"),
        pytest.param(1, 3, 50, False, id="two-of-three-over-50"),
        pytest.param(1, 4, 50, True, id="two-of-four-exactly-50"),
        pytest.param(2, 4, 50, False, id="three-of-four-over-50"),
        pytest.param(1, 10, 20, True, id="two-of-ten-exactly-20"),
        pytest.param(2, 10, 20, False, id="three-of-ten-over-20"),
        pytest.param(1, 3, 100 / 3 * 2, True, id="fractional-percent"),
    ],
)
def test_may_eject(ejected: int, total: int, percent: float, allowed: bool) -> None:
    assert may_eject(ejected, total, percent) is allowed


# ---- availability -----------------------------------------------------------------------------


def ejected_state(until_from: float = 0.0) -> OutlierState:
    state = OutlierState(POLICY)
    fail(state, 5, until_from)
    return state


def test_all_instances_available_by_default() -> None:
    avail = Availability.fresh(3)
    assert avail.available(0.0) == (0, 1, 2)
    assert not avail.down(0.0)
    assert avail.next_change(0.0) is None


@pytest.mark.parametrize(
    ("active", "ejected", "available"),
    [
        pytest.param([True, True, True], [], (0, 1, 2), id="all-serving"),
        pytest.param([True, False, True], [], (0, 2), id="active-down-excluded"),
        pytest.param([True, True, True], [1], (0, 2), id="ejected-excluded"),
        pytest.param([False, True, True], [2], (1,), id="active-down-and-ejected"),
        pytest.param([False, True, True], [1, 2], (1, 2), id="panic-when-ejection-would-empty"),
        pytest.param([True, True, True], [0, 1, 2], (0, 1, 2), id="panic-all-ejected"),
        pytest.param([False, False, False], [], (), id="all-active-down"),
        pytest.param([False, False, True], [], (2,), id="one-left"),
    ],
)
def test_available(active: list[bool], ejected: list[int], available: tuple[int, ...]) -> None:
    outliers = [ejected_state() if i in ejected else OutlierState(POLICY) for i in range(3)]
    avail = Availability(outliers, active)
    assert avail.available(10.0) == available
    assert avail.down(10.0) is (available == ())
    assert avail.available(30.0) == tuple(i for i in range(3) if active[i])  # ejections over


def test_record_enforces_max_ejection_percent_and_ejects_when_room_frees() -> None:
    avail = Availability.fresh(2)
    assert [avail.record(0, False, 0.0) for _ in range(5)][-1] is DOWN
    assert [avail.record(1, False, 1.0) for _ in range(8)] == [None] * 8  # 2 of 2 would be 100 %
    assert avail.available(1.0) == (1,)
    assert avail.next_change(1.0) == 30.0
    assert avail.record(1, False, 30.0) is DOWN  # instance 0 is back: room for one
    assert avail.available(30.0) == (0,)


def test_sole_instance_is_never_ejected() -> None:
    avail = Availability.fresh(1)
    assert [avail.record(0, False, 0.0) for _ in range(20)] == [None] * 20
    assert avail.available(0.0) == (0,)


def test_set_active() -> None:
    avail = Availability.fresh(2)
    avail.set_active(0, False)
    assert avail.available(0.0) == (1,)
    avail.set_active(1, False)
    assert avail.down(0.0)
    avail.set_active(0, True)
    assert avail.available(0.0) == (0,)


@pytest.mark.parametrize(
    ("outliers", "active", "message"),
    [
        pytest.param([], None, "at least one", id="empty"),
        pytest.param([OutlierState(POLICY)], [True, True], "one entry per instance", id="length-mismatch"),
        pytest.param(
            [OutlierState(POLICY), OutlierState(OutlierPolicy(consecutive_failures=2))],
            None,
            "one outlier policy",
            id="mixed-policies",
        ),
    ],
)
def test_availability_rejects(outliers: list[OutlierState], active: list[bool] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Availability(outliers, active)
