"""The canary step machine as pure functions: given state, inputs and `now`, the next action."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nonstop.agent.strategies import steps as sm
from nonstop.agent.strategies.steps import (
    ABORTED,
    ACTIONS,
    CONTROL_TABLE,
    FINISHED,
    PAUSED_MANUAL,
    PAUSED_USER,
    PHASES,
    PROGRESSING,
    PROMOTED,
    ROLLED_BACK,
    WAITING_ANALYSIS,
    Abort,
    CanaryState,
    Finish,
    IllegalControl,
    Plan,
    RollBack,
    SetWeight,
    Wait,
)
from nonstop.config import Step
from nonstop.errors import UsageError

STEPS = [Step(weight=10, pause="30s"), Step(weight=50, pause="1m"), Step(pause="manual")]


def plan(steps=STEPS, failure_limit=2, has_match=False) -> Plan:
    return Plan(steps=steps, failure_limit=failure_limit, has_match=has_match)


def run_until_wait(p: Plan, s: CanaryState, now: float) -> tuple[CanaryState, list]:
    """Drive ``decide`` like the driver does: perform SetWeight at once, stop at anything else."""
    actions = []
    while True:
        s, a = sm.decide(p, s, now)
        actions.append(a)
        if not isinstance(a, SetWeight):
            return s, actions


# -- the happy path -------------------------------------------------------------------
def test_full_rollout_with_passing_analysis():
    p = plan()
    s, acts = run_until_wait(p, sm.start(0.0), 0.0)
    assert acts == [SetWeight(10), Wait(30.0, "pause of step 1/3 ends in 30s", "pause")]
    assert s.weight == 10 and s.phase == PROGRESSING
    s = sm.observe(p, s, "pass", 5.0)
    s, acts = run_until_wait(p, s, 29.9)
    assert isinstance(acts[-1], Wait) and acts[-1].until == 30.0
    s, acts = run_until_wait(p, s, 30.0)
    assert acts == [SetWeight(50), Wait(90.0, "pause of step 2/3 ends in 60s", "pause")]
    assert s.step == 1 and s.passes == 0  # passes are per step
    s = sm.observe(p, s, "pass", 40.0)
    s, acts = run_until_wait(p, s, 90.0)
    assert acts == [Wait(None, "`nonstop promote` (manual pause at step 3/3)", "manual")]
    assert s.phase == PAUSED_MANUAL and s.paused
    s = sm.control(p, s, "promote", 100.0)
    s, acts = run_until_wait(p, s, 100.0)
    assert acts == [Finish("all steps passed")]
    assert s.phase == PROMOTED and s.weight == 100


def test_pause_timer_starts_when_the_weight_is_applied():
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 7.0)
    assert s.step_started == 7.0 and s.pause_until == 37.0


def test_timed_pause_waits_for_a_passing_analysis():
    """Too little traffic is inconclusive, not a pass: the rollout waits past the pause."""
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.observe(p, s, "inconclusive", 10.0)
    s, acts = run_until_wait(p, s, 31.0)
    assert acts == [Wait(None, "a passing analysis before leaving step 1/3", "analysis")]
    assert s.phase == WAITING_ANALYSIS and s.weight == 10
    s = sm.observe(p, s, "inconclusive", 35.0)
    s, acts = run_until_wait(p, s, 35.0)
    assert s.phase == WAITING_ANALYSIS and acts[-1].kind == "analysis"
    s = sm.observe(p, s, "pass", 40.0)
    assert s.phase == PROGRESSING
    s, acts = run_until_wait(p, s, 40.0)
    assert acts[0] == SetWeight(50) and s.step_started == 40.0


def test_pass_before_the_deadline_is_enough():
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.observe(p, s, "pass", 1.0)
    s, acts = run_until_wait(p, s, 30.0)
    assert acts[0] == SetWeight(50)


def test_no_gate_at_weight_zero_without_match_rules():
    """A canary that cannot receive traffic could never pass: its pause is time only."""
    p = plan(steps=[Step(weight=0, pause=5), Step(weight=20, pause=5)])
    s, acts = run_until_wait(p, sm.start(0.0), 0.0)
    assert acts == [Wait(5.0, "pause of step 1/2 ends in 5s", "pause")]
    s, acts = run_until_wait(p, s, 5.0)
    assert acts[0] == SetWeight(20)


def test_gate_at_weight_zero_with_match_rules():
    p = plan(steps=[Step(weight=0, pause=5), Step(weight=20, pause=5)], has_match=True)
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s, acts = run_until_wait(p, s, 6.0)
    assert acts[-1].kind == "analysis"


def test_step_without_pause_moves_on_at_once():
    p = plan(steps=[Step(weight=10), Step(weight=30), Step(weight=60, pause=1)])
    s, acts = run_until_wait(p, sm.start(0.0), 0.0)
    assert acts == [SetWeight(10), SetWeight(30), SetWeight(60), Wait(1.0, "pause of step 3/3 ends in 1s", "pause")]


def test_step_with_same_weight_as_before_only_pauses():
    p = plan(steps=[Step(weight=10, pause=1), Step(pause="manual")])
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.observe(p, s, "pass", 0.5)
    s, acts = run_until_wait(p, s, 1.0)
    assert acts == [Wait(None, "`nonstop promote` (manual pause at step 2/2)", "manual")]
    assert s.weight == 10


def test_manual_pause_does_not_need_a_pass():
    p = plan(steps=[Step(weight=10, pause="manual")])
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.control(p, s, "promote", 1.0)
    assert sm.decide(p, s, 1.0)[1] == Finish("all steps passed")


def test_last_step_at_100_then_finish():
    p = plan(steps=[Step(weight=100, pause=1)])
    s, acts = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.observe(p, s, "pass", 0.5)
    s, acts = run_until_wait(p, s, 1.0)
    assert acts == [Finish("all steps passed")] and s.weight == 100


# -- analysis failures ---------------------------------------------------------------
def test_failure_limit_rolls_back_with_the_reason():
    p = plan(failure_limit=2)
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.observe(p, s, "fail", 5.0, "5xx 33%")
    assert s.phase == PROGRESSING and s.failures == 1
    s = sm.observe(p, s, "pass", 10.0)  # a pass does not reset the count
    s = sm.observe(p, s, "fail", 15.0, "5xx 40%")
    assert s.phase == ROLLED_BACK
    assert s.reason == "analysis failed 2 time(s) (failure_limit 2): 5xx 40%"
    assert sm.decide(p, s, 15.0)[1] == RollBack(s.reason)


def test_failures_count_across_steps_and_in_every_live_phase():
    p = plan(failure_limit=3)
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.observe(p, s, "fail", 1.0)
    s = sm.control(p, s, "pause", 2.0)
    s = sm.observe(p, s, "fail", 3.0)  # a held rollout is still watched
    assert s.phase == PAUSED_USER and s.failures == 2
    s = sm.control(p, s, "resume", 4.0)
    s = sm.control(p, s, "promote", 5.0)
    s = sm.observe(p, s, "fail", 6.0)
    assert s.phase == ROLLED_BACK


def test_failure_limit_one():
    p = plan(failure_limit=1)
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    assert sm.observe(p, s, "fail", 1.0).phase == ROLLED_BACK


def test_verdicts_after_the_end_are_ignored():
    p = plan()
    for phase in FINISHED:
        s = CanaryState(phase=phase, reason="x")
        for v in ("pass", "fail", "inconclusive"):
            assert sm.observe(p, s, v, 1.0) == s


def test_unknown_verdict():
    with pytest.raises(ValueError):
        sm.observe(plan(), CanaryState(), "maybe", 0.0)  # type: ignore[arg-type]


# -- every control action in every phase ----------------------------------------------------
def state_in(phase: str) -> CanaryState:
    """A state at step 1 (weight 10, 30s pause started at t=0), in ``phase``, at t=10."""
    base = CanaryState(step=0, weight=10, phase=PROGRESSING, step_started=0.0, pause_until=30.0, passes=0)
    if phase == PROGRESSING:
        return base
    if phase == WAITING_ANALYSIS:
        return replace(base, phase=WAITING_ANALYSIS)
    if phase == PAUSED_MANUAL:
        return replace(base, step=2, weight=50, phase=PAUSED_MANUAL, pause_until=None)
    if phase == PAUSED_USER:
        return replace(base, phase=PAUSED_USER, held_from=PROGRESSING, held_at=5.0)
    return replace(base, phase=phase, reason="done")


# (phase, action) -> expected phase afterwards, or an IllegalControl message fragment
EXPECTED = {
    (PROGRESSING, "promote"): PROGRESSING,
    (PROGRESSING, "promote_full"): PROMOTED,
    (PROGRESSING, "abort"): ABORTED,
    (PROGRESSING, "pause"): PAUSED_USER,
    (PROGRESSING, "resume"): "not paused",
    (WAITING_ANALYSIS, "promote"): PROGRESSING,
    (WAITING_ANALYSIS, "promote_full"): PROMOTED,
    (WAITING_ANALYSIS, "abort"): ABORTED,
    (WAITING_ANALYSIS, "pause"): PAUSED_USER,
    (WAITING_ANALYSIS, "resume"): "not paused",
    (PAUSED_MANUAL, "promote"): PROGRESSING,
    (PAUSED_MANUAL, "promote_full"): PROMOTED,
    (PAUSED_MANUAL, "abort"): ABORTED,
    (PAUSED_MANUAL, "pause"): PAUSED_USER,
    (PAUSED_MANUAL, "resume"): "use `nonstop promote`",
    (PAUSED_USER, "promote"): PROGRESSING,
    (PAUSED_USER, "promote_full"): PROMOTED,
    (PAUSED_USER, "abort"): ABORTED,
    (PAUSED_USER, "pause"): "already paused",
    (PAUSED_USER, "resume"): PROGRESSING,
    **{(p, a): "already finished" for p in FINISHED for a in ACTIONS},
}


def test_the_table_covers_every_phase_and_action():
    assert set(EXPECTED) == {(p, a) for p in PHASES for a in ACTIONS}
    assert set(CONTROL_TABLE) == set(EXPECTED)


@pytest.mark.parametrize("phase,action", sorted(EXPECTED))
def test_control(phase: str, action: str):
    p = plan()
    s = state_in(phase)
    want = EXPECTED[(phase, action)]
    if want not in PHASES:
        with pytest.raises(IllegalControl) as e:
            sm.control(p, s, action, 10.0)
        assert want in e.value.message
        assert isinstance(e.value, UsageError)  # the CLI shows it as a usage error (exit 2)
        return
    after = sm.control(p, s, action, 10.0)
    assert after.phase == want
    if action == "promote":
        assert after.step == s.step + 1 and after.step_started == 10.0 and after.passes == 0
        assert after.held_from is None
    if action == "promote_full":
        assert after.weight == 100 and "promoted to 100% by the user" in after.reason
        assert sm.decide(p, after, 10.0)[1] == Finish(after.reason)
    if action == "abort":
        assert after.reason.startswith("aborted by the user (step ")
        assert isinstance(sm.decide(p, after, 10.0)[1], Abort)
    if action == "pause":
        assert after.held_from == phase and after.held_at == 10.0
        assert sm.decide(p, after, 10.0)[1].kind == "user"
    if action == "resume":
        assert after.phase == s.held_from and after.held_from is None


def test_unknown_action():
    with pytest.raises(IllegalControl, match="unknown action"):
        sm.control(plan(), CanaryState(), "explode", 0.0)


def test_pause_stops_the_timer_and_resume_keeps_the_remaining_time():
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)  # 10%, pause until 30
    s = sm.observe(p, s, "pass", 1.0)
    s = sm.control(p, s, "pause", 10.0)
    s, acts = run_until_wait(p, s, 100.0)  # long after the deadline: still held
    assert acts == [Wait(None, "`nonstop resume` (paused by the user at step 1/3)", "user")]
    s = sm.control(p, s, "resume", 100.0)
    assert s.pause_until == 120.0  # 20s were left when paused
    s, acts = run_until_wait(p, s, 119.0)
    assert acts[-1] == Wait(120.0, "pause of step 1/3 ends in 1s", "pause")
    s, acts = run_until_wait(p, s, 120.0)
    assert acts[0] == SetWeight(50)


def test_pause_while_waiting_for_analysis_then_resume():
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s, _ = run_until_wait(p, s, 31.0)
    assert s.phase == WAITING_ANALYSIS
    s = sm.control(p, s, "pause", 32.0)
    s = sm.observe(p, s, "pass", 33.0)  # counted while held
    assert s.phase == PAUSED_USER
    s = sm.control(p, s, "resume", 40.0)
    s, acts = run_until_wait(p, s, 40.0)
    assert acts[0] == SetWeight(50)


def test_pause_at_manual_step_then_resume_returns_to_manual():
    p = plan()
    s = state_in(PAUSED_MANUAL)
    s = sm.control(p, s, "pause", 1.0)
    s = sm.control(p, s, "resume", 2.0)
    assert s.phase == PAUSED_MANUAL
    assert sm.decide(p, s, 2.0)[1].kind == "manual"


def test_promote_skips_the_pause_and_the_gate():
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.control(p, s, "promote", 3.0)
    s, acts = run_until_wait(p, s, 3.0)
    assert acts == [SetWeight(50), Wait(63.0, "pause of step 2/3 ends in 60s", "pause")]


def test_promote_at_the_last_step_finishes():
    p = plan(steps=[Step(weight=10, pause=60)])
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.control(p, s, "promote", 1.0)
    assert sm.decide(p, s, 1.0) == (replace(s, phase=PROMOTED, weight=100, reason="all steps passed"), Finish("all steps passed"))


def test_promote_from_user_pause_ends_the_hold():
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.control(p, s, "pause", 1.0)
    s = sm.control(p, s, "promote", 2.0)
    s, acts = run_until_wait(p, s, 2.0)
    assert acts[0] == SetWeight(50) and not s.paused


def test_abort_reason_names_the_step():
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.control(p, s, "abort", 1.0)
    assert sm.decide(p, s, 1.0)[1] == Abort("aborted by the user (step 1/3 at 10%)")


def test_illegal_control_changes_nothing():
    p = plan()
    s = state_in(PROGRESSING)
    with pytest.raises(IllegalControl):
        sm.control(p, s, "resume", 1.0)
    assert s == state_in(PROGRESSING)  # frozen: the caller keeps its state


def test_waiting_for_words():
    p = plan()
    assert sm.waiting_for(p, state_in(PROGRESSING), 10.0) == "pause of step 1/3 ends in 20s"
    assert sm.waiting_for(p, state_in(PROMOTED), 10.0) == ""


# -- progress_deadline (DESIGN §2: inconclusive is never an endless wait) ------------------------
def dplan(deadline=600.0, steps=STEPS):
    return Plan(steps=steps, failure_limit=2, progress_deadline=deadline)


def test_a_step_without_any_conclusive_analysis_is_rolled_back_at_the_deadline():
    p = dplan()
    s, acts = run_until_wait(p, sm.start(0.0), 0.0)
    # the pause of step 1 (30 s) ends first; the wait never extends past the deadline
    assert acts[-1] == Wait(30.0, "pause of step 1/3 ends in 30s", "pause")
    s = sm.observe(p, s, "inconclusive", 10.0, "canary received 0 requests in 10s (min_requests 50)")
    s, acts = run_until_wait(p, s, 31.0)
    assert s.phase == WAITING_ANALYSIS and acts[-1].until == 600.0  # woken at the deadline
    s = sm.observe(p, s, "inconclusive", 599.0, "canary received 3 requests in 599s (min_requests 50)")
    assert s.phase == WAITING_ANALYSIS
    s2 = sm.observe(p, s, "inconclusive", 600.0, "canary received 3 requests in 600s (min_requests 50)")
    assert s2.phase == ROLLED_BACK
    assert "progress_deadline 10m" in s2.reason and "at 10%" in s2.reason
    assert "canary received 3 requests in 600s (min_requests 50)" in s2.reason
    # without a verdict at all (stats unreadable), decide applies the deadline by itself
    s3, acts = run_until_wait(p, s, 600.0)
    assert s3.phase == ROLLED_BACK and isinstance(acts[-1], RollBack)
    assert "canary received 3 requests in 599s" in acts[-1].reason


def test_a_conclusive_verdict_restarts_the_deadline_and_a_pass_ends_it():
    p = dplan(100.0)
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.observe(p, s, "fail", 90.0, "5xx")  # conclusive: the clock restarts
    assert s.evidence_since == 90.0 and s.failures == 1
    s, acts = run_until_wait(p, s, 150.0)
    assert s.phase == WAITING_ANALYSIS and acts[-1].until == 190.0
    s = sm.observe(p, s, "pass", 160.0)
    s, acts = run_until_wait(p, s, 1000.0)  # passed: step 2 starts with a fresh clock
    assert s.step == 1 and s.weight == 50 and s.evidence_since == 1000.0


def test_the_deadline_stops_while_the_user_holds_and_never_applies_to_a_manual_step():
    p = dplan(100.0)
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.control(p, s, "pause", 50.0)
    s, acts = run_until_wait(p, s, 500.0)
    assert s.phase == PAUSED_USER and isinstance(acts[-1], Wait)
    s = sm.control(p, s, "resume", 500.0)  # held 450 s: the clock moves with it
    assert s.evidence_since == 450.0
    s, acts = run_until_wait(p, s, 549.0)
    assert s.phase == WAITING_ANALYSIS
    s, acts = run_until_wait(p, s, 550.0)
    assert s.phase == ROLLED_BACK
    # at a manual pause the user decides: no deadline
    m = dplan(10.0, steps=[Step(weight=10, pause="manual")])
    s, acts = run_until_wait(m, sm.start(0.0), 0.0)
    s = sm.observe(m, s, "inconclusive", 5000.0, "nothing")
    s, acts = run_until_wait(m, s, 9999.0)
    assert s.phase == PAUSED_MANUAL and acts[-1].until is None


def test_no_deadline_configured_waits_as_before():
    p = plan()
    s, _ = run_until_wait(p, sm.start(0.0), 0.0)
    s = sm.observe(p, s, "inconclusive", 1e6, "x")
    s, acts = run_until_wait(p, s, 1e7)
    assert s.phase == WAITING_ANALYSIS and acts[-1].until is None
