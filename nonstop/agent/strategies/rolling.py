"""Rolling: replace ``run.instances`` one batch at a time within ``max_surge`` / ``max_unavailable``.

The batches come from the pure planner (``plan.py``). Each batch: start new
instances on free ports and wait until they are healthy, add them to the
route, then take old ones out of the route, drain and stop them.

Routing while two releases serve at once: the ``Split`` has one release per
side, so the old release is the stable side and the new one the canary side,
with the canary weight proportional to the instance counts (each instance
gets about the same share). The proportion only grows during a rollout, and
the canary is listed first, so with ``sticky`` on a user moves from the old
version to the new one at most once. At the end the new release is the only
(stable) side.

A new instance that fails its health check stops the rollout (the fleet
stops it; it never got traffic). ``undo`` then rolls back with the same
planner, roles swapped: stable-release instances are started again (within
the same surge and unavailability limits) and the new ones drained and
stopped, so capacity stays at or above the floor throughout.
"""

from __future__ import annotations

import logging

from nonstop.agent.strategies import Strategy
from nonstop.agent.strategies import watch as wm
from nonstop.agent.strategies.run import Run, default_undo
from nonstop.agent.strategies.watcher import Watcher, baseline
from nonstop.agent.fleet import Fleet
from nonstop.agent.store import InstanceRecord
from nonstop.agent.strategies import plan as planner
from nonstop.agent.traffic import Side, Split
from nonstop.config import RollingStrategy
from nonstop.errors import UsageError

log = logging.getLogger("nonstop.agent")


def _limits(r: Run) -> tuple[int, int, int]:
    s = r.cfg.strategy
    n = r.cfg.run.instances
    if isinstance(s, RollingStrategy):
        surge, unavailable = planner.limits(n, s.max_surge, s.max_unavailable)
    else:  # `--strategy rolling` is refused without a rolling block; defaults as Kubernetes'
        surge, unavailable = planner.limits(n, 1, 0)
    return n, surge, unavailable


def _split(r: Run, old_release: str | None, old: list[InstanceRecord], new_release: str, new: list[InstanceRecord], sticky: bool) -> Split:
    """Both releases routed, weights proportional to their instance counts (new one listed first).

    An instance that supervision took out of rotation (unhealthy, being restarted) stays out
    until it is healthy again."""
    store = r.store

    def healthy(x: InstanceRecord) -> bool:
        cur = store.get_instance(x.id)
        return cur is None or cur.state == "healthy"

    old = [x for x in old if healthy(x)] or old
    new = [x for x in new if healthy(x)] or new
    new_side = Side(new_release, tuple(Fleet.addr(x) for x in new))
    if not old or old_release is None:
        return Split(stable=new_side, sticky=sticky)
    if not new:
        return Split(stable=Side(old_release, tuple(Fleet.addr(x) for x in old)), sticky=sticky)
    weight = min(99, max(1, round(100 * len(new) / (len(old) + len(new)))))
    return Split(
        stable=Side(old_release, tuple(Fleet.addr(x) for x in old)),
        canary=new_side,
        canary_weight=weight,
        sticky=sticky,
    )


def _only_abort(action: str) -> None:
    if action != "abort":
        raise UsageError("a rolling update cannot be paused or promoted: `nonstop abort` rolls it back")


class _Progress:
    """What ``status`` shows for a rolling update."""

    def __init__(self, n: int, surge: int, unavailable: int, batches: int) -> None:
        self.n, self.surge, self.unavailable, self.batches = n, surge, unavailable, batches
        self.batch = 0
        self.old = 0
        self.new = 0
        self.doing = "starting"
        self.direction = "forward"

    def status(self) -> dict:
        return {
            "rolling": {
                "instances": self.n,
                "max_surge": self.surge,
                "max_unavailable": self.unavailable,
                "floor": self.n - self.unavailable,
                "batch": self.batch,
                "batches": self.batches,
                "old": self.old,
                "new": self.new,
                "doing": self.doing,
                "direction": self.direction,
            }
        }


async def run(r: Run) -> None:
    n, surge, unavailable = _limits(r)
    sticky = r.traffic.split.sticky
    old = r.stable_instances()
    old_release = r.stable.id if r.stable else None
    batches = len(planner.schedule(n, surge, unavailable, old=len(old)))
    prog = _Progress(n, surge, unavailable, batches)
    prog.old = len(old)
    r.status_hook = prog.status
    r.check_control = _only_abort
    new: list[InstanceRecord] = []
    prog_start_old = len(old)
    # a rollback rolling back in batches is not watched: it returns to what served before
    a = r.cfg.strategy.analysis if isinstance(r.cfg.strategy, RollingStrategy) and r.strategy != "rollback" else None
    base = await baseline(r, old_release, a.baseline) if a is not None and old_release and old else None
    await r.emit(
        "plan",
        f"rolling {len(old)} → {n} instance(s) in {batches} batch(es): max_surge {surge}, max_unavailable {unavailable} "
        f"(at most {n + surge} running, at least {n - unavailable} serving)",
        batches=batches, max_surge=surge, max_unavailable=unavailable,
    )
    while (b := planner.next_batch(n, surge, unavailable, len(old), len(new))) is not None:
        prog.batch += 1
        what = ", ".join(x for x in (f"start {b.start} new" if b.start else "", f"retire {b.retire} old" if b.retire else "") if x)
        # "starting" until the new release serves: a failure before that has moved no traffic.
        moved = bool(new) or len(old) < prog_start_old
        await r.step("batch" if moved else "starting", f"batch {prog.batch}/{batches}: {what}", batch=prog.batch, batches=batches)
        if b.start:
            prog.doing = f"starting {b.start} instance(s) of {r.release.id}"
            started = await r.start_new(b.start)
            new += started
            prog.new = len(new)
            await r.traffic.set(_split(r, old_release, old, r.release.id, new, sticky))
            await r.emit(
                "switched",
                f"{', '.join(x.id for x in started)} in rotation ({len(new)} new, {len(old)} old serving)",
                release=r.release.id, new=len(new), old=len(old),
            )
            if a is not None and old:
                # the new instances' own figures decide whether the rollout goes on (a breach rolls back)
                prog.doing = f"watching batch {prog.batch}'s new instance(s)"
                w = Watcher(r, a, r.release.id, base, until_pass=True, label="batch_watch")
                await w.start()
                result = await w.run()
                if isinstance(result, wm.Breached):
                    raise w.failed(result)
                await r.emit("watch_passed", f"batch {prog.batch}: {result.reason}", release=r.release.id, batch=prog.batch)
        if b.retire:
            out, old = old[: b.retire], old[b.retire:]
            prog.old = len(old)
            prog.doing = f"retiring {', '.join(x.id for x in out)}"
            await r.traffic.set(_split(r, old_release, old, r.release.id, new, sticky))
            await r.retire(out, reason="replaced (rolling)")
    prog.doing = "done"
    await r.traffic.set(Split(stable=Side(r.release.id, tuple(Fleet.addr(x) for x in new)), sticky=sticky))
    await r.emit("switched", f"100% of traffic on {r.release.id} ({len(new)} instance(s))", release=r.release.id)


async def undo(r: Run) -> None:
    """Roll back within the same limits: start stable instances again, drain and stop the new ones."""
    if r.stable is None:
        await default_undo(r)
        return
    n, surge, unavailable = _limits(r)
    d = r
    sticky = d.traffic.split.sticky
    routed = d.traffic.split.routed_addrs
    old = [x for x in d.fleet.running(r.stable.id) if Fleet.addr(x) in routed and await d.fleet.alive(x)]
    new = [x for x in d.fleet.running(r.release.id) if Fleet.addr(x) in routed and await d.fleet.alive(x)]
    prog = _Progress(n, surge, unavailable, len(planner.schedule(n, surge, unavailable, old=len(new))) if new else 0)
    prog.direction = "back"
    prog.old, prog.new = len(old), len(new)
    r.status_hook = prog.status
    await r.emit("rolling_back", f"rolling back: {len(old)} {r.stable.id} and {len(new)} {r.release.id} instance(s) serving")
    # Roles swapped: the new release's instances are retired, the stable ones started.
    while (b := planner.next_batch(n, surge, unavailable, len(new), len(old))) is not None:
        prog.batch += 1
        if b.start:
            prog.doing = f"starting {b.start} instance(s) of {r.stable.id}"
            started = await r.start_stable(b.start)
            old += started
            prog.old = len(old)
            await d.traffic.set(_split(r, r.stable.id, old, r.release.id, new, sticky))
        if b.retire:
            out, new = new[: b.retire], new[b.retire:]
            prog.new = len(new)
            prog.doing = f"retiring {', '.join(x.id for x in out)}"
            await d.traffic.set(_split(r, r.stable.id, old, r.release.id, new, sticky))
            await r.retire(out, reason="rolled back")
    await d.traffic.set(Split(stable=Side(r.stable.id, tuple(Fleet.addr(x) for x in old)), sticky=sticky))
    await r.emit("switched", f"traffic back on {r.stable.id} ({len(old)} instance(s))", release=r.stable.id)
    # Anything of the new release still running (not routed: starting, unhealthy) stops too.
    rest = [x for x in d.fleet.running(r.release.id)]
    if rest:
        await r.retire(rest, reason="rolled back")
    prog.doing = "done"


STRATEGY = Strategy("rolling", run, undo)
