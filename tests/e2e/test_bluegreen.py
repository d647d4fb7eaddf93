"""Blue-green, recreate, failed deploys and rollback, under load, with the embedded proxy.

Every test runs the real agent, the real proxy and real app processes, with a
load client (keep-alive and new connections, POSTs with bodies, 1-second
requests) counting every failed request; each asserts zero.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from nonstop.testing.load import LoadClient
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import wait_for

LOAD = dict(rate=80, keepalive=3, new=2, post=2, slow=2, slow_ms=1000, timeout=15)


@pytest.fixture
def arts(tmp_path):
    d = tmp_path / "artifacts"
    return {
        "good": make_artifact(d, "good", "--boot-seconds", "0.5"),
        "down": make_artifact(d, "down", "--boot-seconds", "0.3", "--health", "DOWN"),
        "slowboot": make_artifact(d, "slowboot", "--boot-seconds", "4"),
        "crash": make_artifact(d, "crash", "--boot-seconds", "0.2", "--die-after-seconds", "0.5"),
    }


def bg(stack_factory, **kw):
    kw.setdefault("run", {})
    kw["run"] = {"command": RUN_COMMAND, **kw["run"]}
    return stack_factory(**kw)


def live_versions(result) -> list[str]:
    return [r.version for r in sorted(result.records, key=lambda r: r.end) if r.ok and r.kind != "slow"]


def test_blue_green_deploy_under_load_fails_no_request(stack_factory, arts):
    st = bg(stack_factory)
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(100, timeout=20)
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        assert res["ok"] and res["release"] == "v2"
        load.wait_served(load.served + 100, timeout=20)
    result = load.result
    assert result.failed == 0, result.format()
    versions = live_versions(result)
    assert "v1" in versions and versions[-1] == "v2"
    # once v2 took over, no v1 answer came after it (a switch, not a mix)
    first_v2 = versions.index("v2")
    assert "v1" not in versions[first_v2 + 5:], result.format()
    st_json = st.status()
    assert st_json["live_release"] == "v2"
    assert [r["release"] for r in st_json["routes"]] == ["v2"]
    # the old color is kept warm for an instant rollback
    warm = [i for i in st_json["instances"] if i["release"] == "v1"]
    assert warm and warm[0]["alive"] and not warm[0]["routed"] and warm[0]["warm_until"]


def test_deploy_whose_health_never_turns_up_is_refused_and_traffic_untouched(stack_factory, arts):
    st = bg(stack_factory, health={"startup_timeout": "3s"})
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
        res = st.deploy("v2", "--artifact", str(arts["down"]), expect=1)
        assert not res["ok"]
        assert "healthy" in res["reason"]
        assert any("DOWN" in c or "503" in c for c in res["detail"]["checks"]), res["detail"]
        assert res["detail"]["log_tail"]  # the new instance's log explains itself
        load.wait_served(load.served + 50, timeout=20)
    assert load.result.failed == 0, load.result.format()
    assert set(load.result.by_version()) == {"v1"}
    s = st.status()
    assert s["live_release"] == "v1"
    assert not [i for i in s["instances"] if i["release"] == "v2"], "the refused release left instances running"
    hist = st.cli("history", "--json", check=True).json
    assert hist["deployments"][0]["outcome"] in ("failed", "rolled_back")


def test_rollback_while_warm_is_instant_and_fails_no_request(stack_factory, arts):
    st = bg(stack_factory)
    st.deploy("v1", "--artifact", str(arts["good"]))
    st.deploy("v2", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(80, timeout=20)
        t0 = time.monotonic()
        r = st.cli("rollback", "--json")
        took = time.monotonic() - t0
        assert r.code == 0, r.out + r.err
        events = r.json["events"]
        assert any(e.get("instant") for e in events), "v1 was warm: the rollback must not start instances"
        assert not any(e["type"] == "instance_starting" for e in events)
        load.wait_served(load.served + 80, timeout=20)
    assert load.result.failed == 0, load.result.format()
    assert live_versions(load.result)[-1] == "v1"
    assert st.status()["live_release"] == "v1"
    assert took < 20  # bounded by drain of in-flight 1 s requests, not by a boot
    # v2 was rolled back as bad: a plain `rollback` now skips it
    hist = st.cli("history", "--json", check=True).json
    assert {r["id"]: r["status"] for r in hist["releases"]}["v2"] == "bad"
    r = st.cli("rollback")
    assert r.code == 2 and "no previous release" in r.err


def test_rollback_to_a_cold_release_starts_it_first(stack_factory, arts):
    st = bg(stack_factory, strategy={"type": "blue-green", "keep_previous": "0s"})
    st.deploy("v1", "--artifact", str(arts["good"]))
    st.deploy("v2", "--artifact", str(arts["good"]))
    wait_for(lambda: not [i for i in st.status()["instances"] if i["release"] == "v1"], timeout=15, what="v1 stopped")
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
        r = st.cli("rollback", "--to", "v1", "--json")
        assert r.code == 0, r.out + r.err
        assert any(e["type"] == "instance_starting" for e in r.json["events"])
        load.wait_served(load.served + 50, timeout=20)
    assert load.result.failed == 0, load.result.format()
    assert st.status()["live_release"] == "v1"


def test_recreate_holds_requests_instead_of_failing(stack_factory, arts):
    st = bg(stack_factory, strategy={"type": "recreate"})
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
        st.deploy("v2", "--artifact", str(arts["good"]))
        load.wait_served(load.served + 50, timeout=20)
    result = load.result
    assert result.failed == 0, result.format()
    assert live_versions(result)[-1] == "v2"
    # the gap is real (nothing was running) but users only waited
    assert result.longest_gap().seconds > 0.3


def test_second_deploy_while_one_runs_exits_4_and_names_it(stack_factory, arts):
    st = bg(stack_factory)
    st.deploy("v1", "--artifact", str(arts["good"]))
    first = st.cli_async("deploy", "--version", "v2", "--artifact", str(arts["slowboot"]))
    try:
        wait_for(lambda: st.status()["deployment"], timeout=10, what="deployment to start")
        r = st.cli("deploy", "--version", "v3", "--artifact", str(arts["good"]))
        assert r.code == 4, r.out + r.err
        assert "v2" in r.err and "blue-green" in r.err
    finally:
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert st.status()["live_release"] == "v2"


def test_agent_killed_mid_deployment_traffic_flows_and_restart_rolls_back(stack_factory, arts):
    st = bg(stack_factory)
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
        dep = st.cli_async("deploy", "--version", "v2", "--artifact", str(arts["slowboot"]))
        wait_for(lambda: any(i["release"] == "v2" for i in st.status()["instances"]), timeout=15, what="v2 starting")
        agent_pid = st.pid("agent")
        os.kill(agent_pid, signal.SIGKILL)
        dep.communicate(timeout=30)
        assert dep.returncode != 0
        # traffic keeps flowing with no agent at all
        load.wait_served(load.served + 100, timeout=20)
        st.cli("up", "--detach", "--timeout", "60", check=True)
        s = wait_for(lambda: (lambda s: s if s["deployment"] is None else None)(st.status()), timeout=30, what="recovery")
        load.wait_served(load.served + 50, timeout=20)
    assert load.result.failed == 0, load.result.format()
    assert s["live_release"] == "v1"
    assert not [i for i in s["instances"] if i["release"] == "v2"], s["instances"]
    hist = st.cli("history", "--json", check=True).json
    assert hist["deployments"][0]["outcome"] == "rolled_back"
    assert "agent" in hist["deployments"][0]["reason"]


def test_instance_killed_after_go_live_is_replaced_without_failed_requests(stack_factory, arts):
    """kill -9 of a live instance: every request sent after the kill succeeds (the proxy retries
    refused connections on the sibling, and replays a bodiless GET whose reused connection closed
    unanswered); only a request the dead process had already received and that may not be
    replayed (a POST, or one on a connection opened for it) can fail (docs/internals.md)."""
    st = bg(stack_factory, n_ports=4, run={"instances": 2})
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
        victim = next(i for i in st.status()["instances"] if i["routed"])
        os.kill(victim["pid"], signal.SIGKILL)
        # The process dies a few milliseconds after kill() returns; until then it still accepts.
        wait_for(lambda: not _running(victim["pid"]), timeout=5, interval=0.001, what="the victim to die")
        t_dead = time.monotonic()
        # taken out of rotation, restarted, back in
        wait_for(
            lambda: any(i["id"] == victim["id"] and i["pid"] != victim["pid"] and i["routed"] and i["state"] == "healthy"
                        for i in st.status()["instances"]),
            timeout=30, what="the killed instance to be restarted and routed again",
        )
        load.wait_served(load.served + 50, timeout=20)
    res = load.result
    # Known race, documented in docs/internals.md: a request can reach the dead instance in the
    # same few milliseconds as its death (before the proxy's loop has seen the close).
    around_the_death = [f for f in res.failures if f.start < t_dead + 0.05]
    assert len(res.failures) == len(around_the_death), res.format()
    assert len(around_the_death) <= 3, res.format()
    restarted = next(i for i in st.status()["instances"] if i["id"] == victim["id"])
    assert restarted["restarts"] == 1


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_blue_green_with_two_instances(stack_factory, arts):
    st = bg(stack_factory, n_ports=4, run={"instances": 2})
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
        st.deploy("v2", "--artifact", str(arts["good"]))
        load.wait_served(load.served + 50, timeout=20)
    assert load.result.failed == 0, load.result.format()
    routes = st.status()["routes"]
    assert routes[0]["release"] == "v2" and len(routes[0]["targets"]) == 2


def test_deploy_strategy_blue_green_over_a_recreate_block_keeps_the_old_color_warm(stack_factory, arts):
    st = bg(stack_factory, strategy={"type": "recreate"})
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
        res = st.deploy("v2", "--artifact", str(arts["good"]), "--strategy", "blue-green")
        assert [e for e in res["events"] if e["type"] == "kept_warm"], res["events"]  # blue-green's own keep_previous
        r = st.cli("rollback", "--json")
        assert r.code == 0, r.out + r.err
        assert any("switching to warm v1" in e["message"] for e in r.json["events"]), r.json["events"]
        load.wait_served(load.served + 50, timeout=20)
    assert load.result.failed == 0, load.result.format()


def test_blue_green_waiting_for_promote_switches_only_on_promote_and_refuses_what_it_cannot_do(stack_factory, arts):
    st = bg(stack_factory, strategy={"type": "blue-green", "auto_promote": False})
    v1 = st.cli_async("deploy", "--version", "v1", "--artifact", str(arts["good"]))
    wait_for(lambda: (st.status()["deployment"] or {}).get("state") == "paused", timeout=30, what="v1 waiting")
    assert st.cli("promote").code == 0 and v1.wait(30) == 0
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(40, timeout=20)
        early = None
        first = st.cli_async("deploy", "--version", "v2", "--artifact", str(arts["slowboot"]), "--json")
        try:
            wait_for(lambda: st.status()["deployment"], timeout=10, what="the deployment to start")
            early = st.cli("promote")  # v2 still booting: nothing to promote yet, and nothing queued
            assert early.code == 2 and "starting the new color" in early.err, early.out + early.err
            wait_for(lambda: (st.status()["deployment"] or {}).get("state") == "paused", timeout=30,
                     what="the deploy waiting for promote")
            r = st.cli("pause")
            assert r.code == 2 and "waiting for `nonstop promote`" in r.err, r.out + r.err
            assert set(load.snapshot().by_version()) == {"v1"}  # nothing switched while it waits
            assert st.cli("promote").code == 0
            out, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        assert first.returncode == 0, out + err
        load.wait_served(load.served + 40, timeout=20)
    assert load.result.failed == 0, load.result.format()
    assert st.status()["live_release"] == "v2"
