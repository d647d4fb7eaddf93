"""The rolling update planner: pure. Counts in, the next batch out.

Kubernetes semantics for a set of ``n`` instances:

- ``max_surge``: at most ``n + surge`` instances run at once (old, new,
  starting all count), so at most that many ports are used;
- ``max_unavailable``: at least ``n - unavailable`` healthy, routed
  instances at every moment (an instance being started does not count until
  it is healthy; one being drained no longer counts).

A batch is: start ``start`` new instances and wait until they are healthy,
then take ``retire`` old ones out of the route, drain and stop them. Both
numbers are the largest the two limits allow, so the rollout takes as few
batches as it can. The same planner rolls *back* (the roles swapped: the
stable release's instances are the "new" ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from nonstop.config import resolve_count

__all__ = ["Batch", "StuckPlan", "limits", "next_batch", "schedule"]


class StuckPlan(ValueError):
    """Neither a start nor a retirement is allowed (max_surge and max_unavailable both 0)."""


@dataclass(frozen=True)
class Batch:
    start: int  # new instances to start (then wait healthy, then route)
    retire: int  # old instances to take out of the route, drain and stop (after the start)


def limits(n: int, max_surge: int | str, max_unavailable: int | str) -> tuple[int, int]:
    """(surge, unavailable) as counts: percentages of ``n``, surge rounded up, unavailable down."""
    surge = resolve_count(max_surge, n, round_up=True)
    unavailable = min(resolve_count(max_unavailable, n, round_up=False), n)
    if surge == 0 and unavailable == 0:
        raise StuckPlan("max_surge and max_unavailable are both 0: a rolling update could never make progress")
    return surge, unavailable


def next_batch(n: int, surge: int, unavailable: int, old: int, new: int) -> Batch | None:
    """The next batch given ``old`` healthy old instances and ``new`` healthy new ones; None when done."""
    if old <= 0 and new >= n:
        return None
    start = max(0, min(n - new, n + surge - old - new))
    retire = max(0, min(old, old + new + start - (n - unavailable)))
    if start == 0 and retire == 0:
        raise StuckPlan(f"no batch possible with {old} old and {new} new of {n} (surge {surge}, unavailable {unavailable})")
    return Batch(start, retire)


def schedule(n: int, surge: int, unavailable: int, old: int | None = None) -> list[Batch]:
    """Every batch of a rollout from ``old`` (default ``n``) old instances, assuming each start succeeds."""
    old = n if old is None else old
    new = 0
    out: list[Batch] = []
    while (b := next_batch(n, surge, unavailable, old, new)) is not None:
        out.append(b)
        new += b.start
        old -= b.retire
    return out
