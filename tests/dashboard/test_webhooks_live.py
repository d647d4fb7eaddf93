"""Webhooks from a real agent: a local receiver records the events of a canary that analysis rolls back."""

from __future__ import annotations

from nonstop.testing.load import LoadClient
from tests.agent.test_notify import Receiver
from tests.dashboard.stack import make_stack, wait_for


def test_a_canary_rollback_is_told_to_the_webhook(tmp_path):
    with Receiver() as hook:
        st = make_stack(
            tmp_path / "stack",
            notify=[{"url": hook.url, "headers": {"Authorization": "Bearer hook-secret"}, "timeout": "2s"}],
            strategy={
                "type": "canary",
                "sticky": False,
                "steps": [{"weight": 30, "pause": "30s"}, {"pause": "manual"}],
                "analysis": {"interval": "1s", "max_error_rate": 0.05, "min_requests": 5, "failure_limit": 2},
            },
        )
        try:
            st.start()
            st.deploy("v1")
            wait_for(lambda: any(b["event"] == "success" for b in hook.bodies), 10, what="v1's success webhook")
            with LoadClient(st.url, rate=40, keepalive=3, new=1, post=0, slow=0) as load:
                load.wait_served(20)
                st.deploy("bad2", expect=1)  # every GET / of bad2 answers 500: analysis fails twice
            wait_for(lambda: any(b["event"] == "rollback" for b in hook.bodies), 10, what="the rollback webhook")
        finally:
            st.stop()

    first = [b for b in hook.bodies if b["deployment"] == 1]
    assert first[0]["event"] == "start" and first[-1]["event"] == "success"
    bodies = [b for b in hook.bodies if b["deployment"] == 2]
    kinds = [b["event"] for b in bodies]
    assert kinds[0] == "start" and kinds[-1] == "rollback", kinds
    assert "step" in kinds and "success" not in kinds and "failure" not in kinds
    assert any(b["event"] == "step" and b.get("weight") == 30 for b in bodies), bodies
    last = bodies[-1]
    assert last["app"] == "shop" and last["release"] == "bad2" and last["from_release"] == "v1"
    assert last["strategy"] == "canary" and last["state"] == "rolled_back" and last["ok"] is False
    assert "analysis" in last["reason"] or "5xx" in last["reason"], last["reason"]
    assert all(h["Authorization"] == "Bearer hook-secret" for h in hook.headers)
    assert all(isinstance(b["ts"], float) and b["message"] for b in hook.bodies)


def test_a_blue_green_switched_back_by_its_watch_is_told_to_the_webhook(tmp_path):
    """Blue-green with a watch: the switch is a step, the watch's switch-back a rollback naming the breach."""
    with Receiver() as hook:
        st = make_stack(
            tmp_path / "stack",
            notify=[{"url": hook.url, "timeout": "2s"}],
            strategy={
                "type": "blue-green",
                "analysis": {"watch": "20s", "interval": "1s", "max_error_rate": 0.05, "min_requests": 5,
                             "failure_limit": 2},
            },
        )
        try:
            st.start()
            st.deploy("v1")
            wait_for(lambda: any(b["event"] == "success" for b in hook.bodies), 10, what="v1's success webhook")
            with LoadClient(st.url, rate=40, keepalive=3, new=1, post=0, slow=0) as load:
                load.wait_served(20)
                st.deploy("bad2", expect=1)  # every GET / of bad2 answers 500: the watch fails twice
            wait_for(lambda: any(b["event"] == "rollback" for b in hook.bodies), 10, what="the rollback webhook")
        finally:
            st.stop()

    bodies = [b for b in hook.bodies if b["deployment"] == 2]
    kinds = [b["event"] for b in bodies]
    assert kinds[0] == "start" and kinds[-1] == "rollback", kinds
    assert "step" in kinds and "success" not in kinds and "failure" not in kinds
    last = bodies[-1]
    assert last["release"] == "bad2" and last["from_release"] == "v1" and last["strategy"] == "blue-green"
    assert last["state"] == "rolled_back" and last["ok"] is False
    assert "5xx" in last["reason"], last["reason"]
