"""The dashboard's HTTP side against a real agent: /metrics vs the load sent, the token, the guards, SSE."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nonstop.testing.load import LoadClient
from tests.dashboard.stack import AgentStack, wait_for


def client() -> httpx.Client:
    return httpx.Client(timeout=10, trust_env=False)


def scrape(stack: AgentStack) -> dict[tuple[str, frozenset], float]:
    with client() as c:
        r = c.get(stack.dashboard + "metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(m, name, **labels) -> float:
    return m.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0.0)


def v1_target(stack: AgentStack) -> str:
    with client() as c:
        st = c.get(stack.dashboard + "api/state").json()["status"]
    return next(r for r in st["routes"] if r["release"] == "v1")["targets"][0]


def test_metrics_count_exactly_the_requests_sent(agent_stack: AgentStack):
    target = v1_target(agent_stack)
    before = scrape(agent_stack)
    n = 150
    load = LoadClient(agent_stack.url, rate=None, keepalive=2, new=1, post=1, slow=0, max_requests=n).start()
    res = load.wait(60)
    assert res.total == n and res.failed == 0, res.format()
    with client() as c:  # and some the app answers 404: a 4xx for the proxy
        for _ in range(7):
            assert c.get(agent_stack.url + "no-such-page").status_code == 404

    def settled():
        m = scrape(agent_stack)
        d = get(m, "nonstop_requests_total", release="v1", code_class="2xx") - get(before, "nonstop_requests_total", release="v1", code_class="2xx")
        return m if d >= n else None

    after = wait_for(settled, 10, what="the proxy's counters to catch up")

    def delta(name, **labels):
        return get(after, name, **labels) - get(before, name, **labels)

    assert delta("nonstop_requests_total", release="v1", code_class="2xx") == n
    assert delta("nonstop_requests_total", release="v1", code_class="4xx") == 7
    assert delta("nonstop_requests_total", release="v1", code_class="5xx") == 0
    assert delta("nonstop_target_requests_total", release="v1", target=target, code_class="2xx") == n
    assert delta("nonstop_request_duration_seconds_count", release="v1") == n + 7
    assert delta("nonstop_request_duration_seconds_bucket", release="v1", le="+Inf") == n + 7
    assert delta("nonstop_proxy_errors_total", release="v1") == 0
    assert get(after, "nonstop_in_flight_requests", release="v1") == 0
    # the rest of the picture
    assert get(after, "nonstop_traffic_weight_ratio", release="v1") == 1.0
    assert get(after, "nonstop_live_release_info", release="v1") == 1
    assert get(after, "nonstop_deployments_total", strategy="canary", outcome="promoted") == 1
    assert get(after, "nonstop_deployment_duration_seconds_count", strategy="canary") == 1
    assert get(after, "nonstop_deployment_in_progress") == 0
    assert get(after, "nonstop_router_stats_up") == 1
    ups = {dict(k[1])["instance"]: v for k, v in after.items() if k[0] == "nonstop_instance_up"}
    assert list(ups.values()) == [1.0], ups
    healthy = [v for k, v in after.items() if k[0] == "nonstop_instance_healthy"]
    assert healthy == [1.0]


def test_changes_need_the_token(agent_stack: AgentStack):
    base = agent_stack.dashboard
    with client() as c:
        r = c.post(base + "api/promote", json={})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        for path in ("api/abort", "api/rollback"):
            assert c.post(base + path, json={}).status_code == 401
        r = c.post(base + "api/promote", json={}, headers={"Authorization": "Bearer not-the-token"})
        assert r.status_code == 403
        r = c.post(base + "api/abort", headers={"Authorization": f"Basic {agent_stack.token}"})
        assert r.status_code == 403
        assert c.get(base + "api/auth").status_code == 401
        assert c.get(base + "api/auth", headers={"Authorization": f"Bearer {agent_stack.token}"}).status_code == 204
        # the right token reaches the deployer, which explains there is nothing to promote
        r = c.post(base + "api/promote", json={}, headers={"Authorization": f"Bearer {agent_stack.token}"})
        assert r.status_code == 400 and "no deployment in progress" in r.json()["message"]
        # reading needs nothing, and the token never appears in what the page reads
        st = c.get(base + "api/state")
        assert st.status_code == 200 and agent_stack.token not in st.text
        assert agent_stack.token not in c.get(base).text


def test_dns_rebinding_and_cross_origin_posts_are_refused(agent_stack: AgentStack):
    base = agent_stack.dashboard
    with client() as c:
        assert c.get(base + "api/state", headers={"Host": "evil.example:9900"}).status_code == 421
        assert c.get(base + "api/state", headers={"Host": "localhost"}).status_code == 200
        r = c.post(base + "api/abort", headers={"Origin": "http://evil.example", "Authorization": f"Bearer {agent_stack.token}"})
        assert r.status_code == 403
        page = c.get(base)
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"


def test_sse_sends_the_state_then_ticks(agent_stack: AgentStack):
    events = []
    t0 = time.monotonic()
    with client() as c, c.stream("GET", agent_stack.dashboard + "api/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if [k for k, _ in events].count("tick") >= 2 or time.monotonic() - t0 > 10:
                    break
    kinds = [k for k, _ in events]
    assert kinds[0] == "state" and kinds.count("tick") >= 2, kinds
    state = events[0][1]
    assert state["status"]["live_release"] == "v1"
    assert state["history"]["deployments"][0]["outcome"] == "promoted"
    tick = next(d for k, d in events if k == "tick")
    assert tick["status"]["live_release"] == "v1"
    assert "v1" in tick["sample"]["releases"] and tick["sample"]["releases"]["v1"]["weight"] == 100


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "192.0.2.1:9900"])
def test_a_non_loopback_dashboard_is_refused_at_start(tmp_path, listen):
    import subprocess
    import sys

    from tests.dashboard.stack import make_stack

    st = make_stack(tmp_path / "remote", dashboard={"listen": listen})
    try:
        r = subprocess.run([sys.executable, "-m", "nonstop.agent", "--config", str(st.cfg_path)],
                           cwd=st.dir, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "dashboard.listen" in r.stderr and "loopback" in r.stderr
        assert not (st.state / "proxy.pid").exists()  # refused before anything started
    finally:
        st.stop()
