"""Every object nonstop would apply, for every strategy and option, validated offline against the official
schemas (kubernetes-validate, strict; the Gateway API CRD schema for HTTPRoute), and the zero-downtime
properties asserted on the objects themselves."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes import rollout as ro
from nonstop.agent.kubernetes.shapes import KRelease, canary_replicas, effective_weight, first_deploy_shape, image_for

from tests.kubernetes.kube import K8S_VERSION, OLDEST_SLEEP, make_cfg, validate

GOLDEN = Path(__file__).parent / "golden" / "seed-rolling.yaml"

GW = {"gateway": {"name": "public", "namespace": "infra", "section_name": "https"}, "prometheus": "http://prometheus.monitoring:9090"}
PROM = {"prometheus": "http://prometheus.monitoring:9090"}
CANARY_STEPS = [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "1m"}, {"pause": "manual"}]

VARIANTS = {
    "seed-rolling": {},
    "rolling-percent": {"strategy": {"type": "rolling", "max_surge": "25%", "max_unavailable": "25%"}},
    "rolling-analysis": {"strategy": {"type": "rolling", "analysis": {"watch": "1m"}}, "kubernetes": PROM},
    "recreate": {"strategy": {"type": "recreate"}},
    "blue-green": {"strategy": {"type": "blue-green", "keep_previous": "10m"}},
    "blue-green-manual": {"strategy": {"type": "blue-green", "auto_promote": False, "analysis": {"watch": "2m"}}, "kubernetes": PROM},
    "blue-green-gateway": {"strategy": {"type": "blue-green"}, "kubernetes": GW},
    "canary-replicas": {"strategy": {"type": "canary", "sticky": False, "steps": CANARY_STEPS}, "kubernetes": PROM},
    "canary-gateway": {
        "strategy": {"type": "canary", "steps": CANARY_STEPS, "match": {"header": {"X-Canary": "1"}, "cookie": {"beta": "yes"}}},
        "kubernetes": {**GW, "hostnames": ["roomescape.example.com"]},
    },
    "canary-gateway-unsticky": {"strategy": {"type": "canary", "sticky": False, "steps": CANARY_STEPS}, "kubernetes": GW},
    "prestop-exec": {"kubernetes": {"prestop": "exec"}},
    "prestop-none": {"kubernetes": {"prestop_sleep": "0s"}},
    "health-tcp": {"health": {"type": "tcp"}},
    "health-command": {"health": {"type": "command", "command": ["/bin/check", "--port", "{port}"]}},
    "one-replica": {"run": {"instances": 1}},
    "options": {
        "run": {"args": ["--spring.profiles.active=prod"]},
        "kubernetes": {
            "service_type": "LoadBalancer",
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
            "image_pull_secrets": ["registry-login"],
            "progress_deadline": "5m",
        },
    },
}

V1 = KRelease("v1", "v1", "registry.example/roomescape:v1")
V2 = KRelease("v2", "v2", "registry.example/roomescape:v2", digest="sha256:" + "a" * 64)


def objects_of(cfg) -> list[dict]:
    """Every object a first deploy and a second deploy (each stage, forward and back) would apply."""
    s = cfg.strategy.type
    first = first_deploy_shape(cfg, V1)
    shapes = [first]
    if s == "canary":
        for before, w in ((0, 0), (0, 10), (10, 50)):
            shapes += [st.shape for st in ro.canary_weight_stages(cfg, first, V2, before, w)]
        shapes += [st.shape for st in ro.canary_finish_stages(cfg, first, V2, 50)]
        shapes += [st.shape for st in ro.canary_back_stages(cfg, first, V2)]
    else:
        plan = ro.plan_for(cfg, s, V2, first)
        shapes += [st.shape for st in plan.stages + plan.back]
    out = []
    for sh in shapes:
        out += mf.render(cfg, sh)
    return out


_SEEN: set[str] = set()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_object_is_valid_for_kubernetes(name):
    cfg = make_cfg(**VARIANTS[name])
    objs = objects_of(cfg)
    assert objs
    for obj in objs:
        key = json.dumps(obj, sort_keys=True)
        if key in _SEEN:
            continue  # validated once (kubernetes-validate is slowish)
        _SEEN.add(key)
        validate(obj, K8S_VERSION)
        if obj["kind"] == "Deployment":
            validate(obj, OLDEST_SLEEP)  # the preStop sleep action and the probes exist there too


def test_the_cached_validator_agrees_with_kubernetes_validate_itself():
    import kubernetes_validate

    cfg = make_cfg(**VARIANTS["canary-gateway"])
    for obj in mf.render(cfg, first_deploy_shape(cfg, V1)):
        if obj["kind"] != "HTTPRoute":
            assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == "1.37"
    bad = mf.render(cfg, first_deploy_shape(cfg, V1))[0]
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 1  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    with pytest.raises(Exception):
        validate(bad)


def test_a_typo_in_an_httproute_is_refused_by_the_crd_schema():
    cfg = make_cfg(**VARIANTS["canary-gateway-unsticky"])
    route = [o for o in mf.render(cfg, first_deploy_shape(cfg, V1)) if o["kind"] == "HTTPRoute"][0]
    validate(route)
    route["spec"]["rules"][0]["backendRefs"][0]["wieght"] = 10
    with pytest.raises(Exception, match="wieght"):
        validate(route)


def test_seed_manifests_match_the_reviewed_golden_file():
    cfg = make_cfg()
    text = mf.to_yaml(mf.render(cfg, first_deploy_shape(cfg, V1)))
    if os.environ.get("NONSTOP_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_render_is_deterministic():
    cfg = make_cfg(**VARIANTS["canary-gateway"])
    a = [mf.to_yaml(mf.render(cfg, s.shape)) for s in ro.canary_finish_stages(cfg, first_deploy_shape(cfg, V1), V2, 50)]
    b = [mf.to_yaml(mf.render(make_cfg(**VARIANTS["canary-gateway"]), s.shape)) for s in ro.canary_finish_stages(cfg, first_deploy_shape(cfg, V1), V2, 50)]
    assert a == b


# -- zero-downtime properties on the objects --------------------------------------------------------


def _deployments(objs):
    return [o for o in objs if o["kind"] == "Deployment"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_pod_waits_out_endpoint_removal_and_its_requests(name):
    cfg = make_cfg(**VARIANTS[name])
    prestop = int(cfg.kubernetes.prestop_sleep)
    for d in _deployments(objects_of(cfg)):
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        if prestop:
            pre = c["lifecycle"]["preStop"]
            assert pre == ({"exec": {"command": ["sleep", str(prestop)]}} if cfg.kubernetes.prestop == "exec" else {"sleep": {"seconds": prestop}})
        else:
            assert "lifecycle" not in c
        assert pod["terminationGracePeriodSeconds"] >= prestop + cfg.drain_timeout
        assert pod["terminationGracePeriodSeconds"] >= prestop + cfg.run.stop_timeout
        assert c["readinessProbe"]["periodSeconds"] >= 1
        assert c["readinessProbe"]["successThreshold"] == cfg.health.healthy_threshold
        assert c["startupProbe"]["successThreshold"] == 1
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= cfg.health.startup_timeout
        assert "livenessProbe" not in c
        assert d["spec"]["progressDeadlineSeconds"] > cfg.health.startup_timeout
        assert d["metadata"]["labels"][mf.MANAGED_BY] == "nonstop"


def test_sub_second_health_interval_is_rounded_up_to_the_kubelets_one_second():
    c = mf.render(make_cfg(), first_deploy_shape(make_cfg(), V1))[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["periodSeconds"] == 1
    c = mf.render(make_cfg(health={"interval": "2.5s"}), first_deploy_shape(make_cfg(), V1))[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["periodSeconds"] == 3


def test_rolling_update_bounds_come_from_the_strategy():
    cfg = make_cfg(**VARIANTS["rolling-percent"])
    d = _deployments(mf.render(cfg, first_deploy_shape(cfg, V1)))[0]
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    seed = _deployments(mf.render(make_cfg(), first_deploy_shape(make_cfg(), V1)))[0]
    assert seed["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    rec = make_cfg(strategy={"type": "recreate"})
    assert _deployments(mf.render(rec, first_deploy_shape(rec, V1)))[0]["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_disruption_budget_guards_each_deployment_of_two_or_more(name):
    cfg = make_cfg(**VARIANTS[name])
    for sh in [first_deploy_shape(cfg, V1)]:
        objs = mf.render(cfg, sh)
        pdbs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PodDisruptionBudget"}
        for d in _deployments(objs):
            name_ = d["metadata"]["name"]
            if d["spec"]["replicas"] >= 2:
                assert pdbs[name_]["spec"]["selector"] == d["spec"]["selector"]
                assert pdbs[name_]["spec"]["maxUnavailable"] == 1
            else:
                assert name_ not in pdbs


def test_blue_green_switch_is_one_selector_change_and_the_old_color_stays_warm():
    cfg = make_cfg(**VARIANTS["blue-green"])
    first = first_deploy_shape(cfg, V1)
    plan = ro.plan_for(cfg, "blue-green", V2, first)
    svc = lambda sh: next(o for o in mf.render(cfg, sh) if o["kind"] == "Service" and o["metadata"]["name"] == "roomescape")
    start, switch = plan.stages[0].shape, plan.stages[-1].shape
    assert svc(first)["spec"]["selector"] == {"nonstop.dev/app": "roomescape", "nonstop.dev/lane": "blue"}
    assert svc(start)["spec"]["selector"] == svc(first)["spec"]["selector"]  # the new color takes no traffic yet
    assert svc(switch)["spec"]["selector"]["nonstop.dev/lane"] == "green"
    a = {(o["kind"], o["metadata"]["name"]): o for o in mf.render(cfg, start)}
    b = {(o["kind"], o["metadata"]["name"]): o for o in mf.render(cfg, switch)}
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    # the switch changes the app's Service (and drops the preview Service), never a Deployment
    assert changed == [("Service", "roomescape"), ("Service", "roomescape-preview")]
    assert {n: o["spec"]["replicas"] for (k, n), o in b.items() if k == "Deployment"} == {"roomescape-blue": 3, "roomescape-green": 3}
    back = plan.back
    assert svc(back[0].shape)["spec"]["selector"]["nonstop.dev/lane"] == "blue"  # traffic back first ...
    assert back[0].shape.track("green").replicas == 3
    assert back[1].shape.track("green").replicas == 0  # ... then the new color stops


def test_blue_green_with_a_gateway_switches_by_route_weight():
    cfg = make_cfg(**VARIANTS["blue-green-gateway"])
    plan = ro.plan_for(cfg, "blue-green", V2, first_deploy_shape(cfg, V1))
    route = lambda sh: next(o for o in mf.render(cfg, sh) if o["kind"] == "HTTPRoute")
    before = route(plan.stages[0].shape)["spec"]["rules"][-1]["backendRefs"]
    after = route(plan.stages[-1].shape)["spec"]["rules"][-1]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in before] == [("roomescape-blue", 100), ("roomescape-green", 0)]
    assert [(b["name"], b["weight"]) for b in after] == [("roomescape-blue", 0), ("roomescape-green", 100)]
    assert route(plan.stages[0].shape)["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "infra", "sectionName": "https"}
    ]


def test_canary_route_weights_and_match_rules():
    cfg = make_cfg(**VARIANTS["canary-gateway"])
    first = first_deploy_shape(cfg, V1)
    pods, route = ro.canary_weight_stages(cfg, first, V2, 0, 10)
    assert pods.shape.weight("canary") == 0 and pods.shape.track("canary").replicas == 1  # pods before traffic
    r = next(o for o in mf.render(cfg, route.shape) if o["kind"] == "HTTPRoute")
    match, default = r["spec"]["rules"]
    assert match["backendRefs"] == [{"group": "", "kind": "Service", "name": "roomescape-canary", "port": 80, "weight": 1}]
    headers = {h["name"]: h for h in match["matches"][0]["headers"]}
    assert headers["X-Canary"] == {"type": "Exact", "name": "X-Canary", "value": "1"}
    rx = re.compile(headers["Cookie"]["value"])
    assert rx.match("beta=yes") and rx.match("a=1; beta=yes; b=2") and not rx.match("beta=yesno") and not rx.match("xbeta=yes")
    assert [(b["name"], b["weight"]) for b in default["backendRefs"]] == [("roomescape-stable", 90), ("roomescape-canary", 10)]
    assert default["sessionPersistence"] == {"sessionName": "nonstop-roomescape", "type": "Cookie"}
    assert r["spec"]["hostnames"] == ["roomescape.example.com"]
    back = ro.canary_back_stages(cfg, first, V2)
    rb = next(o for o in mf.render(cfg, back[0].shape) if o["kind"] == "HTTPRoute")
    assert [(b["name"], b["weight"]) for b in rb["spec"]["rules"][-1]["backendRefs"]] == [("roomescape-stable", 100), ("roomescape-canary", 0)]
    assert back[0].shape.track("canary").replicas == 3  # traffic off before any canary pod stops
    assert back[-1].shape.track("canary").replicas == 0


def test_canary_without_gateway_approximates_the_weight_by_replicas():
    cfg = make_cfg(**VARIANTS["canary-replicas"])
    assert canary_replicas(3, 10, gateway=False) == 1 and effective_weight(3, 1) == 25
    assert canary_replicas(3, 50, gateway=False) == 3 and effective_weight(3, 3) == 50
    assert canary_replicas(9, 10, gateway=False) == 1 and effective_weight(9, 1) == 10
    assert canary_replicas(3, 10, gateway=True) == 1 and canary_replicas(10, 25, gateway=True) == 3
    first = first_deploy_shape(cfg, V1)
    (stage,) = ro.canary_weight_stages(cfg, first, V2, 0, 10)
    objs = mf.render(cfg, stage.shape)
    svc = next(o for o in objs if o["kind"] == "Service")
    assert not [o for o in objs if o["kind"] == "HTTPRoute"]
    for d in _deployments(objs):  # one Service over both tracks' pods: the split is the replica ratio
        assert _selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    assert "≈25%" in stage.name and "asked 10%" in stage.name


def test_services_select_exactly_the_pods_meant():
    cfg = make_cfg(**VARIANTS["blue-green-gateway"])
    plan = ro.plan_for(cfg, "blue-green", V2, first_deploy_shape(cfg, V1))
    objs = mf.render(cfg, plan.stages[0].shape)
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in _deployments(objs)}
    sel = {o["metadata"]["name"]: o["spec"]["selector"] for o in objs if o["kind"] == "Service"}
    assert [n for n, lb in pods.items() if _selects(sel["roomescape-blue"], lb)] == ["roomescape-blue"]
    assert [n for n, lb in pods.items() if _selects(sel["roomescape-green"], lb)] == ["roomescape-green"]
    assert [n for n, lb in pods.items() if _selects(sel["roomescape-preview"], lb)] == ["roomescape-green"]
    assert [n for n, lb in pods.items() if _selects(sel["roomescape"], lb)] == ["roomescape-blue"]


def test_image_digest_pins_what_pods_run_and_labels_are_valid():
    cfg = make_cfg()
    d = mf.deployment(cfg, first_deploy_shape(cfg, V2), first_deploy_shape(cfg, V2).tracks[0])
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/roomescape:v2@sha256:" + "a" * 64  # the tag stays for people; the digest decides
    assert image_for(cfg, "1.4.0", "1.4.0") == "registry.example/roomescape:1.4.0"
    assert image_for(cfg, "1.4.0", "1.4.0", "other/image:x") == "other/image:x"
    assert mf.label_value("v1.0-") == "v1.0" and len(mf.label_value("x" * 80)) == 63


def test_lease_and_state_objects_are_valid():
    cfg = make_cfg()
    validate(mf.lease(cfg, holder="ci@runner:42", duration=60, acquired=1_800_000_000.5, renewed=1_800_000_010.25, transitions=3,
                      annotations={"nonstop.dev/release": "v2"}))
    validate(mf.lease(cfg, holder=None, duration=60, acquired=None, renewed=None))
    validate(mf.state_configmap(cfg, '{"releases":[]}', resource_version="12"))
    assert mf.microtime(1_800_000_000.5) == "2027-01-15T08:00:00.500000Z"


def _stage_sequences(cfg):
    first = first_deploy_shape(cfg, V1)
    if cfg.strategy.type == "canary":
        fwd = [first]
        for before, w in ((0, 10), (10, 50)):
            fwd += [s.shape for s in ro.canary_weight_stages(cfg, first, V2, before, w)]
        fin = fwd + [s.shape for s in ro.canary_finish_stages(cfg, first, V2, 50)]
        back = fwd + [s.shape for s in ro.canary_back_stages(cfg, first, V2)]
        return [fin, back]
    plan = ro.plan_for(cfg, cfg.strategy.type, V2, first)
    fwd = [first] + [s.shape for s in plan.stages]
    return [fwd, fwd + [s.shape for s in plan.back]]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_no_stage_stops_pods_that_still_take_traffic(name):
    """Traffic leaves a track (route weight, or the Service's lane) one stage before its pods stop."""
    cfg = make_cfg(**VARIANTS[name])
    gw = cfg.kubernetes.gateway is not None
    for seq in _stage_sequences(cfg):
        for prev, cur in zip(seq, seq[1:]):
            for t in prev.tracks:
                now = cur.track(t.name)
                stops = now is None or now.replicas < t.replicas
                if not stops or t.release != (now.release if now else t.release):
                    continue  # a template change is the Deployment controller's rolling update (maxUnavailable 0)
                if gw:
                    assert prev.weight(t.name) == 0 and cur.weight(t.name) == 0, (name, t.name, prev.weights, cur.weights)
                else:
                    from nonstop.agent.kubernetes.shapes import lane

                    # without a gateway a stopping track must not be all the Service selects
                    others = [x for x in cur.tracks if x.name != t.name and lane(x.name) == lane(cur.primary) and x.replicas > 0]
                    assert lane(t.name) != lane(prev.primary) or others, (name, t.name)
