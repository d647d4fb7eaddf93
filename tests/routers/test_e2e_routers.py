"""Whole deployments through the real agent with nginx and HAProxy as the router (managed mode).

Reuses the e2e stack (tests/e2e/conftest.py): the real CLI, agent, app instances
and the project's load client (which reconnects when a keep-alive connection was
closed while idle, and never retries a request). HAProxy must lose nothing; nginx
may lose, per reload, at most one request per keep-alive worker of the load
(docs/routers.md, "The reload drop"), and only requests no byte of answer came for.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from conftest import kinds

from nonstop.testing.load import LoadClient
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.conftest import stack_factory  # noqa: F401  (the fixture)

LOAD = dict(rate=80, keepalive=3, new=2, post=2, slow=2, slow_ms=1000, timeout=15)
KEEPALIVE_WORKERS = LOAD["keepalive"] + LOAD["post"]  # post workers reuse their connection too


@pytest.fixture
def arts(tmp_path):
    return {"good": make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.5")}


@pytest.fixture
def router_stack(stack_factory):  # noqa: F811
    """stack_factory, plus: the managed nginx / HAProxy is stopped by PID if `nonstop down` left it."""
    made = []

    def make(router: dict, **kw):
        st = stack_factory(router=router, run={"command": RUN_COMMAND}, **kw)
        made.append(st)
        return st

    yield make
    for st in made:
        for pid_file in (st.state / "nginx" / "nginx.pid", st.state / "haproxy" / "haproxy.pid"):
            try:
                pid = int(pid_file.read_text().split()[0])
                p = psutil.Process(pid)
                if any(n in " ".join(p.cmdline()) for n in ("nginx", "haproxy")):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, psutil.Error):
                pass


def _router(kind: str) -> dict:
    if kind == "nginx-managed":
        return {"type": "nginx", "worker_shutdown_timeout": "15s"}
    return {"type": "haproxy"}


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_blue_green_under_load(kind, router_stack, arts):
    st = router_stack(_router(kind))
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(100, timeout=30)
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        assert res["ok"] and res["release"] == "v2"
        load.wait_served(load.served + 100, timeout=30)
    result = load.result
    versions = [r.version for r in sorted(result.records, key=lambda r: r.end) if r.ok and r.kind != "slow"]
    assert "v1" in versions and versions[-1] == "v2", result.format()
    print(f"\n{kind}: {result.total} requests, {result.failed} failed {result.failure_reasons()}")
    if kind.startswith("haproxy"):
        assert result.failed == 0, result.format()
    else:
        assert result.failed <= KEEPALIVE_WORKERS, result.format()
        assert all("closed by server after the request was sent" in (r.error or "") for r in result.failures), result.format()
    s = st.status()
    assert s["live_release"] == "v2"
    assert [r["release"] for r in s["routes"]] == ["v2"]


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_rollback_under_load(kind, router_stack, arts):
    st = router_stack(_router(kind))
    st.deploy("v1", "--artifact", str(arts["good"]))
    st.deploy("v2", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(100, timeout=30)
        r = st.cli("rollback", "--json", timeout=120)
        assert r.code == 0, r.out + r.err
        load.wait_served(load.served + 100, timeout=30)
    result = load.result
    print(f"\n{kind}: {result.total} requests, {result.failed} failed {result.failure_reasons()}")
    if kind.startswith("haproxy"):
        assert result.failed == 0, result.format()
    else:
        assert result.failed <= KEEPALIVE_WORKERS, result.format()
    assert st.status()["live_release"] == "v1"
