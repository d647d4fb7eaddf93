"""Blue-green and rolling watched after the switch (DESIGN §2, the ``analysis`` blocks), under load.

Traffic is the production shape: every request from one address, no cookies (the LoadClient).
What each test asserts:
- a version that answers 500 to a third of its requests is switched back to the warm previous color by
  itself within two analysis intervals of reaching ``min_requests``; exit 1; the release marked bad; the
  failed requests are the faulty version's own 500s, bounded by what it answered in that time;
- a good version passes its watch and stays live, with zero failed requests;
- an app that always answers 5% 5xx, deployed over itself with a relative limit, is not rolled back;
- kill -9 of the agent during the watch: the restarted agent goes on watching and switches back;
- rolling over three instances whose second batch is faulty: rolled back, the floor never breached.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import StatusSampler, nth_start_fails_artifact, serving, warm
from tests.e2e.artifacts import RUN_COMMAND, good_and_faulty, make_artifact
from tests.e2e.helpers import assert_events_carry_their_fields, wait_for

RATE = 80.0
LOAD = dict(rate=RATE, keepalive=4, new=2, post=1, slow=0, timeout=15)
WATCH = {"interval": "1s", "min_requests": 20, "max_error_rate": 0.05, "failure_limit": 2}


@pytest.fixture
def arts(tmp_path):
    d = tmp_path / "artifacts"
    return {
        **good_and_faulty(d),
        "five": make_artifact(d, "five", "--boot-seconds", "0.3", "--fail-rate", "0.05"),
        "late": make_artifact(d, "late", "--boot-seconds", "0.3", "--fail-rate", "0.33", "--faulty-after-seconds", "6"),
    }


def bg_stack(stack_factory, **analysis):
    return stack_factory(
        run={"command": RUN_COMMAND},
        strategy={"type": "blue-green", "keep_previous": "10m", "analysis": {**WATCH, **analysis}},
        health={"startup_timeout": "15s"},
    )


def event_ts(res_events: list[dict], type_: str, after: float = 0.0) -> float:
    return next(e["ts"] for e in res_events if e["type"] == type_ and e["ts"] > after)


def assert_switched_back(res: dict, st, result, interval: float = 1.0, min_requests: int = 20) -> None:
    assert res["state"] == "rolled_back", res
    assert "5xx" in res["reason"] and "> 5.0%" in res["reason"] and "failure_limit 2" in res["reason"], res["reason"]
    ev = res["events"]
    t_switch = event_ts(ev, "switched")
    t_back = event_ts(ev, "switched", after=t_switch)
    # the window reaches min_requests after min_requests / rate; two failed checks follow, one interval apart
    reach = min_requests / RATE
    took = t_back - t_switch
    print(f"\nswitched back {took:.2f}s after the switch ({result.failed} failed of {result.total})")
    assert took <= reach + 2 * interval + 1.5, took
    # failures: the faulty version's own 500s only, at most a third of what it could answer meanwhile
    assert result.failures and all(r.status == 500 and r.version == "v2" for r in result.failures), result.format()
    assert len(result.failures) <= 0.34 * RATE * (took + 0.5) + 5, result.format()
    status = st.status()
    assert status["live_release"] == "v1" and [r["release"] for r in status["routes"]] == ["v1"]
    assert not [i for i in status["instances"] if i["release"] == "v2"]
    hist = st.cli("history", "--json", check=True).json
    assert [r["status"] for r in hist["releases"] if r["id"] == "v2"] == ["bad"]


def test_a_faulty_version_is_switched_back_to_the_warm_color_by_itself(stack_factory, arts):
    st = bg_stack(stack_factory, watch="30s")
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 80, stack=st)
        v1_pid = {i["id"]: i["pid"] for i in st.status()["instances"]}
        res = st.deploy("v2", "--artifact", str(arts["faulty"]), expect=1)
        warm(load, 80, stack=st)
    assert_switched_back(res, st, load.result)
    # the switch back was instant: the very same v1 process serves, no boot
    assert {i["id"]: i["pid"] for i in st.status()["instances"]} == v1_pid
    watch_events = [e for e in res["events"] if e["type"] in ("analysis", "analysis_failed")]
    assert watch_events and watch_events[-1]["verdict"] == "fail" and watch_events[-1]["baseline"]["requests"] > 0


def test_a_good_version_passes_its_watch_and_stays_live(stack_factory, arts):
    st = bg_stack(stack_factory, watch="4s")
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 80, stack=st)
        t0 = time.monotonic()
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        took = time.monotonic() - t0
        warm(load, 40, stack=st)
    assert res["state"] == "promoted", res
    assert_events_carry_their_fields(res["events"])
    assert load.result.failed == 0, load.result.format()
    assert took >= 4.0
    passed = [e for e in res["events"] if e["type"] == "watch_passed"]
    assert passed and "passing" in passed[0]["message"], [e["message"] for e in res["events"]]
    assert [e.get("verdict") for e in res["events"] if e["type"] == "analysis"].count("pass") >= 2
    assert st.status()["live_release"] == "v2"


def test_an_app_that_always_answers_some_5xx_is_judged_against_its_own_baseline(stack_factory, arts):
    st = bg_stack(stack_factory, watch="4s", max_error_rate="baseline + 3%", min_requests=40)
    st.deploy("v1", "--artifact", str(arts["five"]))
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 300, stack=st)  # a baseline: ~4 s of v1's usual 5%
        res = st.deploy("v2", "--artifact", str(arts["five"]))
        warm(load, 40, stack=st)
    assert res["state"] == "promoted", (res["state"], res["reason"])
    watched = [e for e in res["events"] if e["type"] == "analysis" and e.get("verdict") == "pass"]
    assert watched, [e["message"] for e in res["events"]]
    base = watched[-1]["baseline"]
    assert base["requests"] >= 100 and 0.02 < base["error_rate"] < 0.09, base
    # every failure is the app's own usual 500
    assert all(r.status == 500 for r in load.result.failures), load.result.format()


def test_the_watch_goes_on_after_the_agent_is_killed(stack_factory, arts):
    st = bg_stack(stack_factory, watch="40s")
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 80, stack=st)
        proc = st.cli_async("deploy", "--version", "v2", "--artifact", str(arts["late"]), "--json")
        wait_for(lambda: (st.status().get("deployment") or {}).get("phase") == "watching", timeout=60, what="the watch")
        agent = st.pid("agent")
        os.kill(agent, signal.SIGKILL)
        proc.communicate(timeout=30)
        wait_for(lambda: not _alive(agent), timeout=10, what="the agent's exit")
        st.cli("up", "--detach", "--timeout", "60", check=True)
        # v2 turns faulty 6 s after it booted: the restarted agent, watching on, switches back
        def done():
            h = st.cli("history", "--json", check=True).json["deployments"][0]
            return h if h["outcome"] else None

        dep = wait_for(done, timeout=60, interval=0.5, what="the watch to end")
        warm(load, 80, stack=st)
    assert dep["outcome"] == "rolled_back" and "5xx" in dep["reason"], dep
    status = st.status()
    assert status["live_release"] == "v1" and not [i for i in status["instances"] if i["release"] == "v2"]
    result = load.result
    assert all(r.status == 500 and r.version == "v2" for r in result.failures), result.format()
    events = st.cli("history", "--json", check=True).json
    assert events  # history readable
    ev = _events(st, dep["id"])
    assert any(e["type"] == "watch_resumed" for e in ev), [e["type"] for e in ev]


def test_rolling_with_a_faulty_second_batch_is_rolled_back_within_the_floor(stack_factory, tmp_path, arts):
    n = 3
    bad = nth_start_fails_artifact(tmp_path / "artifacts", "second-faulty", (2,), "--boot-seconds", "0.3",
                                   when_failing=("--fail-rate", "0.5"))
    st = stack_factory(
        n_ports=n + 1,
        run={"command": RUN_COMMAND, "instances": n},
        strategy={"type": "rolling", "max_surge": 1, "max_unavailable": 0,
                  "analysis": {"watch": "15s", "interval": "1s", "min_requests": 15, "max_error_rate": 0.05, "failure_limit": 2}},
        health={"startup_timeout": "15s"},
    )
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load, StatusSampler(st) as sampler:
        warm(load, 80, stack=st)
        res = st.deploy("v2", "--artifact", str(bad), expect=1)
        warm(load, 80, stack=st)
    assert res["state"] == "rolled_back" and "5xx" in res["reason"], (res["state"], res["reason"])
    passed = [e for e in res["events"] if e["type"] == "watch_passed"]
    assert len(passed) == 1 and "batch 1" in passed[0]["message"], [e["message"] for e in res["events"]]
    floor = min(serving(s) for _, s in sampler.samples if s.get("instances"))
    assert floor >= n, floor  # max_unavailable 0: never fewer than 3 serving
    assert all(r.status == 500 and r.version == "v2" for r in load.result.failures), load.result.format()
    status = st.status()
    assert status["live_release"] == "v1" and sum(1 for i in status["instances"] if i["release"] == "v1") == n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _events(st, dep_id: int) -> list[dict]:
    from nonstop.cli.client import AgentClient

    return AgentClient(st.state / "agent.sock", timeout=10).get(f"/events?deployment={dep_id}")
