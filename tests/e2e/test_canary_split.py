"""The canary split under production-shaped traffic (DESIGN §2 "The split", trusted_proxies, progress_deadline).

What each test asserts:
- every request from one address and no client keeping cookies (a load balancer in front): at weight
  20% the canary receives 15–25% of them, the rollout goes through its steps and finishes;
- the same traffic against a faulty canary (500 for a third of ``GET /``): seen at the first step and
  rolled back, the failed requests bounded by what the first step's share could send it;
- browsers (clients that keep the ``nonstop_bucket`` cookie the proxy sets): each stays on one side as
  the weight grows, never moved back;
- a ``split_key`` cookie pins each user by the app's own id;
- no traffic at all: the step fails at ``progress_deadline``, naming the figures; traffic back on stable.
"""

from __future__ import annotations

import time

import pytest

from nonstop.proxy.split import bucket_from_key
from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import StickyUsers, warm
from tests.e2e.artifacts import RUN_COMMAND, good_and_faulty
from tests.e2e.test_canary import canary_bound
from tests.e2e.helpers import assert_events_carry_their_fields

# One address, no cookies: the LoadClient keeps none (the production shape behind a load balancer).
LOAD = dict(rate=80, keepalive=4, new=2, post=1, slow=0, timeout=15)


@pytest.fixture
def arts(tmp_path):
    d = tmp_path / "artifacts"
    return good_and_faulty(d)


def canary_stack(stack_factory, **strategy):
    return stack_factory(
        run={"command": RUN_COMMAND}, strategy={"type": "canary", **strategy}, health={"startup_timeout": "15s"},
    )


def event_window(res: dict, weight: int, clock_offset: float) -> tuple[float, float]:
    """Monotonic (start, end) of the stretch the rollout held ``weight``, from the deploy's events."""
    ts = [(e["ts"], e.get("weight")) for e in res["events"] if e["type"] == "weight"]
    starts = [t for t, w in ts if w == weight]
    later = [t for t, _ in ts if t > starts[0]]
    ends = later or [e["ts"] for e in res["events"] if e["type"] == "switched"]
    return starts[0] - clock_offset, min(ends) - clock_offset


def test_one_address_without_cookies_is_split_by_weight_and_the_rollout_finishes(stack_factory, arts):
    st = canary_stack(
        stack_factory,
        steps=[{"weight": 20, "pause": "5s"}, {"weight": 50, "pause": "2s"}],
        analysis={"interval": "1s", "min_requests": 20, "max_error_rate": 0.01, "progress_deadline": "60s"},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    offset = time.time() - time.monotonic()
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 60, stack=st)
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        warm(load, 40, stack=st)
    result = load.result
    assert res["state"] == "promoted", res
    assert_events_carry_their_fields(res["events"])
    assert result.failed == 0, result.format()
    t0, t1 = event_window(res, 20, offset)
    during = [r for r in result.records if t0 + 0.3 < r.start < t1 - 0.1 and r.ok]
    share = sum(1 for r in during if r.version == "v2") / len(during)
    print(f"\none address, no cookies: canary got {share:.1%} of {len(during)} requests at weight 20%")
    assert len(during) >= 150, len(during)
    assert 0.15 <= share <= 0.25, share
    # the analysis saw the same: what each side received, beside the weight
    got = [e["received"] for e in res["events"] if e["type"] == "analysis" and e.get("weight") == 20 and e["received"]["requests"]]
    assert got and all(0.08 <= g["share"] <= 0.35 for g in got if g["requests"] >= 50), got
    assert not [e for e in res["events"] if e["type"] == "split_skew"]


def test_faulty_canary_behind_one_address_is_seen_at_the_first_step(stack_factory, arts):
    weight, min_req, interval, limit, rate = 20, 20, 1.0, 2, 80.0
    st = canary_stack(
        stack_factory,
        steps=[{"weight": weight, "pause": "60s"}, {"weight": 100, "pause": "1s"}],
        analysis={"interval": f"{interval}s", "min_requests": min_req, "max_error_rate": 0.05, "failure_limit": limit},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    with LoadClient(st.url, rate=rate, keepalive=4, new=2, post=0, slow=0, timeout=15) as load:
        warm(load, 60, stack=st)
        res = st.deploy("v2", "--artifact", str(arts["faulty"]), expect=1)
        warm(load, 100, stack=st)
    result = load.result
    assert res["state"] == "rolled_back" and "at 20%" in res["reason"] and "canary 5xx rate" in res["reason"], res
    failures = result.failures
    bound = canary_bound(weight / 100, rate, min_req, interval, limit, slack=3.0)
    print(f"\nfaulty canary, one address: {len(failures)} failed of {result.total}; bound {bound:.0f}")
    assert 0 < len(failures) <= bound, result.format()
    assert all(r.status == 500 and r.version == "v2" for r in failures), result.format()
    assert st.status()["live_release"] == "v1"


def test_browsers_keep_their_side_as_the_weight_grows(stack_factory, arts):
    st = canary_stack(
        stack_factory,
        steps=[{"weight": 10, "pause": "2s"}, {"weight": 50, "pause": "2s"}],
        analysis={"interval": "1s", "min_requests": 5},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    with StickyUsers("127.0.0.1", st.listen, users=30, rate=90, browser=True) as users:
        time.sleep(1.0)
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        time.sleep(1.0)
    assert res["state"] == "promoted", res
    assert users.failures == [], users.failures[:5]
    # each user got its bucket once (a random one, pinned in a cookie) and kept it
    for user in range(30):
        sent = users.set_cookies.get(user, [])
        assert len(sent) == 1 and sent[0].startswith("nonstop_bucket="), (user, sent)
    for user, seq in users.flips().items():
        assert seq in (["v1"], ["v2"], ["v1", "v2"]), (user, users.buckets[user], seq)
    assert all(seq[-1] == "v2" for seq in users.flips().values())


def test_a_split_key_cookie_pins_users_by_their_own_id(stack_factory, arts):
    weight = 40
    st = canary_stack(
        stack_factory,
        steps=[{"weight": weight, "pause": "4s"}],
        split_key={"cookie": "account_id"},
        analysis={"interval": "1s", "min_requests": 5},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    ids = [f"acct-{i}" for i in range(24)]
    offset = time.time() - time.monotonic()
    with StickyUsers("127.0.0.1", st.listen, rate=80, app_cookies=[f"account_id={i}" for i in ids]) as users:
        time.sleep(1.0)
        res = st.deploy("v2", "--artifact", str(arts["good"]))
    assert res["state"] == "promoted", res
    assert users.failures == []
    t0, t1 = event_window(res, weight, offset)
    canary_ids = {i for i in ids if bucket_from_key(i.encode()) < weight}
    assert 0 < len(canary_ids) < len(ids), canary_ids  # the test means something: both sides have users
    seen = 0
    for s in users.seen:
        if t0 + 0.3 < s.t < t1 - 0.1 and s.version:
            seen += 1
            want = "v2" if ids[s.user] in canary_ids else "v1"
            assert s.version == want, (ids[s.user], s.version)
    assert seen >= 100, seen
    assert users.set_cookies == {}  # the app's key decides: no bucket cookie is needed


def test_no_traffic_fails_at_the_progress_deadline_naming_the_figures(stack_factory, arts):
    st = canary_stack(
        stack_factory,
        steps=[{"weight": 20, "pause": "1s"}, {"weight": 60, "pause": "1s"}],
        analysis={"interval": "1s", "min_requests": 50, "progress_deadline": "4s"},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    t0 = time.monotonic()
    res = st.deploy("v2", "--artifact", str(arts["good"]), expect=1)
    took = time.monotonic() - t0
    assert res["state"] == "rolled_back", res
    reason = res["reason"]
    assert "progress_deadline 4s" in reason and "at 20%" in reason, reason
    assert "canary received 0 request(s)" in reason and "min_requests 50" in reason, reason
    assert 4.0 <= took < 30, took
    status = st.status()
    assert status["live_release"] == "v1" and [r["release"] for r in status["routes"]] == ["v1"]
    assert not [i for i in status["instances"] if i["release"] == "v2"]
