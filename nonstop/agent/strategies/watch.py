"""Watching a release after it took traffic: pure decisions, no I/O.

Blue-green watches the new color for ``analysis.watch`` after the switch;
rolling watches each batch's new instances before the next batch. Both feed
this machine with analysis verdicts (``analysis.watch_verdict``) every
``interval``:

- ``failure_limit`` failed verdicts → **breached** (the strategy switches back
  to the warm previous color, or rolls the batches back);
- blue-green (``until_pass`` false): the whole ``watch`` must pass without a
  breach; when it ends the watch **passed** — "not judged" when no verdict was
  conclusive (too little traffic is never a failure);
- rolling (``until_pass`` true): the first passing verdict ends the batch's
  watch; at ``watch`` without one it passed, not judged;
- the user: ``promote`` ends the watch as passed, ``abort`` as breached.

Times are epoch seconds, so a restarted agent goes on with the same window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Union

__all__ = ["WatchPlan", "WatchState", "Keep", "Passed", "Breached", "begin", "decide", "observe", "control"]


@dataclass(frozen=True)
class WatchPlan:
    watch: float  # seconds
    failure_limit: int = 2
    until_pass: bool = False


@dataclass(frozen=True)
class WatchState:
    started: float
    failures: int = 0
    passes: int = 0
    inconclusive: int = 0
    ended: Literal["passed", "breached", "aborted"] | None = None
    reason: str = ""


@dataclass(frozen=True)
class Keep:
    """Go on watching until ``until`` (the next input may come sooner)."""

    until: float


@dataclass(frozen=True)
class Passed:
    reason: str


@dataclass(frozen=True)
class Breached:
    reason: str
    by_user: bool = False  # `nonstop abort` during the watch


Action = Union[Keep, Passed, Breached]


def begin(now: float) -> WatchState:
    return WatchState(started=now)


def decide(plan: WatchPlan, state: WatchState, now: float) -> Action:
    if state.ended in ("breached", "aborted"):
        return Breached(state.reason, by_user=state.ended == "aborted")
    if state.ended == "passed":
        return Passed(state.reason)
    end = state.started + plan.watch
    if now >= end:
        if state.passes or state.failures:
            return Passed(f"watched {plan.watch:g}s: {state.passes} passing, {state.failures} failed check(s)")
        return Passed(f"watched {plan.watch:g}s without enough traffic to judge ({state.inconclusive} inconclusive check(s)): not judged")
    return Keep(end)


def observe(plan: WatchPlan, state: WatchState, verdict: str, now: float, summary: str = "") -> WatchState:
    """Count one verdict (``pass`` / ``fail`` / ``inconclusive``)."""
    if state.ended is not None:
        return state
    at = f"+{now - state.started:.1f}s"
    if verdict == "fail":
        failures = state.failures + 1
        if failures >= plan.failure_limit:
            return replace(state, failures=failures, ended="breached",
                           reason=f"{summary} at {at} ({failures} failed check(s), failure_limit {plan.failure_limit})")
        return replace(state, failures=failures)
    if verdict == "pass":
        state = replace(state, passes=state.passes + 1)
        if plan.until_pass:
            return replace(state, ended="passed", reason=f"passed at {at}: {summary}")
        return state
    if verdict == "inconclusive":
        return replace(state, inconclusive=state.inconclusive + 1)
    raise ValueError(f"unknown verdict {verdict!r}")


def control(state: WatchState, action: str, now: float) -> WatchState:
    """``promote`` (and ``promote_full``) end the watch as passed; ``abort`` as breached. Others: no change."""
    if state.ended is not None:
        return state
    if action in ("promote", "promote_full"):
        return replace(state, ended="passed", reason=f"watch ended by the user at +{now - state.started:.1f}s")
    if action == "abort":
        return replace(state, ended="aborted", reason=f"aborted by the user during the watch at +{now - state.started:.1f}s")
    return state
