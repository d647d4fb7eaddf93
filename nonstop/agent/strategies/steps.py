"""The canary step machine: pure decisions, no I/O.

``CanaryState`` is where a rollout stands (step, weight, phase, timers,
analysis counts). Three pure functions move it:

- ``decide(plan, state, now)`` → ``(state, action)``: what the driver does next
  (``SetWeight``, ``Wait``, ``Finish``, ``RollBack``, ``Abort``). The driver
  performs the action and calls ``decide`` again; after a ``Wait`` it calls it
  again when the deadline passes or an input arrives.
- ``control(plan, state, action, now)`` → state: a user's ``promote`` /
  ``promote_full`` / ``abort`` / ``pause`` / ``resume``, looked up in
  ``CONTROL_TABLE``. A move the table does not allow raises ``IllegalControl``
  (a ``UsageError``: the user asked for something that makes no sense now;
  nothing changes).
- ``observe(plan, state, verdict, now, reason)`` → state: an analysis verdict
  (``pass`` / ``fail`` / ``inconclusive``).

Rules (what the tests pin down):

- A step's ``weight`` is applied first (``SetWeight``); its pause timer starts
  when the weight is applied.
- A timed pause ends when its time is up **and** the step has had at least
  one passing analysis, if the canary can receive traffic at all (weight > 0,
  or match rules). Until then the phase is ``waiting_analysis``: too little
  traffic is inconclusive, never a pass. A step without a pause moves on at
  once (the user asked for no observation time).
- ``pause: manual`` waits for ``promote``; the analysis keeps running (and can
  still roll back), but a pass is not required: the user decides.
- ``promote`` skips what is left of the current step (its pause and its
  analysis gate) and, from ``paused_user``, also ends the user's hold.
  ``promote_full`` jumps to 100% from any live phase.
- ``pause`` holds the rollout (the pause timer stops; analysis keeps running,
  failures still roll back). ``resume`` continues where it was held, with
  the timer's remaining time intact.
- ``failure_limit`` counts failed analyses over the whole rollout (like Argo
  Rollouts' failureLimit); passes do not reset it.
- ``progress_deadline``: a step that needs a passing analysis and has had no
  conclusive verdict (pass or fail) for that long — too little traffic reached
  the canary — is rolled back, the reason naming the figures of the last
  inconclusive analysis. Never an endless wait. The clock starts when the
  step's weight is applied, restarts at each conclusive verdict, and stops
  while the user holds the rollout; a manual pause has no deadline (the user
  decides).
- Finished states (promoted, aborted, rolled_back) accept no control;
  late verdicts in them are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol, Sequence, Union

from nonstop.errors import UsageError
from nonstop.names import STEER_ACTIONS

__all__ = [
    "PROGRESSING",
    "WAITING_ANALYSIS",
    "PAUSED_MANUAL",
    "PAUSED_USER",
    "PROMOTED",
    "ABORTED",
    "ROLLED_BACK",
    "PHASES",
    "FINISHED",
    "ACTIONS",
    "CONTROL_TABLE",
    "IllegalControl",
    "StepLike",
    "Plan",
    "CanaryState",
    "SetWeight",
    "Wait",
    "Finish",
    "RollBack",
    "Abort",
    "Action",
    "start",
    "decide",
    "control",
    "observe",
    "waiting_for",
]

PROGRESSING = "progressing"  # applying a step's weight or inside a timed pause
WAITING_ANALYSIS = "waiting_analysis"  # timed pause over; waiting for a passing analysis
PAUSED_MANUAL = "paused_manual"  # at a `pause: manual` step, waiting for promote
PAUSED_USER = "paused_user"  # held by `nonstop pause`
PROMOTED = "promoted"
ABORTED = "aborted"
ROLLED_BACK = "rolled_back"

PHASES = (PROGRESSING, WAITING_ANALYSIS, PAUSED_MANUAL, PAUSED_USER, PROMOTED, ABORTED, ROLLED_BACK)
FINISHED = frozenset({PROMOTED, ABORTED, ROLLED_BACK})
LIVE = tuple(p for p in PHASES if p not in FINISHED)
ACTIONS = STEER_ACTIONS


class IllegalControl(UsageError):
    """A control action that the rollout's current phase does not allow; nothing changed."""


class StepLike(Protocol):
    weight: int | None
    pause: float | str | None


@dataclass(frozen=True)
class Plan:
    """What the machine needs from the config: the steps, the failure limit, whether match rules exist."""

    steps: Sequence[StepLike]
    failure_limit: int = 2
    has_match: bool = False
    progress_deadline: float | None = None

    @property
    def count(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class CanaryState:
    """Where a canary rollout stands. Times are the driver's clock (monotonic seconds)."""

    step: int = 0  # index into plan.steps; == len(steps) once every step is done
    weight: int = 0  # the weight applied (the driver applies each SetWeight before deciding again)
    phase: str = PROGRESSING
    step_started: float = 0.0  # the current step's weight took effect (its pause timer starts here)
    pause_until: float | None = None  # deadline of the current timed pause, once known
    held_from: str | None = None  # the phase `resume` goes back to
    held_at: float | None = None  # when `pause` held the rollout
    passes: int = 0  # passing analyses in the current step
    failures: int = 0  # failed analyses in the whole rollout
    reason: str = ""  # why it finished (rolled back / aborted / promoted)
    evidence_since: float = 0.0  # the progress_deadline clock: step start or the last conclusive verdict
    note: str = ""  # the last inconclusive verdict's figures (for the progress_deadline reason)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def paused(self) -> bool:
        """True while the deployment shows as ``paused`` (manual step or user hold)."""
        return self.phase in (PAUSED_MANUAL, PAUSED_USER)


# -- actions (what the driver does next) -------------------------------------------
@dataclass(frozen=True)
class SetWeight:
    weight: int


@dataclass(frozen=True)
class Wait:
    """Wait until ``until`` (None: until an input: a control action or a verdict)."""

    until: float | None
    waiting_for: str
    kind: Literal["pause", "analysis", "manual", "user"]


@dataclass(frozen=True)
class Finish:
    """100%: the canary becomes the stable release."""

    reason: str = ""


@dataclass(frozen=True)
class RollBack:
    reason: str


@dataclass(frozen=True)
class Abort:
    reason: str


Action = Union[SetWeight, Wait, Finish, RollBack, Abort]


def start(now: float) -> CanaryState:
    """The state before the first step: canary at 0%."""
    return CanaryState(step_started=now, evidence_since=now)


def _gated(plan: Plan, state: CanaryState) -> bool:
    """A timed pause needs a passing analysis when the canary can receive traffic."""
    return state.weight > 0 or plan.has_match


def _advance(state: CanaryState, now: float) -> CanaryState:
    return replace(
        state, step=state.step + 1, phase=PROGRESSING, step_started=now, pause_until=None,
        held_from=None, held_at=None, passes=0, evidence_since=now, note="",
    )


def _deadline(plan: Plan, state: CanaryState) -> float | None:
    """When the progress_deadline runs out for this step, or None when it does not apply now."""
    if plan.progress_deadline is None or state.phase not in (PROGRESSING, WAITING_ANALYSIS):
        return None
    if state.passes > 0 or not _gated(plan, state) or state.step >= len(plan.steps):
        return None
    st = plan.steps[state.step]
    if st.pause is None or st.pause == "manual":
        return None  # no gate: the step moves on at once, or the user decides
    return state.evidence_since + plan.progress_deadline


def _expired(plan: Plan, state: CanaryState, now: float) -> CanaryState | None:
    end = _deadline(plan, state)
    if end is None or now < end:
        return None
    why = (
        f"no conclusive analysis for {_secs(plan.progress_deadline)} at {state.weight}% "
        f"(progress_deadline {_secs(plan.progress_deadline)})"
    )
    return replace(state, phase=ROLLED_BACK, reason=f"{why}: {state.note}" if state.note else why)


def _secs(s: float | None) -> str:
    s = s or 0.0
    return f"{s / 60:g}m" if s >= 120 and s % 60 == 0 else f"{s:g}s"


def decide(plan: Plan, state: CanaryState, now: float) -> tuple[CanaryState, Action]:
    """The next action for ``state`` at ``now``, and the state once the driver has done it."""
    for _ in range(len(plan.steps) + 2):  # each pass either returns or moves one step on
        if state.phase == PROMOTED:
            return state, Finish(state.reason)
        if state.phase == ROLLED_BACK:
            return state, RollBack(state.reason)
        if state.phase == ABORTED:
            return state, Abort(state.reason)
        if state.phase == PAUSED_USER:
            return state, Wait(None, waiting_for(plan, state, now), "user")
        if state.phase == PAUSED_MANUAL:
            return state, Wait(None, waiting_for(plan, state, now), "manual")
        expired = _expired(plan, state, now)
        if expired is not None:
            return expired, RollBack(expired.reason)
        if state.phase == WAITING_ANALYSIS:
            if state.passes == 0:
                return state, Wait(_deadline(plan, state), waiting_for(plan, state, now), "analysis")
            state = _advance(state, now)
            continue
        # PROGRESSING
        if state.step >= len(plan.steps):
            state = replace(state, phase=PROMOTED, weight=100, reason=state.reason or "all steps passed")
            return state, Finish(state.reason)
        st = plan.steps[state.step]
        if st.weight is not None and st.weight != state.weight:
            state = replace(state, weight=st.weight, step_started=now, pause_until=None, passes=0,
                            evidence_since=now, note="")
            return state, SetWeight(st.weight)
        if st.pause is None:
            state = _advance(state, now)
            continue
        if st.pause == "manual":
            state = replace(state, phase=PAUSED_MANUAL)
            return state, Wait(None, waiting_for(plan, state, now), "manual")
        if state.pause_until is None:
            state = replace(state, pause_until=state.step_started + float(st.pause))
        if now < state.pause_until:
            end = _deadline(plan, state)
            return state, Wait(state.pause_until if end is None else min(end, state.pause_until),
                               waiting_for(plan, state, now), "pause")
        if _gated(plan, state) and state.passes == 0:
            state = replace(state, phase=WAITING_ANALYSIS)
            return state, Wait(_deadline(plan, state), waiting_for(plan, state, now), "analysis")
        state = _advance(state, now)
    raise AssertionError("step machine did not settle")  # pragma: no cover


# -- control actions: the transition table ----------------------------------------------
# (phase, action) -> effect. Effects: "next" (skip the rest of this step), "full" (100% now),
# "abort", "hold" (user pause), "release" (resume), or "error: message" (IllegalControl).
_DONE = "error: the deployment has already finished ({phase})"
CONTROL_TABLE: dict[tuple[str, str], str] = {
    **{(p, "promote"): "next" for p in LIVE},
    **{(p, "promote_full"): "full" for p in LIVE},
    **{(p, "abort"): "abort" for p in LIVE},
    (PROGRESSING, "pause"): "hold",
    (WAITING_ANALYSIS, "pause"): "hold",
    (PAUSED_MANUAL, "pause"): "hold",
    (PAUSED_USER, "pause"): "error: the rollout is already paused (`nonstop resume` goes on)",
    (PROGRESSING, "resume"): "error: the rollout is not paused",
    (WAITING_ANALYSIS, "resume"): "error: the rollout is not paused (it waits for a passing analysis; `nonstop promote` skips it)",
    (PAUSED_MANUAL, "resume"): "error: the rollout waits at a manual step: use `nonstop promote`",
    (PAUSED_USER, "resume"): "release",
    **{(p, a): _DONE for p in FINISHED for a in ACTIONS},
}


def control(plan: Plan, state: CanaryState, action: str, now: float) -> CanaryState:
    """Apply a user's control action; ``IllegalControl`` (and no change) when the table refuses it."""
    effect = CONTROL_TABLE.get((state.phase, action))
    if effect is None:
        raise IllegalControl(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if effect.startswith("error: "):
        raise IllegalControl(effect[len("error: "):].format(phase=state.phase), detail={"phase": state.phase, "action": action})
    where = f"step {min(state.step + 1, plan.count)}/{plan.count} at {state.weight}%"
    if effect == "abort":
        return replace(state, phase=ABORTED, reason=f"aborted by the user ({where})")
    if effect == "full":
        return replace(state, phase=PROMOTED, weight=100, reason=f"promoted to 100% by the user ({where})")
    if effect == "next":
        return _advance(state, now)
    if effect == "hold":
        return replace(state, phase=PAUSED_USER, held_from=state.phase, held_at=now)
    if effect == "release":
        held = now - (state.held_at if state.held_at is not None else now)
        return replace(
            state,
            phase=state.held_from or PROGRESSING,
            held_from=None,
            held_at=None,
            # the pause timer (and the progress deadline) do not run while the user holds the rollout
            step_started=state.step_started + held,
            pause_until=None if state.pause_until is None else state.pause_until + held,
            evidence_since=state.evidence_since + held,
        )
    raise AssertionError(effect)  # pragma: no cover


def observe(
    plan: Plan, state: CanaryState, verdict: Literal["pass", "fail", "inconclusive"], now: float, reason: str = ""
) -> CanaryState:
    """Count an analysis verdict. ``failure_limit`` failures → rolled back."""
    if state.finished:
        return state
    if verdict == "pass":
        state = replace(state, passes=state.passes + 1, evidence_since=now, note="")
        if state.phase == WAITING_ANALYSIS:
            state = replace(state, phase=PROGRESSING)
        return state
    if verdict == "fail":
        failures = state.failures + 1
        if failures >= plan.failure_limit:
            why = f"analysis failed {failures} time(s) (failure_limit {plan.failure_limit})"
            return replace(state, failures=failures, phase=ROLLED_BACK, reason=f"{why}: {reason}" if reason else why)
        return replace(state, failures=failures, evidence_since=now, note="")
    if verdict == "inconclusive":
        state = replace(state, note=reason)
        return _expired(plan, state, now) or state
    raise ValueError(f"unknown verdict {verdict!r}")


def waiting_for(plan: Plan, state: CanaryState, now: float) -> str:
    """What the rollout waits for, in words (status and events)."""
    n = plan.count
    at = f"step {min(state.step + 1, n)}/{n}"
    if state.phase == PAUSED_USER:
        return f"`nonstop resume` (paused by the user at {at})"
    if state.phase == PAUSED_MANUAL:
        return f"`nonstop promote` (manual pause at {at})"
    if state.phase == WAITING_ANALYSIS:
        return f"a passing analysis before leaving {at}"
    if state.phase == PROGRESSING and state.pause_until is not None and now < state.pause_until:
        return f"pause of {at} ends in {state.pause_until - now:.0f}s"
    if state.finished:
        return ""
    return f"{at}"
