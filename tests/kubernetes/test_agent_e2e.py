"""The kubernetes runtime through the real CLI and a real agent process (``nonstop up --detach``), against the
API's transport fake and a Prometheus fake (tests/kubernetes/fakeapi.py: loopback HTTP servers in this process
answering with the API's real JSON shapes; no Kubernetes server can run on these machines). Real time, short
intervals (``kubernetes.poll_interval: 50ms``, one-second analysis).

up → deploy (rolling, blue-green, canary) → status → rollback → history → logs → the dashboard and webhooks →
down; promote / pause / resume / abort on a canary; a Lease held by another operator (exit 4, then released and
deployed); an unreachable cluster (exit 3); the agent killed mid-rollout and the next ``nonstop up`` resuming.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import time

import httpx
import pytest

from nonstop.agent.kubernetes.manifests import microtime
from tests.e2e.helpers import stack_ports, wait_for
from tests.kubernetes.fakeapi import prom_answer, serve_prometheus
from tests.kubernetes.stack import Hooks, KubeStack, _alive

GW = {"name": "public", "namespace": "infra"}
OWNER = {"app.kubernetes.io/managed-by": "nonstop", "nonstop.dev/app": "roomescape"}


@pytest.fixture
def stack(fake, tmp_path):
    _cluster, _served, path = fake
    s = KubeStack(tmp_path / "app", path)
    s.dir.mkdir()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def prom_url():
    served, seen = serve_prometheus(prom_answer())
    try:
        yield served.url, seen
    finally:
        served.close()


def specs(cluster, plural):
    return {name: copy.deepcopy(o["spec"]) for (p, name), o in cluster.objects.items() if p == plural}


def test_up_deploy_rolling_and_blue_green_status_rollback_history_logs_dashboard_webhooks_down(fake, stack):
    import socket

    cluster, served, _path = fake
    port, taken = stack_ports(2)
    hooks = Hooks()
    # `listen` names an address another program holds: a cluster's front door is its Service, nothing binds it
    holder = socket.create_server(("127.0.0.1", taken))
    common = {"listen": f"127.0.0.1:{taken}", "dashboard": {"enabled": True, "listen": f"127.0.0.1:{port}"},
              "notify": [{"url": hooks.url}]}
    try:
        stack.write(**common)
        up = stack.ok("up", "--detach", "--json").json
        assert up["runtime"] == "kubernetes" and up["cluster"]["context"] == "test" and up["cluster"]["server"] == served.url
        assert up["listen"] == "roomescape.roomescape.svc:80"  # no address of this machine is bound
        human = stack.ok("status").out
        assert "roomescape in namespace roomescape of cluster test" in human and "no deployment in progress" in human

        for v in ("v1", "v2"):
            r = stack.deploy(v)
            assert r["ok"] and r["state"] == "promoted" and r["release"] == v
        types = [e["type"] for e in r["events"]]
        assert types[:2] == ["start", "release"] and types[-1] == "result" and "applied" in types
        st = stack.status()
        assert st["live_release"] == "v2" and st["strategy"] == "rolling" and st["deployment"] is None
        [dep] = st["deployments"]
        assert (dep["name"], dep["release"], dep["ready"], dep["available"]) == ("roomescape", "v2", 2, 2)
        assert st["service"]["selector"] == {"nonstop.dev/app": "roomescape", "nonstop.dev/lane": "main"}
        [route] = st["routes"]
        assert route["release"] == "v2" and route["weight"] == 100 and len(route["targets"]) == 2
        assert len(st["instances"]) == 2 and all(i["state"] == "healthy" and i["routed"] for i in st["instances"])

        # blue-green from here on: the config is read again before each deploy
        stack.write(strategy={"type": "blue-green", "keep_previous": "10m"}, **common)
        assert stack.deploy("v3")["ok"]
        st = stack.status()
        assert st["live_release"] == "v3" and st["service"]["selector"]["nonstop.dev/lane"] == "blue"
        assert st["warm"]["release"] == "v2" and st["warm"]["track"] == "main"
        by_name = {d["name"]: d for d in st["deployments"]}
        assert by_name["roomescape-blue"]["release"] == "v3" and by_name["roomescape"]["release"] == "v2"
        assert "warm: v2 on main" in stack.ok("status").out

        before = specs(cluster, "deployments")
        t0 = time.monotonic()
        back = stack.ok("rollback", "--json").json
        assert back["ok"] and back["release"] == "v2" and time.monotonic() - t0 < 5
        assert specs(cluster, "deployments") == before  # warm: one selector change, no pod started or stopped
        st = stack.status()
        assert st["live_release"] == "v2" and st["service"]["selector"]["nonstop.dev/lane"] == "main"

        h = stack.ok("history", "--json").json
        assert [(d["release"], d["strategy"], d["outcome"]) for d in h["deployments"]] == [
            ("v2", "rollback", "promoted"), ("v3", "blue-green", "promoted"), ("v2", "rolling", "promoted"), ("v1", "rolling", "promoted")]
        assert {r["id"]: (r["status"], r["live"]) for r in h["releases"]} == {
            "v3": ("bad", False), "v2": ("ok", True), "v1": ("ok", False)}
        assert all(d["holder"] and d["holder"].endswith(f":{stack.agent_pid()}") for d in h["deployments"])

        logs = stack.ok("logs", "v3", "--lines", "2", "--json").json
        assert logs["release"] == "v3" and len(logs["files"]) == 2
        assert all(f["lines"] == [f"{f['name'][4:]} release=v3 line 19", f"{f['name'][4:]} release=v3 line 20"] for f in logs["files"])
        assert "release=v2 line 20" in stack.ok("logs").out  # default: the live release
        assert stack.cli("logs", "v9").code == 2

        # the dashboard and /metrics, as on one host
        base = f"http://127.0.0.1:{port}"
        state = httpx.get(f"{base}/api/state", timeout=10).json()
        assert state["status"]["runtime"] == "kubernetes" and state["status"]["live_release"] == "v2"
        assert len(state["history"]["deployments"]) == 4 and state["timeline"]["events"][-1]["type"] == "result"
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        assert 'nonstop_live_release_info{release="v2"} 1' in metrics
        assert 'nonstop_deployments_total{strategy="rolling",outcome="promoted"} 2' in metrics
        assert "nonstop_router_stats_up 0" in metrics  # no kubernetes.prometheus: no request figures, said
        token = (stack.state / "token").read_text().strip()
        refused = httpx.post(f"{base}/api/abort", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert refused.status_code == 400 and "no deployment in progress" in refused.json()["message"]

        # webhooks: each deployment's start and outcome
        wait_for(lambda: sum(b["event"] in ("success", "rollback") for b in hooks.bodies) >= 4, timeout=10, what="webhooks")
        ends = [(b["event"], b["release"]) for b in hooks.bodies if b["event"] in ("success", "rollback", "failure")]
        assert ends == [("success", "v1"), ("success", "v2"), ("success", "v3"), ("rollback", "v2")]
        assert [b["release"] for b in hooks.bodies if b["event"] == "start"] == ["v1", "v2", "v3", "v2"]

        pid = stack.agent_pid()
        assert "the app keeps running in the cluster" in stack.ok("down").out
        wait_for(lambda: not _alive(pid), timeout=10, what="the agent to exit")
        assert stack.cli("status").code == 3
        assert {n for (p, n) in cluster.objects if p == "deployments"} == {"roomescape", "roomescape-blue"}  # still serving
        off = stack.ok("history", "--json").json  # no agent: read from the cluster itself
        assert off["offline"] == "the cluster (context test)" and off["deployments"] == h["deployments"]
        assert len(stack.ok("logs", "--json").json["files"]) == 2
    finally:
        hooks.close()
        holder.close()


def test_canary_through_a_gateway_pause_resume_promote_and_abort(fake, stack, prom_url):
    cluster, _served, _path = fake
    url, seen = prom_url
    cluster.gateways[("infra", "public")] = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                                             "metadata": {"name": "public", "namespace": "infra"}, "spec": {}}
    stack.write(
        strategy={"type": "canary", "steps": [{"weight": 25, "pause": "1m"}, {"weight": 50, "pause": "manual"}],
                  "analysis": {"interval": "1s", "min_requests": 50}},
        kubernetes={"gateway": GW, "prometheus": url},
    )
    stack.ok("up", "--detach")
    assert stack.deploy("v1")["ok"]  # nothing to compare with: straight to stable

    def canary(st):
        return (st.get("deployment") or {}).get("canary") or {}

    run = stack.background("deploy", "--version", "v2", "--json")
    st = stack.wait_status(lambda st: canary(st).get("weight") == 25, what="the canary at 25%")
    assert st["deployment"]["strategy"] == "canary" and st["deployment"]["release"] == "v2"
    assert {r["release"]: r["weight"] for r in st["routes"]} == {"v2": 25, "v1": 75}  # read from the HTTPRoute
    assert st["route"]["backends"] == [{"name": "roomescape-stable", "weight": 75}, {"name": "roomescape-canary", "weight": 25}]
    stack.ok("pause")
    st = stack.wait_status(lambda st: st["deployment"]["state"] == "paused", what="paused")
    assert canary(st)["phase"] == "paused_user"
    stack.ok("resume")
    stack.wait_status(lambda st: st["deployment"]["state"] == "progressing", what="resumed")
    stack.wait_status(lambda st: canary(st).get("analysis"), what="an analysis")
    stack.ok("promote")  # the rest of step 1's pause skipped
    st = stack.wait_status(lambda st: canary(st).get("weight") == 50 and st["deployment"]["state"] == "paused", what="the manual step")
    assert "promote" in canary(st)["waiting_for"]
    stack.ok("promote")
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, out[-3000:] + err[-3000:]
    res = json.loads(out)
    assert res["state"] == "promoted" and any(e["type"] == "analysis" and e["verdict"] == "pass" for e in res["events"])
    assert any("http_server_requests_seconds_count" in q and "roomescape-canary" in q for q in seen)
    st = stack.status()
    assert st["live_release"] == "v2" and {r["release"]: r["weight"] for r in st["routes"]} == {"v2": 100}

    run = stack.background("deploy", "--version", "v3", "--json")
    stack.wait_status(lambda st: canary(st).get("weight") == 25, what="v3 at 25%")
    assert "abort sent" in stack.ok("abort").out
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1 and json.loads(out)["state"] == "aborted", out[-2000:] + err[-2000:]
    st = stack.status()
    assert st["live_release"] == "v2" and {r["release"]: r["weight"] for r in st["routes"]} == {"v2": 100}
    assert stack.cli("promote").code == 2  # nothing runs: refused, nothing queued
    h = stack.ok("history", "--json").json
    assert [(d["release"], d["outcome"]) for d in h["deployments"]][:2] == [("v3", "aborted"), ("v2", "promoted")]


def test_a_lease_held_by_another_operator_is_exit_4_until_released(fake, stack):
    cluster, _served, _path = fake
    stack.write()
    stack.ok("up", "--detach")
    assert stack.deploy("v1")["ok"]
    lease = cluster.get("leases", "roomescape-nonstop-lock")
    now = time.time()
    lease["metadata"].setdefault("annotations", {}).update({
        "nonstop.dev/release": "v7", "nonstop.dev/strategy": "canary", "nonstop.dev/started": microtime(now - 30)})
    lease["spec"].update(holderIdentity="ci@runner-7:4242", renewTime=microtime(now), acquireTime=microtime(now - 30))
    cluster.objects[("leases", "roomescape-nonstop-lock")] = lease
    writes = len(cluster.writes())
    r = stack.cli("deploy", "--version", "v2")
    assert r.code == 4, r.out + r.err
    assert "ci@runner-7:4242" in r.err and "release v7 (canary)" in r.err and "started 20" in r.err
    j = stack.cli("rollback", "--json")
    assert j.code == 4 and j.json["holder"] == "ci@runner-7:4242" and j.json["release"] == "v7"
    assert len(cluster.writes()) == writes  # nothing changed in the cluster
    assert stack.ok("history", "--json").json["deployments"][0]["release"] == "v1"  # nothing recorded
    assert stack.status()["lock"]["holder"] == "ci@runner-7:4242"
    # the other operator's deploy ends and gives the Lease back
    lease = cluster.get("leases", "roomescape-nonstop-lock")
    lease["spec"].pop("holderIdentity")
    cluster.objects[("leases", "roomescape-nonstop-lock")] = lease
    assert stack.deploy("v2")["ok"]
    assert stack.status()["lock"] is None
    cluster.unreachable = True  # the API server goes away: the agent says so, and status is exit 3
    r = stack.cli("status", "--json")
    assert r.code == 3 and r.json["cluster"]["reachable"] is False and "cannot reach the Kubernetes API of context test" in r.json["cluster"]["error"]
    r = stack.cli("deploy", "--version", "v3")
    assert r.code == 3 and "cannot reach the Kubernetes API of context test" in r.err
    cluster.unreachable = False
    assert stack.status()["live_release"] == "v2"


def test_deploy_builds_with_version_and_release_and_takes_an_image(fake, stack):
    cluster, _served, _path = fake
    build = {"commands": [[sys.executable, "-c", "open('built-{version}-{release}', 'w').close()"]]}
    stack.write(build=build)
    stack.ok("up", "--detach")
    r = stack.cli("deploy", "--artifact", "app.jar")
    assert r.code == 2 and "deploys images, not artifacts" in r.err
    assert stack.deploy("v1")["ok"] and (stack.dir / "built-v1-v1").exists()
    image = lambda: cluster.get("deployments", "roomescape")["spec"]["template"]["spec"]["containers"][0]["image"]  # noqa: E731
    assert image() == "registry.example/roomescape:v1"
    # v1 names another image now: a new release id, {release} in the build is that id
    out = stack.deploy("v1", "--image", "registry.example/roomescape:hotfix")
    assert out["release"] == "v1-2" and (stack.dir / "built-v1-v1-2").exists()
    assert image() == "registry.example/roomescape:hotfix"
    assert stack.cli("deploy", "--version", "v1-2", "--image", "registry.example/roomescape:hotfix").code == 2  # live already
    stack.write(build={"commands": [[sys.executable, "-c", "raise SystemExit(3)"]]})
    failed = stack.deploy("v2", expect=1)
    assert failed["state"] == "failed" and "failed with exit code 3" in failed["reason"]
    assert image() == "registry.example/roomescape:hotfix"  # a failed build changed nothing


def test_an_unreachable_cluster_is_exit_3_naming_context_and_server(stack, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once the socket is closed
    from tests.kubernetes.fakeapi import kubeconfig

    stack.kubeconfig = kubeconfig(tmp_path / "down.kubeconfig", f"http://127.0.0.1:{closed}", contexts=("prod",))
    stack.write()
    for verb in ("up", "check"):
        r = stack.cli(verb, "--detach") if verb == "up" else stack.cli(verb)
        assert r.code == 3, r.out + r.err
        assert "context prod" in r.err and f"http://127.0.0.1:{closed}" in r.err
    assert stack.agent_pid() is None  # nothing started


def test_check_names_what_the_cluster_lacks(fake, stack):
    cluster, _served, _path = fake
    stack.write(strategy={"type": "blue-green"}, kubernetes={"gateway": GW})
    cluster.gateways[("infra", "public")] = {"kind": "Gateway", "metadata": {"name": "public", "namespace": "infra"}}
    ok = stack.ok("check", "--json").json
    assert ok["ok"] and "the cluster (reachable, namespace, permissions, gateway)" in ok["checked"]
    assert {(a["verb"], a["resource"], a.get("subresource", "")) for a in cluster.reviews} >= {
        ("patch", "deployments", ""), ("get", "pods", "log"), ("update", "leases", ""), ("delete", "httproutes", "")}
    assert not cluster.objects  # a dry run and reviews: nothing was written

    cluster.forbidden |= {("delete", "deployments"), ("get", "pods/log")}
    del cluster.gateways[("infra", "public")]
    r = stack.cli("check")
    assert r.code == 2, r.out + r.err
    assert "may not delete deployments (apps), get pods/log in namespace roomescape" in r.err
    assert "Gateway infra/public not found in context test" in r.err
    cluster.namespace = "elsewhere"  # the app's namespace does not exist
    r = stack.cli("check")
    assert r.code == 2 and "namespace roomescape does not exist in context test" in r.err, r.err
    assert stack.cli("up", "--detach").code == 2 and stack.agent_pid() is None  # up checks the same, starts nothing


def test_an_agent_killed_mid_rollout_is_recovered_by_the_next_up(fake, stack):
    cluster, _served, _path = fake
    stack.write()
    stack.ok("up", "--detach")
    assert stack.deploy("v1")["ok"]
    cluster.behaviour["v2"] = "stall"  # v2's pods are slow: the agent dies mid-rollout, deterministically
    cluster.stall_reads = 10**6
    run = stack.background("deploy", "--version", "v2", "--json")
    st = stack.wait_status(lambda st: any(d["release"] == "v2" for d in st["deployments"]) and st["deployment"], what="v2 rolling out")
    assert st["deployment"]["state"] == "progressing"
    pid = stack.agent_pid()
    os.kill(pid, signal.SIGKILL)
    out, _err = run.communicate(timeout=30)
    assert run.returncode == 3 and json.loads(out)["error"] == "AgentUnreachable", out  # the agent is gone: exit 3
    wait_for(lambda: not _alive(pid), timeout=10, what="the agent to die")
    lease = cluster.get("leases", "roomescape-nonstop-lock")
    assert lease["spec"]["holderIdentity"].endswith(f":{pid}")  # still held by the dead agent
    cluster.behaviour["v2"] = "good"  # the pods come up in the end

    stack.ok("up", "--detach")  # recovers before it answers: the dead holder was of this machine
    st = stack.status()
    assert st["live_release"] == "v2" and st["deployment"] is None and st["lock"] is None
    h = stack.ok("history", "--json").json
    assert [(d["release"], d["outcome"]) for d in h["deployments"]] == [("v2", "promoted"), ("v1", "promoted")]
    import sqlite3

    with sqlite3.connect(stack.state / "nonstop.db") as db:
        rows = db.execute("SELECT release, state, reason FROM deployments ORDER BY id").fetchall()
        events = [t for (t,) in db.execute("SELECT type FROM events WHERE deployment_id = 2 ORDER BY id")]
    assert [(r, s) for r, s, _ in rows] == [("v1", "promoted"), ("v2", "promoted")]  # the interrupted row finished
    assert "recover" in events and "recovering" in events and events[-1] == "result"
