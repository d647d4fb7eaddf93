"""A rollback to a release that is not warm, when run.ports leaves no room to start it beside the live one.

recreate has `instances` ports and rolling `instances + max_surge`: a cold rollback there goes back the
way the strategy goes forward (recreate: stop, then start, the proxy holding requests meanwhile;
rolling: in batches within the same limits), under load, with zero failed requests.
"""

from __future__ import annotations

import pytest

from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import StatusSampler, serving
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import wait_for

LOAD = dict(rate=60, keepalive=3, new=2, post=2, slow=1, slow_ms=300, timeout=15)


@pytest.fixture
def good(tmp_path):
    return make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.4")


def starting_message(res) -> str:
    return next(e["message"] for e in res["events"] if e["type"] == "step" and e.get("phase") == "starting")


def test_a_cold_rollback_under_recreate_stops_then_starts_and_holds_requests(stack_factory, good):
    st = stack_factory(n_ports=1, run={"command": RUN_COMMAND}, strategy={"type": "recreate"})
    st.deploy("v1", "--artifact", str(good))
    st.deploy("v2", "--artifact", str(good))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
        r = st.cli("rollback", "--json")
        assert r.code == 0, r.out + r.err
        load.wait_served(load.served + 50, timeout=20)
    assert load.result.failed == 0, load.result.format()
    assert "no room beside v2: recreate to it" in starting_message(r.json), r.json["events"]
    s = st.status()
    assert s["live_release"] == "v1" and [i["release"] for i in s["instances"]] == ["v1"]
    assert {rel["id"]: rel["status"] for rel in st.cli("history", "--json").json["releases"]}["v2"] == "bad"


def test_a_cold_rollback_under_rolling_goes_back_in_batches_within_the_limits(stack_factory, good):
    n = 2
    st = stack_factory(n_ports=n + 1, run={"command": RUN_COMMAND, "instances": n},
                       strategy={"type": "rolling", "max_surge": 1, "max_unavailable": 0})
    st.deploy("v1", "--artifact", str(good))
    st.deploy("v2", "--artifact", str(good))
    wait_for(lambda: {i["release"] for i in st.status()["instances"]} == {"v2"}, timeout=15, what="v1 stopped")
    with LoadClient(st.url, **LOAD) as load, StatusSampler(st) as sampler:
        load.wait_served(50, timeout=20)
        r = st.cli("rollback", "--json")
        assert r.code == 0, r.out + r.err
        load.wait_served(load.served + 50, timeout=20)
    assert load.result.failed == 0, load.result.format()
    assert "no room beside v2: rolling to it" in starting_message(r.json), r.json["events"]
    counts = [serving(s) for _, s in sampler.samples]
    assert counts and min(counts) >= n, counts  # max_unavailable 0: never fewer than n serving
    assert max(len(s["instances"]) for _, s in sampler.samples) <= n + 1
    s = st.status()
    assert s["live_release"] == "v1" and serving(s) == n and {i["release"] for i in s["instances"]} == {"v1"}
