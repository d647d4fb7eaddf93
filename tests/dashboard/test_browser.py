"""The dashboard in headless Chromium against a real agent: live release, a canary seen live, buttons and the token.

The tests run in file order on one agent (module-scoped): the page first
shows v1; then a canary of v2 (``{weight: 20, pause: manual}``) runs under
load while the page watches, unprompted; a button without the token is
refused; with the token from the URL fragment, Promote finishes the canary.
"""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect

from nonstop.testing.load import LoadClient
from tests.dashboard.stack import ROOT, AgentStack, save_screenshot, state_json, wait_for

DOC_SCREENSHOT = ROOT / "docs" / "img" / "dashboard-canary.png"


@pytest.fixture(scope="module")
def canary(agent_stack: AgentStack):
    """A v2 canary paused at 20% (manual step) under a steady load; cleaned up (aborted) if a test left it running."""
    load = LoadClient(agent_stack.url, rate=40, keepalive=3, new=1, post=1, slow=0).start()
    load.wait_served(20)
    deploy = agent_stack.cli_async("deploy", "--version", "v2")
    info = {"load": load, "deploy": deploy}
    try:
        yield info
    finally:
        if deploy.poll() is None:
            agent_stack.cli("abort")
        try:
            deploy.communicate(timeout=60)
        except Exception:
            deploy.kill()
        load.stop()


def open_dashboard(page, stack: AgentStack, fragment: str = ""):
    page.goto(stack.dashboard + fragment)
    expect(page.get_by_test_id("conn")).to_have_attribute("data-state", "live", timeout=10_000)


def test_loads_and_shows_the_live_release(agent_stack: AgentStack, page):
    open_dashboard(page, agent_stack)
    expect(page.get_by_test_id("live-release")).to_have_text("v1")
    expect(page.locator("#split-bar .seg[data-release=v1]")).to_have_text("v1 100%")
    expect(page.get_by_test_id("auth-state")).to_have_text("read-only")
    expect(page.locator("#instances tbody tr")).to_have_count(1)
    expect(page.locator("#instances tbody tr").first).to_contain_text("healthy")
    expect(page.locator("#releases tbody tr[data-release=v1]")).to_have_class(re.compile(r"\blive\b"))
    expect(page.get_by_test_id("dep-state")).to_have_text("promoted")
    expect(page.locator("#timeline li[data-type=result]")).to_contain_text("v1 is live")
    # no deployment runs: the steering buttons are off
    expect(page.get_by_test_id("btn-promote")).to_be_disabled()
    # no tls: in the config, no HTTPS panel (tests/dashboard/test_https_panel.py shows it)
    expect(page.get_by_test_id("tls")).to_be_hidden()
    expect(page.get_by_test_id("tls-alert")).to_be_hidden()
    assert page.errors == []


def test_updates_while_a_canary_runs(agent_stack: AgentStack, page, canary):
    # The page is opened before the deployment gets anywhere and never reloaded.
    open_dashboard(page, agent_stack)
    expect(page.get_by_test_id("dep-state")).to_have_text("paused", timeout=30_000)
    expect(page.get_by_test_id("canary-weight")).to_have_text("20%")
    # the share the canary received in the last analysis window, beside the weight asked for
    expect(page.get_by_test_id("canary-received")).to_contain_text("%", timeout=15_000)
    expect(page.locator("#split-bar .seg[data-release=v2]")).to_have_text("v2 20%")
    expect(page.locator("#split-bar .seg[data-release=v1]")).to_have_text("v1 80%")
    expect(page.get_by_test_id("waiting-for")).to_contain_text("promote")
    expect(page.locator("#timeline li[data-type=weight]")).to_contain_text("20%")
    expect(page.locator("#instances tbody tr")).to_have_count(2)
    # the charts draw the canary from the samples streamed over SSE
    expect(page.locator("#chart-weight path[data-release=v2]")).to_have_count(1, timeout=10_000)
    expect(page.locator("#chart-rps path[data-release=v2]")).to_have_count(1, timeout=15_000)
    expect(page.locator("#chart-p99 path[data-release=v2]")).to_have_count(1, timeout=15_000)
    # an analysis has been shown in the timeline, with its verdict
    expect(page.locator("#timeline li[data-type=analysis] .badge").first).to_be_visible(timeout=15_000)
    page.wait_for_timeout(6000)  # a few more seconds of chart for the picture
    shot = save_screenshot(page, "dashboard-canary.png")
    DOC_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    if not DOC_SCREENSHOT.exists():  # the committed one is refreshed by hand (copy from test-artifacts/)
        shutil.copy(shot, DOC_SCREENSHOT)
    assert state_json(agent_stack)["status"]["deployment"]["state"] == "paused"
    assert page.errors == []


def test_a_button_without_the_token_is_refused(agent_stack: AgentStack, page, canary):
    open_dashboard(page, agent_stack)
    expect(page.get_by_test_id("dep-state")).to_have_text("paused", timeout=30_000)
    promote = page.get_by_test_id("btn-promote")
    expect(promote).to_be_enabled()
    expect(page.get_by_test_id("lock-hint")).to_be_visible()
    with page.expect_response(lambda r: r.url.endswith("/api/promote")) as resp:
        promote.click()
    assert resp.value.status == 401
    assert "authorization" not in resp.value.request.headers
    expect(page.get_by_test_id("toast")).to_contain_text("Refused")
    expect(page.locator("#token-dialog")).to_be_visible()
    page.locator("#token-input").fill("a-wrong-token")
    page.locator("#token-ok").click()
    expect(page.locator("#token-error")).to_contain_text("refused")
    page.locator("#token-cancel").click()
    # nothing moved
    page.wait_for_timeout(1500)
    st = state_json(agent_stack)["status"]
    assert st["deployment"]["state"] == "paused" and st["live_release"] == "v1"
    assert {r["release"]: r["weight"] for r in st["routes"]} == {"v2": 20, "v1": 80}


def test_promote_with_the_token_finishes_the_canary(agent_stack: AgentStack, page, canary):
    open_dashboard(page, agent_stack, f"#token={agent_stack.token}")
    expect(page.get_by_test_id("auth-state")).to_have_text("can steer")
    assert "token" not in page.url  # the fragment is dropped from the address bar at once
    expect(page.get_by_test_id("dep-state")).to_have_text("paused", timeout=30_000)
    with page.expect_response(lambda r: r.url.endswith("/api/promote")) as resp:
        page.get_by_test_id("btn-promote").click()
    assert resp.value.status == 200, resp.value.text()
    assert resp.value.request.headers["authorization"] == f"Bearer {agent_stack.token}"
    expect(page.get_by_test_id("dep-state")).to_have_text("promoted", timeout=30_000)
    expect(page.get_by_test_id("live-release")).to_have_text("v2")
    expect(page.locator("#split-bar .seg[data-release=v2]")).to_have_text("v2 100%")
    expect(page.locator("#releases tbody tr[data-release=v2]")).to_have_class(re.compile(r"\blive\b"))
    # the CLI that started the deploy saw it succeed, and no request failed
    out, err = canary["deploy"].communicate(timeout=60)
    assert canary["deploy"].returncode == 0, out[-2000:] + err[-2000:]
    res = canary["load"].stop()
    assert res.failed == 0, res.format()
    assert res.by_version().get("v2", 0) > 0
    wait_for(lambda: all(i["release"] == "v2" for i in state_json(agent_stack)["status"]["instances"]), 20, what="v1 stopped")
    assert page.errors == []


def test_rollback_button_goes_back_to_the_previous_release(agent_stack: AgentStack, page):
    open_dashboard(page, agent_stack, f"#token={agent_stack.token}")
    expect(page.get_by_test_id("auth-state")).to_have_text("can steer")
    expect(page.get_by_test_id("live-release")).to_have_text("v2")
    button = page.get_by_test_id("btn-rollback")
    expect(button).to_be_enabled()
    page.once("dialog", lambda d: d.accept())  # "Roll back to v1? …"
    with page.expect_response(lambda r: r.url.endswith("/api/rollback")) as resp:
        button.click()
    assert resp.value.status == 200, resp.value.text()
    expect(page.get_by_test_id("live-release")).to_have_text("v1", timeout=30_000)
    expect(page.locator("#deployments tbody tr").first).to_contain_text("rollback")
    expect(page.locator("#deployments tbody tr").first).to_contain_text("promoted")
    expect(page.locator("#releases tbody tr[data-release=v2] .badge")).to_have_text("bad")
    # with v2 marked bad and v1 live, there is nothing left to roll back to
    expect(button).to_be_disabled()
    assert page.errors == []


def test_a_blue_green_watch_is_shown_while_it_runs(agent_stack: AgentStack, page):
    """After the switch the new color is watched (DESIGN §2 blue-green analysis): the page shows the watch,
    its remaining time and baseline, its checks in the timeline; Promote ends it."""
    import yaml

    cfg = yaml.safe_load(agent_stack.cfg_path.read_text())
    cfg["strategy"] = {"type": "blue-green", "keep_previous": "1m",
                       "analysis": {"watch": "60s", "interval": "1s", "min_requests": 5, "max_error_rate": 0.5}}
    agent_stack.cfg_path.write_text(yaml.safe_dump(cfg))
    load = LoadClient(agent_stack.url, rate=40, keepalive=3, new=1, post=0, slow=0).start()
    try:
        load.wait_served(20)
        deploy = agent_stack.cli_async("deploy", "--version", "v3")
        open_dashboard(page, agent_stack, f"#token={agent_stack.token}")
        expect(page.get_by_test_id("watch")).to_contain_text("v3", timeout=30_000)
        expect(page.get_by_test_id("watch")).to_contain_text("baseline")
        expect(page.locator("#timeline li[data-type=analysis]").first).to_contain_text("watch", timeout=15_000)
        with page.expect_response(lambda r: r.url.endswith("/api/promote")) as resp:
            page.get_by_test_id("btn-promote").click()
        assert resp.value.status == 200, resp.value.text()
        out, err = deploy.communicate(timeout=60)
        assert deploy.returncode == 0, out[-2000:] + err[-2000:]
        expect(page.get_by_test_id("live-release")).to_have_text("v3", timeout=30_000)
    finally:
        res = load.stop()
    assert res.failed == 0, res.format()
    assert page.errors == []
