"""The dashboard app without an agent process: the address policy, the guard, the token, what the buttons call."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import SimpleNamespace

import warnings

import pytest

with warnings.catch_warnings():  # starlette 1.x suggests httpx2 for its test client; httpx is what we pin
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from nonstop.agent.dashboard import Dashboard, _hostname, check_listen, is_loopback, start_dashboard
from nonstop.agent.routers.base import Release, RouteTable, Target
from nonstop.errors import ConfigError, UsageError

TOKEN = "s3cret-token"


class FakeAgent:
    def __init__(self, state: Path, listen: str = "127.0.0.1:0") -> None:
        self.cfg = SimpleNamespace(app="shop", dashboard=SimpleNamespace(listen=listen, enabled=True))
        self.state = state
        self.token = TOKEN
        self.stopping = asyncio.Event()
        self.steered: list[str] = []
        self.rolled: list[str | None] = []
        self.emitted: list[tuple] = []
        self.listeners = []
        routing = RouteTable(releases=(Release("v1", 100, (Target("127.0.0.1:8081"),)),))
        self.traffic = SimpleNamespace(split=SimpleNamespace(routing=lambda: routing))
        self.router = SimpleNamespace(stats=self._stats)
        self.store = SimpleNamespace(active_deployment=lambda: None, list_deployments=lambda n: [], events=lambda d: [])
        self.deployer = SimpleNamespace(steer=self._steer, rollback=self._rollback)
        self.events = SimpleNamespace(listen=self.listeners.append, emit=self._emit)

    async def _stats(self):
        return {"releases": {}, "targets": {}}

    def _steer(self, action):
        if action == "abort" and "no-deployment" in self.steered:
            raise UsageError("no deployment in progress to abort")
        self.steered.append(action)
        return SimpleNamespace(id=7)

    async def _rollback(self, to):
        self.rolled.append(to)
        return 8

    async def _emit(self, dep, type, message, **data):
        self.emitted.append((dep, type, message))

    async def status(self):
        return {"app": "shop", "agent": {"started_at": 0}, "router": {"type": "embedded"}, "live_release": "v1",
                "routes": [{"release": "v1", "weight": 100, "targets": ["127.0.0.1:8081"]}], "instances": [], "deployment": None}

    def history(self, limit=50):
        return {"releases": [], "deployments": []}


@pytest.fixture
def agent(tmp_path):
    return FakeAgent(tmp_path)


@pytest.fixture
def http(agent):
    with TestClient(Dashboard(agent).app(), base_url="http://127.0.0.1:9900") as c:
        yield c


@pytest.mark.parametrize("listen", ["127.0.0.1:9900", "127.0.0.2:1", "localhost:9900", "[::1]:9900"])
def test_loopback_addresses_are_served(listen):
    assert check_listen(listen, allow_remote=False)[1] in (9900, 1)


@pytest.mark.parametrize("listen", ["0.0.0.0:9900", ":9900", "192.168.1.10:9900", "[::]:9900", "example.com:9900"])
def test_other_addresses_need_the_opt_in(listen):
    with pytest.raises(ConfigError, match="dashboard.listen.*not a loopback address"):
        check_listen(listen, allow_remote=False)
    assert check_listen(listen, allow_remote=True)[1] == 9900


def test_host_names():
    assert _hostname("127.0.0.1:9900") == "127.0.0.1"
    assert _hostname("[::1]:9900") == "::1"
    assert _hostname("localhost") == "localhost"
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("evil.example")


def test_reading_is_open_changing_needs_the_token(http, agent):
    assert http.get("/api/state").json()["status"]["live_release"] == "v1"
    assert http.get("/metrics").status_code == 200
    assert http.get("/").headers["content-type"].startswith("text/html")
    assert http.get("/static/app.js").status_code == 200
    r = http.post("/api/promote", json={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="nonstop"'
    assert http.post("/api/promote", json={}, headers={"Authorization": "Bearer " + TOKEN[:-1]}).status_code == 403
    assert http.post("/api/promote", json={}, headers={"Authorization": "Bearer " + TOKEN + "x"}).status_code == 403
    assert http.post("/api/abort", headers={"Authorization": "Token " + TOKEN}).status_code == 403
    assert agent.steered == [] and agent.rolled == []


def test_the_buttons_call_the_deployer(http, agent):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert http.post("/api/promote", json={}, headers=auth).json() == {"ok": True, "deployment": 7, "action": "promote"}
    assert http.post("/api/promote", json={"full": True}, headers=auth).json()["action"] == "promote_full"
    assert http.post("/api/abort", headers=auth).json()["action"] == "abort"
    assert http.post("/api/rollback", json={"to": "v0"}, headers=auth).json() == {"ok": True, "deployment": 8, "action": "rollback"}
    assert http.post("/api/rollback", headers=auth).status_code == 200
    assert agent.steered == ["promote", "promote_full", "abort"]
    assert agent.rolled == ["v0", None]
    # deployer errors come back as the control API's JSON errors
    agent.steered.append("no-deployment")
    r = http.post("/api/abort", headers=auth)
    assert r.status_code == 400 and r.json()["message"] == "no deployment in progress to abort"
    assert http.post("/api/rollback", content=b"[1]", headers=auth).status_code == 400
    assert http.post("/api/rollback", json={"to": 5}, headers=auth).status_code == 400


def test_guard_refuses_foreign_hosts_and_origins(agent):
    app = Dashboard(agent).app()
    with TestClient(app, base_url="http://evil.example:9900") as c:
        r = c.get("/api/state")
        assert r.status_code == 421 and "loopback" in r.text
    with TestClient(app, base_url="http://[::1]:9900") as c:
        assert c.get("/api/state").status_code == 200
        r = c.post("/api/abort", headers={"Origin": "http://evil.example", "Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 403
        same = c.post("/api/abort", headers={"Origin": "http://[::1]:9900", "Authorization": f"Bearer {TOKEN}"})
        assert same.status_code == 200
    with TestClient(Dashboard(agent).app(check_host=False), base_url="http://deploys.internal:9900") as c:
        assert c.get("/api/state").status_code == 200  # allow_remote: the operator chose the names


def test_a_taken_port_leaves_the_agent_running_without_a_dashboard(agent, caplog):
    busy = socket.create_server(("127.0.0.1", 0))
    agent.cfg.dashboard.listen = f"127.0.0.1:{busy.getsockname()[1]}"

    async def main():
        running = await start_dashboard(agent)
        assert running.server is None and running.dashboard.url is None
        agent.stopping.set()
        await running.stop()

    try:
        asyncio.run(main())
    finally:
        busy.close()
    assert any(t == "error" and "cannot listen" in m for _, t, m in agent.emitted)
    assert not (agent.state / "dashboard.url").exists()


def test_started_dashboard_writes_its_url_and_stops(agent):
    import httpx

    async def main():
        running = await start_dashboard(agent)
        url = (agent.state / "dashboard.url").read_text().strip()
        assert url == running.dashboard.url and url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(trust_env=False) as c:
            r = await c.get(url + "api/state")
        assert r.status_code == 200
        await running.stop()
        assert not (agent.state / "dashboard.url").exists()

    asyncio.run(asyncio.wait_for(main(), 20))
