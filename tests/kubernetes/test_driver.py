"""KubernetesDriver end to end against the API's transport fake and a Prometheus fake (tests/kubernetes/fakeapi.py:
loopback HTTP servers answering with the real JSON shapes; no Kubernetes server can run here) and a fake clock
(virtual time: a canary's pauses and analysis intervals pass at once): rolling, blue-green, canary with and
without a gateway, a canary breach, rollback, keep_previous, recovery after a dead runner, a held Lease."""

from __future__ import annotations

import asyncio
import copy

import pytest

from nonstop.agent.kubernetes import client as kc
from nonstop.agent.kubernetes import state as st
from nonstop.agent.kubernetes.driver import KubernetesDriver
from nonstop.agent.kubernetes.manifests import microtime
from nonstop.agent.kubernetes.runner import Callbacks
from nonstop.agent.kubernetes.shapes import KRelease
from nonstop.errors import DeploymentInProgress, UsageError

from tests.kubernetes.kube import make_cfg

T0 = 1_800_000_000.0
V = {n: KRelease(f"v{n}", f"v{n}", f"registry.example/roomescape:v{n}") for n in range(1, 5)}
GW = {"gateway": {"name": "public", "namespace": "infra"}}


class FakeClock:
    """Virtual time: ``wait`` returns a queued control at once, else moves time on by ``seconds``."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    async def wait(self, queue, seconds):
        if not queue.empty():
            return queue.get_nowait()
        self.t += max(seconds, 0.001)
        await asyncio.sleep(0)
        return queue.get_nowait() if not queue.empty() else None


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []
        self.steps: list[tuple[str, str]] = []
        self.on_event = None

    async def step(self, phase, message, **data):
        self.steps.append((phase, message))

    async def emit(self, type_, message, **data):
        self.events.append((type_, message, data))
        if self.on_event:
            self.on_event(type_, message, data)

    def types(self):
        return [t for t, _m, _d in self.events]


def driver(path, *, holder="ci@runner:1", clock=None, rec=None, prom_url=None, control=None, **over):
    k = {"kubeconfig": path, **over.pop("kubernetes", {})}
    if prom_url:
        k["prometheus"] = prom_url
    cfg = make_cfg(kubernetes=k, **over)
    client = kc.connect(cfg)
    rec = rec or Recorder()
    d = KubernetesDriver(cfg, client, callbacks=Callbacks(rec.step, rec.emit), control=control or asyncio.Queue(),
                         clock=clock or FakeClock(), holder=holder, poll=1.0)
    return d, rec


def template_release(cluster, name):
    d = cluster.get("deployments", name)
    return d["spec"]["template"]["metadata"]["labels"]["nonstop.dev/release"], d["spec"]["replicas"]


def route_weights(cluster):
    r = cluster.get("httproutes", "roomescape")
    return [(b["name"], b["weight"]) for b in r["spec"]["rules"][-1]["backendRefs"]]


def applied_route_weights(cluster):
    out = []
    for r in cluster.requests:
        if r.method == "PATCH" and r.path.endswith("/httproutes/roomescape"):
            import json

            body = json.loads(r.body) if isinstance(r.body, str) else r.body
            w = tuple(b["weight"] for b in body["spec"]["rules"][-1]["backendRefs"])
            if not out or out[-1] != w:
                out.append(w)
    return out


def cluster_state(cluster):
    cm = cluster.get("configmaps", "roomescape-nonstop")
    return st.decode(cm["data"]["state.json"])


def test_rolling_deploys_and_a_crash_looping_release_is_rolled_back(fake):
    cluster, _served, path = fake
    d, rec = driver(path)

    async def go():
        a = await d.deploy(V[1])
        b = await d.deploy(V[2])
        cluster.behaviour["v3"] = "crash"
        c = await d.deploy(V[3])
        return a, b, c

    a, b, c = asyncio.run(go())
    assert (a.state, b.state) == ("promoted", "promoted")
    assert c.state == "rolled_back" and "crash-looping" in c.reason and not c.ok
    assert template_release(cluster, "roomescape") == ("v2", 3)  # the previous template, put back by nonstop
    s = cluster_state(cluster)
    assert s.live == "v2" and s.status_of("v3") == "bad" and s.deployment is None
    assert [x["outcome"] for x in s.deployments] == ["promoted", "promoted", "rolled_back"]
    assert "rollback" in rec.types() and rec.types().count("success") == 2
    lease = cluster.get("leases", "roomescape-nonstop-lock")
    assert "holderIdentity" not in lease["spec"]  # given back after each deploy
    assert cluster.get("poddisruptionbudgets", "roomescape")["spec"]["maxUnavailable"] == 1


def test_blue_green_switch_warm_rollback_in_one_selector_change_and_keep_previous(fake):
    cluster, _served, path = fake
    clock = FakeClock()
    d, rec = driver(path, clock=clock, strategy={"type": "blue-green", "keep_previous": "10m"})

    async def go():
        await d.deploy(V[1])
        out = await d.deploy(V[2])
        return out

    out = asyncio.run(go())
    assert out.ok
    svc = cluster.get("services", "roomescape")
    assert svc["spec"]["selector"]["nonstop.dev/lane"] == "green"
    assert template_release(cluster, "roomescape-green") == ("v2", 3)
    assert template_release(cluster, "roomescape-blue") == ("v1", 3)  # warm
    assert cluster_state(cluster).warm["release"] == "v1"
    before = {k: copy.deepcopy(v) for k, v in cluster.objects.items() if k[0] in ("deployments", "services")}
    t0 = clock.t
    back = asyncio.run(d.rollback())
    assert back.ok and back.release == "v1" and clock.t - t0 < 5  # no pod had to start
    after = {k: v for k, v in cluster.objects.items() if k[0] in ("deployments", "services")}
    changed = sorted(k for k in before.keys() | after.keys()
                     if (before.get(k) or {}).get("spec") != (after.get(k) or {}).get("spec"))
    assert changed == [("services", "roomescape")]
    assert cluster.get("services", "roomescape")["spec"]["selector"]["nonstop.dev/lane"] == "blue"
    s = cluster_state(cluster)
    assert s.live == "v1" and s.status_of("v2") == "bad" and s.warm["release"] == "v2"
    clock.t += 601
    asyncio.run(d.housekeeping())
    assert template_release(cluster, "roomescape-green") == ("v2", 0)
    assert "warm_expired" in rec.types() and cluster_state(cluster).warm is None


def test_canary_with_a_gateway_steps_weights_analyses_and_promotes(fake, prom):
    cluster, _served, path = fake
    url, seen = prom()
    d, rec = driver(path, prom_url=url, kubernetes=GW, strategy={
        "type": "canary", "steps": [{"weight": 10, "pause": "10s"}, {"weight": 50, "pause": "10s"}],
        "analysis": {"interval": "5s", "min_requests": 50, "max_p99": "500ms"}})

    async def go():
        await d.deploy(V[1])
        return await d.deploy(V[2])

    out = asyncio.run(go())
    assert out.state == "promoted", out.reason
    assert applied_route_weights(cluster) == [(100,), (100, 0), (90, 10), (50, 50), (0, 100), (100, 0)]
    assert template_release(cluster, "roomescape") == ("v2", 3)
    assert template_release(cluster, "roomescape-canary")[1] == 0
    analyses = [(m, dd) for t, m, dd in rec.events if t == "analysis"]
    assert analyses and all("pass" in m for m, _ in analyses)
    assert 'pod=~"roomescape-canary-[a-z0-9]+-[a-z0-9]+"' in analyses[0][1]["query"]["requests"]
    assert 'pod=~"roomescape-[a-z0-9]+-[a-z0-9]+"' in analyses[0][1]["stable_query"]["requests"]
    assert any("increase(http_server_requests_seconds_count" in q for q in seen)


def test_a_canary_breach_rolls_back_to_the_stable_release(fake, prom):
    cluster, _served, path = fake
    url, _seen = prom(errors=0.3)
    d, rec = driver(path, prom_url=url, kubernetes=GW, strategy={
        "type": "canary", "steps": [{"weight": 10, "pause": "1m"}, {"weight": 50, "pause": "1m"}],
        "analysis": {"interval": "5s", "failure_limit": 2}})

    async def go():
        await d.deploy(V[1])
        return await d.deploy(V[2])

    out = asyncio.run(go())
    assert out.state == "rolled_back" and "failure_limit 2" in out.reason and "5xx rate 30.0%" in out.reason
    assert applied_route_weights(cluster)[-2:] == [(90, 10), (100, 0)]
    assert route_weights(cluster) == [("roomescape-stable", 100), ("roomescape-canary", 0)]
    assert template_release(cluster, "roomescape") == ("v1", 3)
    assert template_release(cluster, "roomescape-canary")[1] == 0
    failed = [dd for t, _m, dd in rec.events if t == "analysis_failed"]
    assert len(failed) == 2 and "roomescape-canary" in failed[0]["query"]["errors"]
    assert cluster_state(cluster).status_of("v2") == "bad"


def test_canary_without_a_gateway_by_replica_ratio_with_a_manual_step(fake, prom):
    cluster, _served, path = fake
    url, _seen = prom()
    q: asyncio.Queue = asyncio.Queue()
    rec = Recorder()
    rec.on_event = lambda t, m, dd: q.put_nowait("promote") if t == "waiting" and "promote" in m else None
    d, _ = driver(path, prom_url=url, rec=rec, control=q, strategy={
        "type": "canary", "sticky": False, "steps": [{"weight": 25, "pause": "10s"}, {"pause": "manual"}],
        "analysis": {"interval": "5s"}})

    async def go():
        await d.deploy(V[1])
        seen_pods = []
        rec.on_event = lambda t, m, dd: (
            q.put_nowait("promote") if t == "waiting" and "nonstop promote" in dd.get("waiting_for", m) else None,
            seen_pods.append(template_release(cluster, "roomescape-canary")) if t == "weight" else None,
        )
        out = await d.deploy(V[2])
        return out, seen_pods

    # the step machine's manual wait is announced by the canary run through Wait; promote comes from the queue
    out, seen_pods = asyncio.run(go())
    assert out.state == "promoted", out.reason
    assert seen_pods == [("v2", 1)]  # 25% of 3 stable pods: 1 canary pod (1 of 4 endpoints)
    assert cluster.get("httproutes", "roomescape") is None
    assert template_release(cluster, "roomescape") == ("v2", 3)


def test_a_second_operator_is_refused_while_the_lease_is_held(fake):
    cluster, _served, path = fake
    clock = FakeClock()
    cluster.put_object({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": "roomescape-nonstop-lock", "labels": {"app.kubernetes.io/managed-by": "nonstop", "nonstop.dev/app": "roomescape"},
                                     "annotations": {"nonstop.dev/release": "v7", "nonstop.dev/strategy": "canary", "nonstop.dev/started": microtime(T0 - 30)}},
                        "spec": {"holderIdentity": "ci@runner-7:4242", "leaseDurationSeconds": 60, "renewTime": microtime(T0 - 5)}})
    d, _rec = driver(path, holder="alice@laptop:99", clock=clock)
    with pytest.raises(DeploymentInProgress) as e:
        asyncio.run(d.deploy(V[1]))
    assert e.value.exit_code == 4
    assert "ci@runner-7:4242" in e.value.message and "release v7 (canary)" in e.value.message
    assert not [r for r in cluster.requests if r.method in ("PATCH", "DELETE")]  # nothing changed


def test_a_dead_runners_rolling_deploy_is_resumed_by_the_next_nonstop(fake):
    cluster, _served, path = fake
    clock = FakeClock()
    a, rec_a = driver(path, holder="ci@job-1:10", clock=clock)
    asyncio.run(a.deploy(V[1]))

    cluster.behaviour["v2"] = "stall"  # while job 1 runs, v2's pods are slow: it dies mid-rollout, deterministically
    cluster.stall_reads = 10**6

    async def die_mid_rollout():
        task = asyncio.create_task(a.deploy(V[2]))
        while not any(t == "waiting" and "roomescape" in m for t, m, _d in rec_a.events if "v2" in str(rec_a.steps[-1:])):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(die_mid_rollout())
    # as if the job was killed -9: the Lease is still held by it, last renewed long ago
    lease = cluster.get("leases", "roomescape-nonstop-lock")
    lease["spec"].update(holderIdentity="ci@job-1:10", renewTime=microtime(clock.t - 120), leaseDurationSeconds=60)
    cluster.objects[("leases", "roomescape-nonstop-lock")] = lease
    assert cluster_state(cluster).deployment["release"] == "v2"
    cluster.behaviour["v2"] = "good"  # the pods come up in the end
    b, rec_b = driver(path, holder="ci@job-2:20", clock=clock)
    out = asyncio.run(b.recover())
    assert out is not None and out.state == "promoted" and out.release == "v2"
    assert any(t == "recovering" and "resume" in m and "ci@job-1:10" in m for t, m, _d in rec_b.events)
    assert template_release(cluster, "roomescape") == ("v2", 3)
    assert cluster_state(cluster).deployment is None
    assert asyncio.run(b.recover()) is None  # nothing left


def test_a_dead_runners_canary_is_rolled_back_before_the_next_deploy(fake, prom):
    cluster, _served, path = fake
    url, _seen = prom()
    clock = FakeClock()
    # a manual step: job 1 holds at 10% until it dies (never finishes on its own, whatever the timing)
    strat = {"type": "canary", "steps": [{"weight": 10, "pause": "manual"}], "analysis": {"interval": "5s"}}
    a, rec_a = driver(path, holder="ci@job-1:10", clock=clock, prom_url=url, kubernetes=GW, strategy=strat)
    asyncio.run(a.deploy(V[1]))

    async def die_at_ten_percent():
        task = asyncio.create_task(a.deploy(V[2]))
        while not any(t == "weight" for t, _m, _d in rec_a.events):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(die_at_ten_percent())
    assert route_weights(cluster) == [("roomescape-stable", 90), ("roomescape-canary", 10)]  # left split
    lease = cluster.get("leases", "roomescape-nonstop-lock")
    lease["spec"].update(holderIdentity="ci@job-1:10", renewTime=microtime(clock.t - 120))
    cluster.objects[("leases", "roomescape-nonstop-lock")] = lease
    b, rec_b = driver(path, holder="alice@laptop:2", clock=clock, prom_url=url, kubernetes=GW,
                      strategy={"type": "canary", "steps": [{"weight": 50, "pause": "10s"}], "analysis": {"interval": "5s"}})
    out = asyncio.run(b.deploy(V[3]))
    assert [t for t, _m, _d in rec_b.events if t in ("recovering", "recovered")] == ["recovering", "recovered"]
    recovered = next(m for t, m, _d in rec_b.events if t == "recovered")
    assert "rolled_back" in recovered
    assert out.state == "promoted" and out.release == "v3"
    hist = asyncio.run(b.history())
    assert [(h["release"], h["outcome"]) for h in hist][:2] == [("v3", "promoted"), ("v2", "rolled_back")]
    assert cluster.get("leases", "roomescape-nonstop-lock")["spec"]["leaseTransitions"] >= 1


def test_status_and_refusals(fake):
    cluster, _served, path = fake
    d, _rec = driver(path)
    asyncio.run(d.deploy(V[1]))
    s = asyncio.run(d.status())
    assert s["live"] == "v1" and s["lock"] is None and s["context"] == "test"
    [dep] = s["deployments"]
    assert (dep["name"], dep["track"], dep["release"], dep["available"]) == ("roomescape", "main", "v1", 3)
    assert len(dep["pods"]) == 3 and all(p["ready"] and p["release"] == "v1" for p in dep["pods"])
    assert s["service"] == {"name": "roomescape", "selector": {"nonstop.dev/app": "roomescape", "nonstop.dev/lane": "main"}}
    with pytest.raises(UsageError, match="already live"):
        asyncio.run(d.deploy(V[1]))
    with pytest.raises(UsageError, match="no previous release"):
        asyncio.run(d.rollback())
    with pytest.raises(UsageError, match="only a canary can be held"):
        d.check_control("pause")


def test_blue_green_waits_for_promote_then_a_watch_breach_switches_back(fake, prom):
    cluster, _served, path = fake
    url, _seen = prom(errors=0.5, bad="roomescape-green-")  # the new color's pods answer 50% 5xx
    q: asyncio.Queue = asyncio.Queue()
    rec = Recorder()
    d, _ = driver(path, prom_url=url, rec=rec, control=q, strategy={
        "type": "blue-green", "auto_promote": False,
        "analysis": {"watch": "1m", "interval": "5s", "max_error_rate": "1%", "failure_limit": 2}})

    async def go():
        await d.deploy(V[1])
        rec.on_event = lambda t, m, dd: q.put_nowait("promote") if t == "waiting" and dd.get("waiting_for") == "promote" else None
        return await d.deploy(V[2])

    out = asyncio.run(go())
    assert out.state == "rolled_back" and "analysis failed 2 time(s)" in out.reason
    kinds = [t for t, _m, _d in rec.events]
    assert kinds.index("control") < kinds.index("watching") < kinds.index("analysis_failed") < kinds.index("rollback")
    assert cluster.get("services", "roomescape")["spec"]["selector"]["nonstop.dev/lane"] == "blue"
    assert template_release(cluster, "roomescape-green") == ("v2", 0)
    assert template_release(cluster, "roomescape-blue") == ("v1", 3)


def test_a_stalled_rollout_progress_deadline_exceeded_is_rolled_back(fake):
    cluster, _served, path = fake
    d, rec = driver(path)
    cluster.behaviour["v2"] = "stall"

    async def go():
        await d.deploy(V[1])
        return await d.deploy(V[2])

    out = asyncio.run(go())
    assert out.state == "rolled_back" and "ProgressDeadlineExceeded" in out.reason
    assert template_release(cluster, "roomescape") == ("v1", 3)


def test_abort_turns_a_rollout_around(fake):
    cluster, _served, path = fake
    q: asyncio.Queue = asyncio.Queue()
    rec = Recorder()
    d, _ = driver(path, rec=rec, control=q, strategy={"type": "blue-green"})
    cluster.behaviour["v2"] = "stall"
    cluster.stall_reads = 10**6

    async def go():
        await d.deploy(V[1])
        rec.on_event = lambda t, m, dd: q.put_nowait("abort") if t == "waiting" and "roomescape-green" in m else None
        return await d.deploy(V[2])

    out = asyncio.run(go())
    assert out.state == "aborted" and not out.ok, out.reason
    assert template_release(cluster, "roomescape-green") == ("v2", 0)
    assert cluster.get("services", "roomescape")["spec"]["selector"]["nonstop.dev/lane"] == "blue"


def test_blue_green_with_a_gateway_switches_route_weights(fake):
    cluster, _served, path = fake
    d, _rec = driver(path, kubernetes=GW, strategy={"type": "blue-green", "keep_previous": "10m"})

    async def go():
        await d.deploy(V[1])
        a = await d.deploy(V[2])
        b = await d.rollback()
        return a, b

    a, b = asyncio.run(go())
    assert a.ok and b.ok
    assert applied_route_weights(cluster) == [(100,), (100, 0), (0, 100), (100, 0)]
    assert cluster.get("httproutes", "roomescape")["spec"]["parentRefs"][0] == {
        "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "infra"}
    s = cluster_state(cluster)
    assert s.live == "v1" and s.status_of("v2") == "bad"
    # v2 deployed again on purpose: ok again
    assert asyncio.run(d.deploy(V[2])).ok and cluster_state(cluster).status_of("v2") == "ok"


def test_rolling_with_analysis_watches_the_new_pods_and_puts_the_template_back_on_a_breach(fake, prom):
    cluster, _served, path = fake
    url, seen = prom(errors=0.4, bad='pod=~"roomescape-[a-z0-9]+-[a-z0-9]+"')
    d, rec = driver(path, prom_url=url, strategy={"type": "rolling", "analysis": {"watch": "1m", "interval": "5s", "failure_limit": 2}})

    async def go():
        await d.deploy(V[1])  # a first deploy has nothing to compare with and nothing to go back to: no watch
        return await d.deploy(V[2])

    out = asyncio.run(go())
    assert out.state == "rolled_back" and "analysis failed 2 time(s)" in out.reason and "40.0%" in out.reason
    assert template_release(cluster, "roomescape") == ("v1", 3)
    assert [t for t, _m, _d in rec.events].count("analysis_failed") == 2


def test_a_deploy_that_failed_with_an_error_is_finished_by_the_next_one(fake):
    cluster, _served, path = fake
    d, rec = driver(path)
    asyncio.run(d.deploy(V[1]))
    cluster.forbidden.add(("patch", "services"))
    from nonstop.agent.kubernetes.errors import ClusterForbidden

    with pytest.raises(ClusterForbidden, match="cannot patch Service roomescape in namespace roomescape"):
        asyncio.run(d.deploy(V[2]))
    assert cluster_state(cluster).deployment["release"] == "v2"  # left in progress: not silently dropped
    assert "holderIdentity" not in cluster.get("leases", "roomescape-nonstop-lock")["spec"]  # but the lock is given back
    cluster.forbidden.clear()  # the Role is fixed
    d.control.put_nowait("abort")  # a stale control from before: not for the next operation
    out = asyncio.run(d.deploy(V[3]))
    assert out.ok and out.release == "v3"
    assert any(t == "recovering" and "v2" in m for t, m, _d in rec.events)
    assert [(h["release"], h["outcome"]) for h in asyncio.run(d.history())][:2] == [("v3", "promoted"), ("v2", "promoted")]


def test_a_route_the_gateway_refuses_stops_the_rollout(fake):
    cluster, _served, path = fake
    d, rec = driver(path, kubernetes=GW, strategy={"type": "blue-green"})
    assert asyncio.run(d.deploy(V[1])).ok
    assert any("waiting for Gateway public to accept HTTPRoute roomescape" in m for t, m, _d in rec.events if t == "waiting")
    cluster.gateway_accepts = False
    out = asyncio.run(d.deploy(V[2]))
    assert out.state == "failed"  # going back needs the route too: the gateway refuses it as well
    assert "Gateway public does not accept HTTPRoute roomescape: NotAllowedByListeners" in out.reason


def test_release_ids_come_from_the_clusters_history(fake):
    _cluster, _served, path = fake
    d, _rec = driver(path)

    async def go():
        a = await d.new_release("1.4.0")
        await d.deploy(a)
        same = await d.new_release("1.4.0")
        other = await d.new_release("1.4.0", image="registry.example/roomescape:hotfix")
        return a, same, other

    a, same, other = asyncio.run(go())
    assert (a.id, a.image) == ("1.4.0", "registry.example/roomescape:1.4.0")
    assert same.id == "1.4.0" and same.created == a.created
    assert other.id == "1.4.0-2" and other.image == "registry.example/roomescape:hotfix"
    with pytest.raises(UsageError, match="invalid version"):
        asyncio.run(d.new_release("bad version"))


def test_canary_controls_promote_full_and_abort(fake, prom):
    cluster, _served, path = fake
    url, _seen = prom()
    strat = {"type": "canary", "sticky": False, "steps": [{"weight": 10, "pause": "10m"}, {"weight": 50, "pause": "10m"}],
             "analysis": {"interval": "5s"}}
    q: asyncio.Queue = asyncio.Queue()
    rec = Recorder()
    d, _ = driver(path, prom_url=url, rec=rec, control=q, strategy=strat)

    async def go():
        await d.deploy(V[1])
        # promote --full while the first step holds: 100% at once, the remaining pause skipped
        rec.on_event = lambda t, m, dd: q.put_nowait("promote_full") if t == "weight" else None
        a = await d.deploy(V[2])
        # abort while the first step's pod starts: traffic stays on the stable side, the canary stops
        rec.on_event = lambda t, m, dd: q.put_nowait("abort") if t == "waiting" and "roomescape-canary" in m else None
        b = await d.deploy(V[3])
        return a, b

    a, b = asyncio.run(go())
    assert a.state == "promoted" and "promoted to 100% by the user" in a.reason
    assert b.state == "aborted" and not b.ok
    assert template_release(cluster, "roomescape") == ("v2", 3)
    assert template_release(cluster, "roomescape-canary")[1] == 0
    with pytest.raises(UsageError):
        d.check_control("bogus")


def test_recreate_replaces_every_pod_and_a_crash_looping_release_is_rolled_back(fake):
    """Kubernetes' own Recreate: the Deployment's strategy says so, the old pods go before the new ones
    start (the fake API's controller does it as the real one does), and a release that never gets ready
    is put back by nonstop to the previous template."""
    cluster, _served, path = fake
    d, rec = driver(path, strategy={"type": "recreate"})

    async def go():
        a = await d.deploy(V[1])
        b = await d.deploy(V[2])
        cluster.behaviour["v3"] = "crash"
        c = await d.deploy(V[3])
        return a, b, c

    a, b, c = asyncio.run(go())
    dep = cluster.get("deployments", "roomescape")
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    assert (a.state, b.state) == ("promoted", "promoted")
    assert c.state == "rolled_back" and not c.ok, c
    assert template_release(cluster, "roomescape") == ("v2", 3)
    s = cluster_state(cluster)
    assert s.live == "v2" and s.status_of("v3") == "bad" and s.deployment is None
    assert [x["outcome"] for x in s.deployments] == ["promoted", "promoted", "rolled_back"]
