"""The kubernetes agent's pure parts: status and history built from the cluster's picture (``views.py``), the
dashboard's figures made cumulative from Prometheus windows (``stats.Integrator``), the deploy request checks."""

from __future__ import annotations

import asyncio

import pytest

from nonstop.agent.kubernetes import state as st
from nonstop.agent.kubernetes import views
from nonstop.agent.kubernetes.operations import _paused, request_problems
from nonstop.agent.kubernetes.prometheus import Prometheus, Side
from nonstop.agent.kubernetes.shapes import KRelease
from nonstop.agent.kubernetes.stats import ClusterStats, Integrator
from nonstop.agent.preflight.base import Env
from nonstop.agent.sampler import Sampler
from nonstop.errors import NonstopError

from tests.kubernetes.fakeapi import prom_answer, serve_prometheus
from tests.kubernetes.kube import make_cfg

NOW = 1_800_000_000.0


def pod(name, release, track, ready=True, waiting=None, created=NOW - 60):
    return {"name": name, "release": release, "track": track, "ready": ready, "restarts": 3 if waiting else 0,
            "waiting": waiting, "message": "", "terminating": False, "created": created}


def dep(name, track, release, pods):
    return {"name": name, "track": track, "release": release, "replicas": len(pods), "ready": sum(p["ready"] for p in pods),
            "available": sum(p["ready"] for p in pods), "updated": len(pods), "exists": True, "pods": pods}


def picture(**over):
    base = {
        "live": "v1", "context": "prod", "server": "https://k8s.example:6443",
        "deployments": [
            dep("roomescape", "main", "v1", [pod("a", "v1", "main"), pod("b", "v1", "main"), pod("c", "v1", "main")]),
            dep("roomescape-canary", "canary", "v2", [pod("k", "v2", "canary")]),
        ],
        "service": {"name": "roomescape", "selector": {"nonstop.dev/app": "roomescape", "nonstop.dev/lane": "main"}},
        "route": None, "warm": None, "lock": None, "deployment": None,
    }
    return {**base, **over}


def test_without_a_gateway_the_weights_are_the_ready_pods_behind_the_service():
    cfg = make_cfg()
    p = picture()
    assert views.track_weights(cfg, p) == {"main": 75, "canary": 25}  # 3 + 1 endpoints in the lane
    assert [(r["release"], r["weight"], len(r["targets"])) for r in views.routes(cfg, p)] == [("v2", 25, 1), ("v1", 75, 3)]
    p["deployments"][1]["pods"][0]["ready"] = False  # a canary pod not ready is no endpoint
    assert views.track_weights(cfg, p) == {"main": 100, "canary": 0}
    blue = picture(service={"name": "roomescape", "selector": {"nonstop.dev/lane": "blue"}},
                   deployments=[dep("roomescape-blue", "blue", "v3", [pod("x", "v3", "blue")]), dep("roomescape", "main", "v2", [pod("y", "v2", "main")])])
    assert views.track_weights(cfg, blue) == {"blue": 100}
    split = views.split_of(cfg, p | {"deployments": picture()["deployments"]})
    assert {r.name: r.weight for r in split.table().releases} == {"v2": 25, "v1": 75}


def test_with_a_gateway_the_weights_are_the_routes():
    cfg = make_cfg(kubernetes={"gateway": {"name": "public"}})
    p = picture(route={"name": "roomescape", "backends": [{"name": "roomescape-stable", "weight": 90}, {"name": "roomescape-canary", "weight": 10}]})
    assert views.track_weights(cfg, p) == {"main": 90, "canary": 10}


def test_instances_are_the_pods_and_status_has_the_one_host_shape():
    cfg = make_cfg()
    p = picture(warm={"track": "canary", "release": "v2", "until": NOW + 60})
    p["deployments"][0]["pods"].append(pod("d", "v1", "main", ready=False, waiting="CrashLoopBackOff"))
    inst = {i["id"]: i for i in views.instances(cfg, p, NOW)}
    assert inst["a"]["state"] == "healthy" and inst["a"]["routed"] and inst["a"]["uptime"] == 60.0
    assert inst["d"]["crash_loop"] and not inst["d"]["alive"] and not inst["d"]["routed"] and inst["d"]["state"] == "CrashLoopBackOff"
    assert inst["k"]["warm_until"] == NOW + 60 and inst["a"]["port"] == 8080
    s = views.status_json(cfg, p, agent={"pid": 1, "started_at": NOW}, dashboard=None, now=NOW)
    assert s["live_release"] == "v1" and s["listen"] == "roomescape.roomescape.svc:80" and s["router"]["type"] == "kubernetes"
    assert s["cluster"] == {"context": "prod", "server": "https://k8s.example:6443", "namespace": "roomescape", "reachable": True, "error": None}
    assert all("pods" not in d for d in s["deployments"]) and s["deployment"] is None
    down = views.status_json(cfg, None, agent={}, dashboard=None, error="cannot reach the Kubernetes API", now=NOW)
    assert down["cluster"]["reachable"] is False and down["routes"] == [] and down["cluster"]["error"].startswith("cannot reach")


def test_a_deployment_another_machine_runs_is_shown_with_its_holder():
    cfg = make_cfg()
    remote = {"id": 7, "release": "v2", "strategy": "canary", "kind": "deploy", "from": "v1", "holder": "ci@runner-7:42",
              "stage": "canary 10%", "phase": "forward", "started": NOW - 30}
    s = views.status_json(cfg, picture(deployment=remote, lock={"holder": "ci@runner-7:42", "expired": False}),
                          agent={}, dashboard=None, now=NOW)
    d = s["deployment"]
    assert d["remote"] and d["holder"] == "ci@runner-7:42" and d["cluster_id"] == 7 and d["id"] is None and not d["lock_expired"]


def test_history_is_the_clusters_newest_first_with_who_ran_each():
    r1, r2 = KRelease("v1", "v1", "img:v1", created=NOW - 100), KRelease("v2", "v2", "img:v2", created=NOW - 50)
    s = st.ClusterState().with_release(r1).with_release(r2).mark("v2", "bad")
    s, _ = s.begin({"release": "v1", "strategy": "rolling", "kind": "deploy", "from": None, "started": NOW - 100, "holder": "ci@a:1"})
    s = s.finish(outcome="promoted", reason="ok", finished=NOW - 90, shape=None, warm=None)
    s, _ = s.begin({"release": "v1", "strategy": "blue-green", "kind": "rollback", "from": "v2", "started": NOW - 10, "holder": "me@b:2"})
    h = views.history_json(s, 10)
    assert [(d["id"], d["strategy"], d["state"], d["holder"]) for d in h["deployments"]] == [
        (2, "rollback", "progressing", "me@b:2"), (1, "rolling", "promoted", "ci@a:1")]
    assert h["deployments"][1]["seconds"] == 10.0
    assert [(r["id"], r["status"], r["image"]) for r in h["releases"]] == [("v2", "bad", "img:v2"), ("v1", "ok", "img:v1")]
    assert views.history_json(s, 1)["deployments"][0]["id"] == 2


def test_the_integrator_grows_counters_at_the_windows_rates_so_the_sampler_sees_the_same_rates():
    integ = Integrator()
    window = {"releases": {"v2": {"requests": 600, "by_class": {"5xx": 6}, "latency": {"buckets": [0.1, 0.5], "counts": [540, 54, 6]}}}}
    integ.rate(window, 60.0)  # 10 req/s, 1% 5xx
    sampler = Sampler(window=3)
    for t in range(5):
        sampler.add(NOW + t, integ.advance(NOW + t), {"v2": 100})
    last = sampler.samples[-1].releases["v2"]
    assert last.rps == pytest.approx(10, abs=1) and last.error_rate == pytest.approx(0.01, abs=0.01) and last.p99 <= 0.5 + 1e-9
    integ.rate({"releases": {}}, 60.0)  # the release stopped serving: its counters stay, they do not grow
    assert integ.advance(NOW + 10)["releases"]["v2"]["requests"] == integ.advance(NOW + 20)["releases"]["v2"]["requests"]


def test_cluster_stats_ask_prometheus_once_per_refresh_and_say_when_there_is_no_source():
    served, seen = serve_prometheus(prom_answer())
    try:
        t = [NOW]
        prom = Prometheus(served.url, namespace="roomescape", app="roomescape")
        cs = ClusterStats(prom, lambda: [Side("v1", "main", "roomescape-[a-z0-9]+-[a-z0-9]+")], clock=lambda: t[0], refresh=5.0)
        first = asyncio.run(cs.stats())
        t[0] += 1
        second = asyncio.run(cs.stats())
        assert len(seen) == 3  # requests, errors, latency: once within the refresh
        assert first["releases"]["v1"]["requests"] == 0 and second["releases"]["v1"]["requests"] == 3  # 200 per 60 s
    finally:
        served.close()
    with pytest.raises(NonstopError, match="without kubernetes.prometheus"):
        asyncio.run(ClusterStats(None, list).stats())


def test_deploy_requests_a_cluster_cannot_take_are_refused_before_anything_is_recorded(tmp_path):
    cfg = make_cfg(state_dir=str(tmp_path))
    found = request_problems(Env(cfg), "bad version", "app.jar", "canary", "two words")
    assert {p.field for p in found} == {"--version", "--artifact", "--strategy", "--image"}
    assert "deploys images, not artifacts" in next(p.message for p in found if p.field == "--artifact")
    assert request_problems(Env(cfg), "1.4.0", None, "blue-green", "registry.example/roomescape:hotfix") == []


def test_the_canary_shows_paused_while_held_and_at_a_manual_step():
    assert _paused("control", {"phase": "paused_user"}) is True
    assert _paused("control", {"phase": "progressing"}) is False
    assert _paused("waiting", {"kind": "manual"}) is True and _paused("waiting", {"kind": "pause"}) is False
    assert _paused("weight", {}) is False and _paused("applied", {}) is None
