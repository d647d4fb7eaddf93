"""The pure reconcilers on status sequences (tests/kubernetes/fixtures: Deployment and pod JSON as the API
returns them): a good rollout, a stuck one (ProgressDeadlineExceeded), a crash-looping and an unpullable new
ReplicaSet, going back, a restart mid-rollout (the position as JSON), recovery decisions, the Lease verdicts
of a second operator, and the canary breach through the step machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nonstop.agent.kubernetes import lease as lk
from nonstop.agent.kubernetes import rollout as ro
from nonstop.agent.kubernetes import state as st
from nonstop.agent.kubernetes.observe import Pending, Ready, Stalled, Want, judge, observe_deployment, parse_time
from nonstop.agent.kubernetes.shapes import KRelease, first_deploy_shape
from nonstop.agent.strategies import steps as sm

from tests.kubernetes.kube import make_cfg

FIX = Path(__file__).parent / "fixtures"
V1 = KRelease("v1", "v1", "registry.example/roomescape:v1")
V2 = KRelease("v2", "v2", "registry.example/roomescape:v2")
T0 = 1_800_000_000.0


def sequence(name: str) -> list:
    return [observe_deployment(o["deployment"], o["pods"]) for o in json.loads((FIX / f"{name}.json").read_text())["observations"]]


def drive(cfg, plan, observations, *, pos=None, t=T0, step=2.0):
    """Feed ``observations`` one per call (after each Apply the next one); returns the actions and the position."""
    pos = pos or ro.Position(since=t)
    actions = []
    obs_iter = iter(observations)
    current = {}
    for _ in range(50):
        pos, action = ro.advance(cfg, plan, pos, current, t)
        actions.append(action)
        if isinstance(action, (ro.Done, ro.RolledBack, ro.Failed)):
            return actions, pos
        if isinstance(action, ro.Wait) or isinstance(action, ro.Apply):
            try:
                o = next(obs_iter)
                current = {o.name: o}
            except StopIteration:
                if isinstance(action, ro.Wait):
                    return actions, pos
        t += step
    raise AssertionError("did not finish")


def kinds(actions):
    return [type(a).__name__ for a in actions]


def test_a_good_rolling_update_applies_once_waits_and_is_done():
    cfg = make_cfg()
    plan = ro.plan_for(cfg, "rolling", V2, first_deploy_shape(cfg, V1))
    actions, pos = drive(cfg, plan, sequence("rolling-good"))
    assert kinds(actions) == ["Apply", "Wait", "Wait", "Wait", "Wait", "Done"]
    applied = actions[0].objects[0]
    assert applied["kind"] == "Deployment" and applied["spec"]["template"]["metadata"]["labels"]["nonstop.dev/release"] == "v2"
    whys = [a.why for a in actions if isinstance(a, ro.Wait)]
    assert "observe roomescape generation 2" in whys[0]
    assert "1 of 3 pods updated" in whys[1] and "1 old pod(s) still running" in whys[3]
    assert pos.finished == "done" and pos.traffic


def test_progress_deadline_exceeded_puts_the_previous_template_back():
    cfg = make_cfg()
    plan = ro.plan_for(cfg, "rolling", V2, first_deploy_shape(cfg, V1))
    actions, pos = drive(cfg, plan, sequence("rolling-stuck") + sequence("rolling-back"))
    assert kinds(actions) == ["Apply", "Wait", "Wait", "Wait", "Apply", "Wait", "RolledBack"]
    back = actions[4].objects[0]
    assert back["spec"]["template"]["metadata"]["labels"]["nonstop.dev/release"] == "v1"
    assert "ProgressDeadlineExceeded" in actions[-1].reason and "timed out progressing" in actions[-1].reason


def test_a_crash_looping_new_replicaset_is_rolled_back_without_waiting_for_the_deadline():
    cfg = make_cfg()
    plan = ro.plan_for(cfg, "rolling", V2, first_deploy_shape(cfg, V1))
    actions, pos = drive(cfg, plan, sequence("rolling-crashloop") + sequence("rolling-back"))
    assert kinds(actions) == ["Apply", "Wait", "Wait", "Wait", "Apply", "Wait", "RolledBack"]
    assert "restarts" not in actions[3].why  # restartCount 1: not yet a loop
    assert "crash-looping (3 restarts)" in actions[-1].reason  # one restart is not yet a loop (CRASH_RESTARTS = 2)


def test_an_image_that_cannot_be_pulled_fails_at_once():
    obs = sequence("rolling-imagepull")[-1]
    j = judge(obs, Want("roomescape", "v2", 3), T0, T0, 240)
    assert isinstance(j, Stalled) and "ImagePullBackOff" in j.reason and "registry.example/roomescape:v2" in j.reason


def test_a_first_deploy_that_stalls_has_nothing_to_go_back_to():
    cfg = make_cfg()
    plan = ro.plan_for(cfg, "rolling", V2, None)
    actions, pos = drive(cfg, plan, sequence("rolling-stuck"))
    assert kinds(actions)[-1] == "Failed" and pos.finished == "failed"


def test_going_back_that_stalls_too_is_failed():
    cfg = make_cfg()
    plan = ro.plan_for(cfg, "rolling", V2, first_deploy_shape(cfg, V1))
    raw = json.loads((FIX / "rolling-back.json").read_text())["observations"][0]
    raw["deployment"]["status"]["conditions"][-1].update(status="False", reason="ProgressDeadlineExceeded")
    stuck_back = observe_deployment(raw["deployment"], raw["pods"])
    actions, pos = drive(cfg, plan, sequence("rolling-stuck") + [stuck_back])
    assert kinds(actions)[-1] == "Failed"
    assert "going back failed too" in pos.reason


def test_the_backstop_stalls_a_rollout_that_never_reports_progress():
    obs = sequence("rolling-good")[0]  # generation never observed
    want = Want("roomescape", "v2", 3)
    assert isinstance(judge(obs, want, T0 + 10, T0, 240), Pending)
    j = judge(obs, want, T0 + 241, T0, 240)
    assert isinstance(j, Stalled) and "no progress within 240s" in j.reason
    assert isinstance(judge(sequence("rolling-good")[-1], want, T0, T0, 240), Ready)


def test_progress_resets_the_backstop_timer():
    cfg = make_cfg()
    plan = ro.plan_for(cfg, "rolling", V2, first_deploy_shape(cfg, V1))
    seq = sequence("rolling-good")
    pos, _ = ro.advance(cfg, plan, ro.Position(since=T0), {}, T0)
    pos, a = ro.advance(cfg, plan, pos, {"roomescape": seq[1]}, T0 + 200)
    assert isinstance(a, ro.Wait) and pos.since == T0 + 200  # what it waits for changed: progress
    pos, a = ro.advance(cfg, plan, pos, {"roomescape": seq[1]}, T0 + 400)
    assert isinstance(a, ro.Wait)  # 200 s without change: within the backstop
    pos, a = ro.advance(cfg, plan, pos, {"roomescape": seq[1]}, T0 + 200 + ro.backstop(cfg) + 1)
    assert isinstance(a, ro.Apply)  # going back


def test_a_restart_mid_rollout_resumes_from_the_saved_position():
    cfg = make_cfg()
    plan = ro.plan_for(cfg, "rolling", V2, first_deploy_shape(cfg, V1))
    seq = sequence("rolling-good")
    actions, pos = drive(cfg, plan, seq[:3])
    saved = json.loads(json.dumps(pos.to_json()))  # what the state ConfigMap keeps
    # another nonstop: the Lease expired; the recovery rule says resume (the controller carried on)
    assert ro.recovery("rolling", ro.Position.from_json(saved)) == "resume"
    resumed = ro.Position.from_json({**saved, "applied": False})
    actions, pos = drive(cfg, plan, seq[3:], pos=resumed, t=T0 + 100)
    assert kinds(actions) == ["Apply", "Wait", "Done"]  # re-applying the same objects is a no-op for the server


def test_recovery_rules():
    fwd, back = ro.Position(), ro.Position(direction="back")
    assert ro.recovery("canary", fwd) == "roll_back"
    assert ro.recovery("blue-green", fwd) == "roll_back"
    assert ro.recovery("blue-green", ro.Position(traffic=True)) == "resume"
    assert ro.recovery("recreate", fwd) == "resume"
    assert ro.recovery("rolling", back) == "finish_rollback"
    assert ro.recovery("rolling", ro.Position(finished="done")) == "settle"
    assert ro.recovery("canary", ro.Position(finished="done")) == "roll_back"  # one step's plan finished, not the canary


def test_blue_green_plan_waits_for_the_new_color_then_switches_and_gates():
    cfg = make_cfg(strategy={"type": "blue-green", "auto_promote": False, "analysis": {"watch": "1m"}}, kubernetes={"prometheus": "http://p:9090"})
    plan = ro.plan_for(cfg, "blue-green", V2, first_deploy_shape(cfg, V1))
    assert [s.gate for s in plan.stages] == [None, "promote", None, "watch"]
    assert plan.stages[0].wait == (Want("roomescape-green", "v2", 3),)
    pos, a = ro.advance(cfg, plan, ro.Position(since=T0), {}, T0)
    assert isinstance(a, ro.Apply)
    ready = observe_deployment(_deployment("roomescape-green", "v2", 3, ready=3), [])
    pos, a = ro.advance(cfg, plan, pos, {"roomescape-green": ready}, T0 + 5)
    assert isinstance(a, ro.Apply) and pos.stage == 1  # the promote stage's (unchanged) shape
    pos, a = ro.advance(cfg, plan, pos, {}, T0 + 6)
    assert a == ro.Gate("promote", plan.stages[1].name)
    pos = ro.gate_passed(pos, T0 + 7)
    pos, a = ro.advance(cfg, plan, pos, {}, T0 + 7)
    svc = next(o for o in a.objects if o["kind"] == "Service" and o["metadata"]["name"] == "roomescape")
    assert svc["spec"]["selector"]["nonstop.dev/lane"] == "green" and pos.traffic
    # a breach in the watch goes back: the old color first, then the new one stopped
    pos = ro.fail(plan, ro.replace(pos, stage=3, applied=True), "analysis failed", T0 + 30)
    pos, a = ro.advance(cfg, plan, pos, {}, T0 + 30)
    svc = next(o for o in a.objects if o["kind"] == "Service" and o["metadata"]["name"] == "roomescape")
    assert svc["spec"]["selector"]["nonstop.dev/lane"] == "blue"


def _deployment(name, rel, replicas, ready):
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"nonstop.dev/release": rel}}}},
        "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready},
    }


def test_a_canary_breach_rolls_back_through_the_back_stages():
    cfg = make_cfg(strategy={"type": "canary", "sticky": False, "steps": [{"weight": 10, "pause": "30s"}], "analysis": {"failure_limit": 2}},
                   kubernetes={"prometheus": "http://p:9090"})
    plan = sm.Plan(steps=cfg.strategy.steps, failure_limit=2)
    s = sm.start(T0)
    s, a = sm.decide(plan, s, T0)
    assert a == sm.SetWeight(10)
    s = sm.observe(plan, s, "fail", T0 + 5, "canary 5xx rate 20.0% (10/50) > 1.0%")
    s, a = sm.decide(plan, s, T0 + 5)
    assert isinstance(a, sm.Wait)
    s = sm.observe(plan, s, "fail", T0 + 10, "canary 5xx rate 30.0% (15/50) > 1.0%")
    s, a = sm.decide(plan, s, T0 + 10)
    assert isinstance(a, sm.RollBack) and "failure_limit 2" in a.reason
    back = ro.canary_back_stages(cfg, first_deploy_shape(cfg, V1), V2)
    assert [t.replicas for t in back[-1].shape.tracks] == [3, 0]
    assert back[-1].wait == (Want("roomescape", "v1", 3), Want("roomescape-canary", "v2", 0))


def test_canary_from_blue_green_is_refused_with_the_way_out():
    cfg = make_cfg(strategy={"type": "canary", "sticky": False}, kubernetes={"prometheus": "http://p:9090"})
    bg = ro.plan_for(make_cfg(strategy={"type": "blue-green"}), "blue-green", V1, None).final
    with pytest.raises(Exception, match="--strategy rolling"):
        ro.canary_weight_stages(cfg, bg, V2, 0, 10)


# -- a second operator against a held Lease (pure verdicts) -------------------------------------------


def _lease_obj(holder, renewed, duration=60):
    return {
        "metadata": {"resourceVersion": "7", "annotations": {"nonstop.dev/release": "v2", "nonstop.dev/strategy": "canary",
                                                            "nonstop.dev/started": "2027-01-15T08:00:00.000000Z"}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renewed, "leaseTransitions": 1},
    }


def test_lease_verdicts_for_a_second_operator():
    t_renew = parse_time("2027-01-15T08:00:30.000000Z")
    info = lk.parse(_lease_obj("ci@runner-7:4242", "2027-01-15T08:00:30.000000Z"))
    assert info.release == "v2" and info.strategy == "canary" and info.started == parse_time("2027-01-15T08:00:00Z")
    assert lk.verdict(info, "alice@laptop:99", t_renew + 10) == "held"
    assert lk.verdict(info, "ci@runner-7:4242", t_renew + 10) == "mine"
    assert lk.verdict(info, "alice@laptop:99", t_renew + 61) == "expired"
    assert lk.verdict(lk.parse(_lease_obj(None, None)), "alice@laptop:99", t_renew) == "free"
    assert lk.verdict(None, "alice@laptop:99", t_renew) == "absent"
    err = lk.in_progress(make_cfg(), info, step="step 1/3: 10%")
    assert err.exit_code == 4
    assert "release v2 (canary)" in err.message and "ci@runner-7:4242" in err.message and "2027-01-15 08:00:00 UTC" in err.message
    assert "Lease roomescape/roomescape-nonstop-lock" in err.message and "step 1/3" in err.message


# -- the shared state, pure edits ---------------------------------------------------------------------


def test_state_history_ids_rollback_target_and_pruning():
    s = st.ClusterState()
    assert s.release_id("v1", "img:v1") == "v1"
    s = s.with_release(V1).with_release(V2)
    assert s.release_id("v2", "registry.example/roomescape:v2") == "v2"
    assert s.release_id("v2", "registry.example/roomescape:other") == "v2-2"
    s, did = s.begin({"release": "v2", "strategy": "rolling"})
    s = s.finish(outcome="promoted", reason="", finished=T0, shape=first_deploy_shape(make_cfg(), V2), warm=None)
    assert did == 1 and s.live == "v2" and s.deployment is None and s.deployments[-1]["outcome"] == "promoted"
    assert s.previous_good().id == "v1"
    assert s.mark("v1", "bad").previous_good() is None
    many = s
    for i in range(3, 10):
        many = many.with_release(KRelease(f"v{i}", f"v{i}", f"img:v{i}"))
    kept = [r["id"] for r in many.pruned(5).releases]
    assert len(kept) == 5 and "v2" in kept  # the live one is never pruned
    assert st.decode(st.encode(many)) == many


def test_judging_a_route_by_its_gateway_status():
    from nonstop.agent.kubernetes.observe import RouteWant, judge_route, observe_route

    want = RouteWant("roomescape", "public")
    route = {"metadata": {"name": "roomescape", "generation": 3}, "status": {"parents": [{
        "parentRef": {"name": "public", "namespace": "infra"}, "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": 2},
                       {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "observedGeneration": 2}]}]}}
    j = judge_route(observe_route(route), want, T0, T0)
    assert isinstance(j, Pending) and "generation 3" in j.why  # the new weights are not taken yet
    for c in route["status"]["parents"][0]["conditions"]:
        c["observedGeneration"] = 3
    assert isinstance(judge_route(observe_route(route), want, T0, T0), Ready)
    route["status"]["parents"][0]["conditions"][1].update(status="False", reason="BackendNotFound", message="service roomescape-canary not found")
    assert isinstance(judge_route(observe_route(route), want, T0 + 10, T0), Pending)
    assert isinstance(judge_route(observe_route(route), want, T0 + 61, T0), Stalled)
    assert isinstance(judge_route(observe_route(None, "roomescape"), want, T0, T0), Pending)
