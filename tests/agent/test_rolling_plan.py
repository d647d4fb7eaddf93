"""The rolling planner as a pure function: surge and unavailability limits hold at every moment."""

from __future__ import annotations

import itertools

import pytest

from nonstop.agent.strategies.plan import Batch, StuckPlan, limits, next_batch, schedule


def test_one_at_a_time_with_surge_one():
    assert schedule(3, 1, 0) == [Batch(1, 1), Batch(1, 1), Batch(1, 1)]


def test_no_surge_retires_first():
    # surge 0, unavailable 1: take one old out, then start its replacement
    assert schedule(3, 0, 1) == [Batch(0, 1), Batch(1, 1), Batch(1, 1), Batch(1, 0)]


def test_surge_and_unavailable_together():
    assert schedule(3, 1, 1) == [Batch(1, 2), Batch(2, 1)]


def test_big_surge_is_blue_green():
    assert schedule(3, 3, 0) == [Batch(3, 3)]


def test_first_deploy_without_old_instances():
    assert schedule(3, 1, 0, old=0) == [Batch(3, 0)]


def test_limits_percentages_like_kubernetes():
    assert limits(4, "25%", "25%") == (1, 1)
    assert limits(3, "25%", "25%") == (1, 0)  # surge rounds up, unavailable rounds down
    assert limits(3, 1, 5) == (1, 3)  # never more unavailable than there are instances
    with pytest.raises(StuckPlan):
        limits(3, 0, 0)
    assert limits(3, "10%", "10%") == (1, 0)


def test_stuck_when_nothing_may_move():
    with pytest.raises(StuckPlan):
        next_batch(3, 0, 0, 3, 0)


@pytest.mark.parametrize("n,surge,unavailable", [
    (n, s, u) for n, s, u in itertools.product(range(1, 7), range(0, 4), range(0, 4)) if s or u
])
def test_invariants(n: int, surge: int, unavailable: int):
    """At every moment: running ≤ n + surge, healthy routed ≥ n − unavailable; ends with n new, 0 old."""
    unavailable = min(unavailable, n)
    old, new = n, 0
    floor = n - unavailable
    for _ in range(4 * n + 4):
        b = next_batch(n, surge, unavailable, old, new)
        if b is None:
            break
        # starting: the new ones hold ports but serve nothing yet
        assert old + new + b.start <= n + surge
        assert old + new >= floor
        new += b.start
        # retiring: taken out of the route (draining), so no longer capacity
        old -= b.retire
        assert old >= 0 and new <= n
        assert old + new >= floor
    else:
        pytest.fail("did not finish")
    assert (old, new) == (0, n)


def test_rolling_back_is_the_same_plan_with_roles_swapped():
    # a rollout of 3 (surge 1) failed at its third batch: 1 old, 2 new healthy.
    # Rolling back: the stable release's 1 instance is "new", the 2 new ones are "old".
    back = []
    old, new = 2, 1
    while (b := next_batch(3, 1, 0, old, new)) is not None:
        back.append(b)
        new += b.start
        old -= b.retire
    assert back == [Batch(1, 1), Batch(1, 1)]
