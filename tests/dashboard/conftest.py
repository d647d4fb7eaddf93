"""Fixtures of the dashboard tests: a real agent (``agent_stack``) and a headless Chromium (``browser``, ``page``).

``browser``: Debian's ``/usr/bin/chromium`` driven by Playwright (Playwright's
own browser download is not used), headless, with the fresh temporary profile
Playwright gives each launch. A failing browser test leaves a screenshot in
``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dashboard.stack import ARTIFACTS, AgentStack, make_stack

CHROMIUM = os.environ.get("NONSTOP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

@pytest.fixture(scope="module")
def module_dir(tmp_path_factory, request) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])


@pytest.fixture(scope="module")
def agent_stack(module_dir) -> Iterator[AgentStack]:
    """An agent with v1 live (canary strategy with a manual pause, dashboard on a free port)."""
    st = make_stack(module_dir / "stack")
    try:
        st.start()
        st.deploy("v1")
        yield st
    finally:
        st.stop()


# -- the browser ---------------------------------------------------------------------


# Module scope, not session: Playwright's sync API keeps an event loop running in the main
# thread while it is started, and later tests that call asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        # in CI (scripts/setup.sh --test installs it) a missing browser fails; elsewhere it skips
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"{CHROMIUM} is missing: scripts/setup.sh --test installs Debian's chromium"
        )
    from playwright import sync_api  # the [test] extra pins it
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception:
        pw.stop()
        raise
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.errors = errors  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            ARTIFACTS.mkdir(exist_ok=True)
            with contextlib.suppress(Exception):
                pg.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}.png"), full_page=True)
        ctx.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
