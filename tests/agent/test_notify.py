"""Webhooks: the event mapping, and delivery that never blocks or fails a deployment."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from nonstop.agent.events import EventBus
from nonstop.agent.notify import Notifier, notification, webhook_kind
from nonstop.agent.store import Deployment, Event, Store
from nonstop.config import NotifyConfig


def run(coro):
    return asyncio.run(coro)


def ev(type, deployment=3, **data):
    return Event(id=1, deployment_id=deployment, ts=1700000000.0, type=type, message=f"{type} happened", data=data)


DEP = Deployment(id=3, release="v2", strategy="canary", from_release="v1", state="progressing", step=2, started_at=1.0)


@pytest.mark.parametrize(
    "type,data,strategy,kind",
    [
        ("start", {"strategy": "canary"}, None, "start"),
        ("step", {"phase": "weight"}, "canary", "step"),
        ("switched", {}, "blue-green", "step"),
        ("weight", {"weight": 50}, "canary", "step"),
        ("result", {"ok": True, "state": "promoted"}, "canary", "success"),
        ("result", {"ok": True, "state": "promoted"}, "rollback", "rollback"),
        ("result", {"ok": False, "state": "rolled_back"}, "canary", "rollback"),
        ("result", {"ok": False, "state": "aborted"}, "canary", "rollback"),
        ("result", {"ok": False, "state": "failed"}, "blue-green", "failure"),
        ("tls_certificate", {"serial": "1a"}, None, "certificate"),
        ("tls_error", {"stage": "order"}, None, "certificate"),
        ("instance_healthy", {}, "canary", None),
        ("analysis", {"verdict": "fail"}, "canary", None),
        ("draining", {}, "canary", None),
    ],
)
def test_webhook_kind(type, data, strategy, kind):
    assert webhook_kind(type, data, strategy) == kind


def test_body_carries_the_deployment_picture():
    b = notification(ev("weight", weight=50, phase="weight", step=2), "shop", DEP)
    assert b == {
        "event": "step",
        "app": "shop",
        "deployment": 3,
        "release": "v2",
        "from_release": "v1",
        "strategy": "canary",
        "message": "weight happened",
        "ts": 1700000000.0,
        "type": "weight",
        "weight": 50,
        "phase": "weight",
        "step": 2,
    }
    r = notification(ev("result", ok=False, state="rolled_back", reason="p99 800ms > 500ms", seconds=12.5, release="v2"), "shop", DEP)
    assert r["event"] == "rollback" and r["reason"] == "p99 800ms > 500ms" and r["seconds"] == 12.5 and r["ok"] is False
    assert json.loads(json.dumps(r)) == r
    assert notification(ev("instance_stopped"), "shop", DEP) is None
    # an event with no deployment row (agent-level) still maps
    s = notification(ev("start", deployment=None, strategy="blue-green"), "shop", None)
    assert s["strategy"] == "blue-green" and s["release"] is None


class Receiver:
    """A tiny webhook receiver on 127.0.0.1, port 0: records bodies; ``delay`` makes it slow, ``status`` picks the answer."""

    def __init__(self, delay: float = 0.0, status: int = 204) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        rec = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                time.sleep(rec.delay)
                rec.bodies.append(body)
                rec.headers.append(dict(self.headers))
                self.send_response(rec.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.delay = delay
        self.status = status
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_events_reach_the_hook_in_order_with_its_headers(tmp_path):
    async def main(url):
        store = Store(tmp_path / "n.db")
        bus = EventBus(store)
        n = Notifier([NotifyConfig(url=url, headers={"Authorization": "Bearer s3cret"})], "shop", store.get_deployment)
        bus.listen(n)
        n.start()
        dep = store.create_deployment("v2", "canary", "v1")
        await bus.emit(dep.id, "start", "deploy started", strategy="canary")
        await bus.emit(dep.id, "instance_healthy", "ignored")
        await bus.emit(dep.id, "weight", "10% on v2", weight=10)
        await bus.emit(dep.id, "result", "rolled back", ok=False, state="rolled_back", release="v2")
        await n.close(timeout=5)
        store.close()
        return n

    with Receiver() as r:
        n = run(main(r.url))
    assert [b["event"] for b in r.bodies] == ["start", "step", "rollback"]
    assert all(b["deployment"] == 1 and b["app"] == "shop" and b["release"] == "v2" for b in r.bodies)
    assert r.bodies[1]["weight"] == 10
    assert r.headers[0]["Authorization"] == "Bearer s3cret"
    assert r.headers[0]["Content-Type"] == "application/json"
    assert (n.sent, n.failed, n.dropped) == (3, 0, 0)


def test_certificate_events_of_the_agent_reach_the_hook(tmp_path):
    """ACME results are agent-level events (no deployment): the listener must not filter them out."""
    problems = [{"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "forbidden by policy", "identifier": None}]

    async def main(url):
        store = Store(tmp_path / "n.db")
        bus = EventBus(store)
        n = Notifier([NotifyConfig(url=url, events=["certificate"])], "shop", store.get_deployment)
        bus.listen(n)
        n.start()
        await bus.emit(None, "tls_certificate", "certificate issued for a.test", domains=["a.test"], serial="1a",
                       not_after="2027-01-01T00:00:00Z", cert="/s/fullchain.pem", key="/s/privkey.pem")
        await bus.emit(None, "start", "deploy started", strategy="canary")  # filtered out by events:
        await bus.emit(None, "tls_error", "ACME order failed for a.test: …", domains=["a.test"], stage="order",
                       problems=problems, retry_at="2027-01-01T00:05:00Z")
        await n.close(timeout=5)
        store.close()
        return n

    with Receiver() as r:
        n = run(main(r.url))
    assert [(b["event"], b["type"]) for b in r.bodies] == [("certificate", "tls_certificate"), ("certificate", "tls_error")]
    issued, refused = r.bodies
    assert issued["serial"] == "1a" and issued["not_after"] == "2027-01-01T00:00:00Z" and issued["domains"] == ["a.test"]
    assert "key" not in issued and "cert" not in issued  # file paths are not the receiver's business
    assert refused["stage"] == "order" and refused["problems"] == problems and refused["retry_at"] == "2027-01-01T00:05:00Z"
    assert issued["deployment"] is None and issued["app"] == "shop"
    assert (n.sent, n.failed, n.dropped) == (2, 0, 0)


def test_a_slow_hook_never_blocks_emit_and_a_full_queue_drops(tmp_path):
    async def main(url):
        store = Store(tmp_path / "n.db")
        bus = EventBus(store)
        n = Notifier([NotifyConfig(url=url, timeout=0.3)], "shop", store.get_deployment, maxsize=2)
        bus.listen(n)
        n.start()
        t0 = time.monotonic()
        for i in range(6):
            await bus.emit(None, "step", f"step {i}", step=i)
        took = time.monotonic() - t0
        await n.close(timeout=0.1)
        store.close()
        return n, took

    with Receiver(delay=1.0) as r:
        n, took = run(main(r.url))
    assert took < 0.5, f"emit waited for the webhook: {took:.2f}s"
    # one in flight (timed out), two queued, the rest dropped; nothing raised
    assert n.dropped >= 3
    assert n.sent == 0


def test_failing_hooks_are_counted_not_raised_and_filters_apply(tmp_path):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content)["event"])
        if "down" in str(request.url):
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(500 if "bad" in str(request.url) else 200)

    async def main():
        hooks = [
            NotifyConfig(url="http://hooks.test/down"),
            NotifyConfig(url="http://hooks.test/bad"),
            NotifyConfig(url="http://hooks.test/only-outcomes", events=["success", "failure", "rollback"]),
        ]
        n = Notifier(hooks, "shop", transport=httpx.MockTransport(handler))
        n.start()
        n(ev("start", strategy="canary"))
        n(ev("result", ok=True, state="promoted"))
        await n.close(timeout=2)
        return n

    n = run(main())
    assert sorted(calls) == sorted(["start", "success", "start", "success", "success"])
    assert n.failed == 4 and n.sent == 1


def test_no_hooks_means_no_work():
    n = Notifier([], "shop")
    assert not n
    n(ev("start"))  # no queue, no task, no error
    run(n.close())
