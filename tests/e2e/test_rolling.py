"""Rolling updates (and blue-green with several instances) end to end, under load.

- rolling over 3 instances: zero failed requests, and the number of healthy routed instances,
  sampled from ``nonstop status --json`` throughout, never below ``instances − max_unavailable``;
- a rolling update whose third new instance never turns healthy: rolled back (the replaced
  old instances started again within the same limits), zero failed requests, 3 old serving;
- blue-green with ``instances: 2``.
"""

from __future__ import annotations

import time

import pytest

from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import StatusSampler, nth_start_fails_artifact, serving, warm
from tests.e2e.artifacts import RUN_COMMAND, make_artifact

LOAD = dict(rate=60, keepalive=3, new=2, post=1, slow=1, slow_ms=500, timeout=15)


@pytest.fixture
def arts(tmp_path):
    d = tmp_path / "artifacts"
    return {"good": make_artifact(d, "good", "--boot-seconds", "0.3")}


def rolling_stack(stack_factory, n: int, surge, unavailable, **kw):
    from nonstop.config import resolve_count

    ports = n + resolve_count(surge, n, round_up=True)
    return stack_factory(
        n_ports=ports,
        run={"command": RUN_COMMAND, "instances": n},
        strategy={"type": "rolling", "max_surge": surge, "max_unavailable": unavailable},
        **kw,
    )


@pytest.mark.parametrize("surge,unavailable", [(1, 0), (0, 1)])
def test_rolling_over_three_instances(stack_factory, arts, surge, unavailable):
    n = 3
    floor = n - unavailable
    st = rolling_stack(stack_factory, n, surge, unavailable)
    st.deploy("v1", "--artifact", str(arts["good"]))
    s0 = st.status()
    assert serving(s0) == n, s0["instances"]
    with LoadClient(st.url, **LOAD) as load, StatusSampler(st) as sampler:
        warm(load, 60, stack=st)
        t0 = time.monotonic()
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        took = time.monotonic() - t0
        warm(load, 60, stack=st)
    result = load.result
    assert res["ok"] and res["state"] == "promoted", res
    assert result.failed == 0, result.format()
    counts = [serving(s) for _, s in sampler.samples]
    mixed = [s for _, s in sampler.samples if len({i["release"] for i in s["instances"] if i["routed"]}) == 2]
    print(
        f"\nrolling n={n} surge={surge} unavailable={unavailable}: {result.total} requests, 0 failed, "
        f"{len(counts)} status samples, serving min {min(counts)} max {max(counts)} (floor {floor}), "
        f"{len(mixed)} samples with both versions routed, deploy {took:.1f}s"
    )
    assert len(counts) >= 5 and min(counts) >= floor, counts
    assert max(len(s["instances"]) for _, s in sampler.samples) <= n + surge
    batches = [e for e in res["events"] if e["type"] == "step" and e.get("phase") in ("starting", "batch")]
    assert len(batches) == (3 if surge == 1 else 4), [e["message"] for e in batches]
    st_json = st.status()
    assert st_json["live_release"] == "v2" and serving(st_json) == n
    assert {i["release"] for i in st_json["instances"]} == {"v2"}
    # both versions answered during the rollout, then only v2
    versions = [r.version for r in sorted(result.records, key=lambda r: r.end) if r.ok]
    assert versions[-1] == "v2" and "v1" in versions


def test_rolling_third_instance_fails_health_is_rolled_back(stack_factory, arts, tmp_path):
    n = 3
    st = rolling_stack(stack_factory, n, 1, 0, health={"startup_timeout": "3s"})
    st.deploy("v1", "--artifact", str(arts["good"]))
    bad = nth_start_fails_artifact(tmp_path / "artifacts", "third-fails", (3,), "--boot-seconds", "0.3")
    with LoadClient(st.url, **LOAD) as load, StatusSampler(st) as sampler:
        warm(load, 60, stack=st)
        t0 = time.monotonic()
        res = st.deploy("v2", "--artifact", str(bad), expect=1)
        took = time.monotonic() - t0
        warm(load, 60, stack=st)
    result = load.result
    assert res["state"] == "rolled_back", res
    assert "did not become healthy" in res["reason"], res["reason"]
    assert res["detail"].get("log_tail") is not None and res["detail"].get("checks"), res["detail"]
    assert result.failed == 0, result.format()
    counts = [serving(s) for _, s in sampler.samples]
    print(
        f"\nrolling rollback: {result.total} requests, 0 failed, serving min {min(counts)} (floor {n}), "
        f"{len(counts)} samples, deploy+rollback {took:.1f}s"
    )
    assert min(counts) >= n, counts
    st_json = st.status()
    assert st_json["live_release"] == "v1" and serving(st_json) == n
    assert {i["release"] for i in st_json["instances"]} == {"v1"}, st_json["instances"]
    versions = [r.version for r in sorted(result.records, key=lambda r: r.end) if r.ok]
    assert "v2" in versions and versions[-1] == "v1"
    # the two old instances it had replaced were started again
    started_again = [e for e in res["events"] if e["type"] == "instance_starting" and e["message"].startswith("starting v1")]
    assert len(started_again) == 2, [e["message"] for e in res["events"]]


def test_blue_green_with_two_instances(stack_factory, arts):
    st = stack_factory(n_ports=4, run={"command": RUN_COMMAND, "instances": 2})
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 60, stack=st)
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        warm(load, 60, stack=st)
    assert res["ok"], res
    result = load.result
    assert result.failed == 0, result.format()
    st_json = st.status()
    routed = [i for i in st_json["instances"] if i["routed"]]
    assert len(routed) == 2 and {i["release"] for i in routed} == {"v2"}
    assert [len(r["targets"]) for r in st_json["routes"]] == [2]


def test_rolling_abort_mid_rollout_rolls_back(stack_factory, arts, tmp_path):
    """`nonstop abort` while the second batch boots: the replaced instance comes back, zero failures."""
    n = 3
    st = rolling_stack(stack_factory, n, 1, 0)
    st.deploy("v1", "--artifact", str(arts["good"]))
    slow = make_artifact(tmp_path / "artifacts", "slowboot", "--boot-seconds", "3")
    with LoadClient(st.url, **LOAD) as load, StatusSampler(st) as sampler:
        warm(load, 60, stack=st)
        proc = st.cli_async("deploy", "--version", "v2", "--artifact", str(slow), "--json")
        try:
            def second_batch():
                d = st.status().get("deployment") or {}
                return (d.get("rolling") or {}).get("batch") == 2
            from tests.e2e.helpers import wait_for

            wait_for(second_batch, timeout=60, interval=0.2, what="the second batch")
            r = st.cli("pause")
            assert r.code == 2 and "cannot be paused" in (r.out + r.err)
            assert st.cli("abort").code == 0
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        warm(load, 60, stack=st)
    import json

    assert proc.returncode == 1, (out[-2000:], err[-2000:])
    res = json.loads(out)
    assert res["state"] == "aborted", res
    result = load.result
    assert result.failed == 0, result.format()
    counts = [serving(s) for _, s in sampler.samples]
    assert min(counts) >= n, counts
    st_json = st.status()
    assert st_json["live_release"] == "v1" and serving(st_json) == n
    assert {i["release"] for i in st_json["instances"]} == {"v1"}, st_json["instances"]
    print(f"\nrolling abort: {result.total} requests, 0 failed, serving min {min(counts)} (floor {n})")
