"""Canary deployments end to end: real agent, proxy and app processes, under load.

Figures each test asserts:
- a good canary through all its steps: zero failed requests, then 100% on the new version;
- sticky users: each user's answers change version at most once (old → new), never back;
- a faulty canary (500 for a third of ``GET /``): rolled back by the analysis, with its failed
  requests bounded by what the canary could receive before the rollback (see ``canary_bound``);
- a header match reaching the canary at 0%; steering with pause / resume / promote / abort.
"""

from __future__ import annotations

import time

import pytest

from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import StickyUsers, canary_of, warm
from tests.e2e.artifacts import RUN_COMMAND, good_and_faulty
from tests.e2e.helpers import wait_for

# Bounded load (the machine is shared): ≤ 100 req/s in total with the sticky users.
LOAD = dict(rate=50, keepalive=3, new=2, post=1, slow=1, slow_ms=500, timeout=15)


@pytest.fixture
def arts(tmp_path):
    d = tmp_path / "artifacts"
    return good_and_faulty(d)


def canary_stack(stack_factory, *, instances: int = 1, **strategy):
    strat = {"type": "canary", **strategy}
    return stack_factory(
        n_ports=2 * instances,
        run={"command": RUN_COMMAND, "instances": instances},
        strategy=strat,
        health={"startup_timeout": "15s"},
    )


def by_version(records) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        if r.ok:
            out[r.version] = out.get(r.version, 0) + 1
    return out


def test_good_canary_through_all_steps_with_sticky_users(stack_factory, arts):
    """Two instances per side; 10% → 50% → 100% with analysis passing at each step; zero failures."""
    st = canary_stack(
        stack_factory,
        instances=2,
        steps=[{"weight": 10, "pause": "2s"}, {"weight": 50, "pause": "2s"}],
        sticky=True,
        analysis={"interval": "1s", "min_requests": 15, "max_error_rate": 0.01, "failure_limit": 2},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    host, port = "127.0.0.1", st.listen
    with LoadClient(st.url, **LOAD) as load, StickyUsers(host, port, users=20, rate=40) as users:
        warm(load, 50, stack=st)
        t0 = time.monotonic()
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        took = time.monotonic() - t0
        warm(load, 50, stack=st)
        time.sleep(1.0)
    result = load.result
    assert res["ok"] and res["state"] == "promoted", res
    assert result.failed == 0, result.format()
    assert users.failures == [], users.failures[:5]

    # each step was applied, and left only after a passing analysis
    types = [(e["type"], e.get("weight"), e.get("verdict")) for e in res["events"]]
    weights = [w for t, w, _ in types if t == "weight"]
    assert weights == [10, 50], types
    for w in (10, 50):
        assert any(t == "analysis" and v == "pass" and e.get("weight") == w for (t, _, v), e in zip(types, res["events"])), types
    assert took >= 4.0  # two 2s pauses

    # sticky users: a user moves from v1 to v2 at most once, never back
    flips = users.flips()
    assert len(flips) == 20
    for user, seq in flips.items():
        assert seq in (["v1"], ["v2"], ["v1", "v2"]), (user, users.buckets[user], seq)
    # everyone started on v1 and is on v2 at the end: each user moved exactly once
    assert all(seq == ["v1", "v2"] for seq in flips.values()), flips
    # raising the weight only added users: buckets < 10 moved at 10%, 10..49 at 50%, the rest at 100%
    first_v2: dict[int, float] = {}
    for s in users.seen:
        if s.version == "v2":
            first_v2.setdefault(s.bucket, s.t)
    groups = [[t for b, t in first_v2.items() if lo <= b < hi] for lo, hi in ((0, 10), (10, 50), (50, 100))]
    assert all(groups), groups
    assert max(groups[0]) < min(groups[1]) and max(groups[1]) < min(groups[2]), groups
    st_json = st.status()
    assert st_json["live_release"] == "v2"
    assert [r["release"] for r in st_json["routes"]] == ["v2"]
    v1_left = [i for i in st_json["instances"] if i["release"] == "v1"]
    assert v1_left == [], v1_left
    print(f"\ngood canary: {result.total} load requests, {len(users.seen)} sticky-user requests, 0 failed, deploy {took:.1f}s")


def canary_bound(weight: float, rate: float, min_requests: int, interval: float, failure_limit: int, slack: float) -> float:
    """Most requests the canary can receive from the weight being applied to the rollback.

    A window ends at the first analysis tick (every ``interval``) that has ``min_requests``
    canary requests, so holds at most ``min_requests + weight·rate·interval`` of them;
    ``failure_limit`` failed windows roll back; ``slack`` seconds cover reading stats, the
    route change and requests in flight, at ``weight·rate``.
    """
    per_s = weight * rate
    return failure_limit * (min_requests + per_s * interval) + per_s * slack


def test_faulty_canary_is_rolled_back_with_bounded_failures(stack_factory, arts):
    weight, min_req, interval, limit = 20, 20, 1.0, 2
    rate = 60.0
    st = canary_stack(
        stack_factory,
        steps=[{"weight": weight, "pause": "60s"}, {"weight": 100, "pause": "1s"}],
        sticky=False,  # weights split requests, not users: the canary gets weight% of the load
        analysis={"interval": f"{interval}s", "min_requests": min_req, "max_error_rate": 0.05, "failure_limit": limit},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    load_cfg = dict(rate=rate, keepalive=4, new=2, post=0, slow=0, timeout=15)
    with LoadClient(st.url, **load_cfg) as load:
        warm(load, 60, stack=st)
        t0 = time.monotonic()
        res = st.deploy("v2", "--artifact", str(arts["faulty"]), expect=1)
        took = time.monotonic() - t0
        warm(load, 120, stack=st)  # ~2s more on the stable release only
    result = load.result
    assert res["state"] == "rolled_back", res
    assert "analysis failed 2 time(s)" in res["reason"] and "canary 5xx rate" in res["reason"], res["reason"]
    assert res["detail"]["analysis"] and res["detail"]["analysis"][-1]["verdict"] == "fail"

    failures = result.failures
    bound = canary_bound(weight / 100, rate, min_req, interval, limit, slack=3.0)
    canary_served = sum(1 for r in result.records if r.version == "v2")
    print(
        f"\nfaulty canary: {len(failures)} failed of {result.total} requests "
        f"({canary_served} answered by v2 incl. 500s); bound {bound:.0f}; rolled back after {took:.1f}s"
    )
    assert 0 < len(failures) <= bound, result.format()
    assert canary_served <= bound  # the bound is on what the canary could receive at all
    # every failure is the faulty version's own 500, none a proxy or connection error
    assert all(r.status == 500 and r.version == "v2" for r in failures), result.format()
    # and none after the rollback
    done = max(r.end for r in failures)
    assert all(r.ok for r in result.records if r.start > done + 0.5)
    st_json = st.status()
    assert st_json["live_release"] == "v1" and [r["release"] for r in st_json["routes"]] == ["v1"]
    assert not [i for i in st_json["instances"] if i["release"] == "v2"]
    hist = st.cli("history", "--json", check=True).json
    assert hist["deployments"][0]["outcome"] == "rolled_back"
    assert [r["status"] for r in hist["releases"] if r["id"] == "v2"] == ["bad"]


def test_header_match_reaches_the_canary_at_zero_then_abort(stack_factory, arts):
    st = canary_stack(
        stack_factory,
        steps=[{"weight": 0, "pause": "manual"}, {"weight": 50, "pause": "1s"}],
        match={"header": {"X-Canary": "1"}},
        analysis={"interval": "1s", "min_requests": 5},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 50, stack=st)
        proc = st.cli_async("deploy", "--version", "v2", "--artifact", str(arts["good"]), "--json")
        try:
            cn = wait_for(lambda: canary_of(st.status()) if (canary_of(st.status()) or {}).get("phase") == "paused_manual" else None,
                          timeout=60, interval=0.3, what="the manual step")
            assert cn["weight"] == 0 and cn["step"] == 1 and cn["steps"] == 2
            assert "nonstop promote" in cn["waiting_for"]
            assert st.status()["deployment"]["state"] == "paused"
            with StickyUsers("127.0.0.1", st.listen, users=5, rate=20, headers={"X-Canary": "1"}) as matched, \
                 StickyUsers("127.0.0.1", st.listen, users=5, rate=20) as plain:
                time.sleep(2.0)
            assert {s.version for s in matched.seen} == {"v2"} and len(matched.seen) > 10
            assert {s.version for s in plain.seen} == {"v1"} and len(plain.seen) > 10
            # resume is refused at a manual step (the CLI says why, exit 2)
            r = st.cli("resume")
            assert r.code == 2 and "nonstop promote" in (r.err + r.out)
            assert st.cli("abort").code == 0
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        warm(load, 50, stack=st)
    assert proc.returncode == 1, (out[-2000:], err[-2000:])
    import json

    res = json.loads(out)
    assert res["state"] == "aborted" and "aborted by the user" in res["reason"], res
    result = load.result
    assert result.failed == 0, result.format()
    assert by_version(result.records).get("v2") is None  # plain load never saw the canary at 0%
    st_json = st.status()
    assert st_json["live_release"] == "v1" and not [i for i in st_json["instances"] if i["release"] == "v2"]


def test_steering_pause_resume_promote_full(stack_factory, arts):
    st = canary_stack(
        stack_factory,
        steps=[{"weight": 10, "pause": "10m"}, {"weight": 50, "pause": "manual"}, {"weight": 80, "pause": "10m"}],
        sticky=False,
        analysis={"interval": "1s", "min_requests": 5},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 50, stack=st)
        proc = st.cli_async("deploy", "--version", "v2", "--artifact", str(arts["good"]), "--json")
        try:
            def at(phase, weight):
                def pred():
                    cn = canary_of(st.status())
                    return cn if cn and cn["phase"] == phase and cn["weight"] == weight else None
                return wait_for(pred, timeout=60, interval=0.3, what=f"{phase} at {weight}%")

            cn = at("progressing", 10)
            assert "pause of step 1/3 ends in" in cn["waiting_for"]
            assert st.cli("pause").code == 0
            cn = at("paused_user", 10)
            assert st.status()["deployment"]["state"] == "paused"
            r = st.cli("pause")
            assert r.code == 2 and "already paused" in (r.err + r.out)
            assert st.cli("resume").code == 0
            at("progressing", 10)
            assert st.cli("promote").code == 0  # skips the 10 minutes
            at("paused_manual", 50)
            # analysis goes on while paused (every analysis.interval, 1 s here): its results are shown
            cn = wait_for(lambda: (lambda c: c if c and c["weight"] == 50 and c["analysis"] else None)(
                canary_of(st.status())), timeout=30, interval=0.3, what="an analysis result at 50%")
            assert cn["phase"] == "paused_manual", cn
            human = st.cli("status")
            assert "canary weight 50%" in human.out and "step 2/3" in human.out, human.out
            assert st.cli("promote", "--full").code == 0
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        warm(load, 50, stack=st)
    assert proc.returncode == 0, (out[-2000:], err[-2000:])
    result = load.result
    assert result.failed == 0, result.format()
    st_json = st.status()
    assert st_json["live_release"] == "v2" and [r["release"] for r in st_json["routes"]] == ["v2"]


def test_too_little_traffic_waits_instead_of_promoting(stack_factory, arts):
    """Inconclusive is not a pass: past its pause the step waits, saying for how many requests, and says
    that the share received is far from the weight (every user here keeps a bucket the canary does not have)."""
    st = canary_stack(
        stack_factory,
        steps=[{"weight": 10, "pause": "1s"}],
        sticky=True,
        analysis={"interval": "1s", "min_requests": 10},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    # Users who keep their cookies, all in buckets 10..99: at 10% none of them reaches the canary.
    with StickyUsers("127.0.0.1", st.listen, rate=80, buckets=[20, 35, 50, 65, 80, 95]) as late:
        time.sleep(0.5)
        proc = st.cli_async("deploy", "--version", "v2", "--artifact", str(arts["good"]), "--json")
        try:
            def waiting():
                cn = canary_of(st.status())
                return cn if cn and cn["phase"] == "waiting_analysis" and "more requests" in cn["waiting_for"] else None

            cn = wait_for(waiting, timeout=60, interval=0.3, what="waiting for requests")
            assert "waiting for 10 more requests to the canary" in cn["waiting_for"], cn
            assert cn["analysis"][-1]["verdict"] == "inconclusive"
            time.sleep(3.0)
            cn = canary_of(st.status())
            assert proc.poll() is None and cn["phase"] == "waiting_analysis"
            assert cn["received"]["canary"] == 0 and cn["received"]["stable"] > 0, cn["received"]
            # users in buckets 0..9 arrive: the analysis passes, the rollout goes on
            with StickyUsers("127.0.0.1", st.listen, rate=20, buckets=[1, 4, 7]) as early:
                out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, (out[-2000:], err[-2000:])
    import json

    res = json.loads(out)
    msgs = [e["message"] for e in res["events"]]
    assert any(e["type"] == "waiting" and "more requests" in e["message"] for e in res["events"]), msgs
    skews = [e for e in res["events"] if e["type"] == "split_skew"]
    assert len(skews) == 1 and "received 0.0% of" in skews[0]["message"] and "nonstop_bucket cookie" in skews[0]["message"], msgs
    verdicts = [e.get("verdict") for e in res["events"] if e["type"] == "analysis"]
    assert "inconclusive" in verdicts and verdicts[-1] == "pass", verdicts
    assert {s.version for s in early.seen} >= {"v2"} and not early.failures
    assert not late.failures
