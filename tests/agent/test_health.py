"""Health: the pure tracker with a fake clock; probes against real tiny servers on port 0."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from nonstop.agent.health import (
    BOOT_POLL,
    BOOT_WINDOW,
    DETAIL_MAX,
    CheckResult,
    HealthState,
    HealthTracker,
    check_once,
    wait_healthy,
)
from nonstop.config import HealthConfig
from nonstop.errors import ConfigError

PY = sys.executable
OK = CheckResult(True, "200 UP", 0.001)
BAD = CheckResult(False, "503 DOWN", 0.001)


# -- tracker (pure) ----------------------------------------------------------------


def tracker(h=2, u=3, startup=10.0, t0=100.0, **kw) -> HealthTracker:
    return HealthTracker(h, u, startup, t0, **kw)


def test_starting_to_healthy_after_threshold():
    t = tracker()
    assert t.state == HealthState.STARTING == "starting"
    assert t.observe(OK, 101) == "starting"
    assert t.observe(OK, 102) == "healthy"
    assert t.state is HealthState.HEALTHY and t.reason is None


def test_a_booting_instance_is_checked_fast_until_healthy_then_every_interval():
    t = tracker(t0=100.0)  # healthy_threshold 2
    assert t.next_delay(0.2, 100.0) == BOOT_POLL  # nothing passed yet: notice readiness within BOOT_POLL
    assert t.next_delay(0.01, 100.0) == 0.01  # a shorter interval is kept
    t.observe(BAD, 100.1)
    assert t.next_delay(0.2, 100.1) == BOOT_POLL
    assert t.observe(OK, 100.2) == "starting"
    assert t.next_delay(0.2, 100.2) == BOOT_POLL  # the threshold's passes are counted at the boot cadence...
    t.observe(BAD, 100.25)  # ... and still must come in a row: a failure resets them
    assert t.passes == 0 and t.next_delay(0.2, 100.25) == BOOT_POLL
    assert t.observe(OK, 100.3) == "starting" and t.observe(OK, 100.325) == "healthy"
    assert t.next_delay(0.2, 100.35) == 0.2  # healthy: supervision at interval
    assert tracker(t0=100.0).next_delay(0.2, 100.0 + BOOT_WINDOW) == 0.2  # a slow boot: back to interval


def test_checks_start_at_a_fixed_rate_so_a_slow_check_is_not_followed_by_a_whole_period():
    t = tracker(t0=100.0)
    assert t.wait_before_next(0.2, 100.0, 100.01) == pytest.approx(BOOT_POLL - 0.01)
    assert t.wait_before_next(0.2, 100.0, 100.08) == 0.0  # a cold app's first answer took 80 ms: check again now
    t.observe(OK, 100.5)
    t.observe(OK, 100.6)
    assert t.wait_before_next(0.2, 100.6, 100.65) == pytest.approx(0.15)  # healthy: every interval, start to start
    h = tracker(initial="healthy")
    assert h.next_delay(5.0, 100.0) == 5.0  # supervision after go-live keeps its interval


def test_a_failure_while_starting_resets_the_pass_count():
    t = tracker()
    t.observe(OK, 101)
    t.observe(BAD, 102)
    assert t.observe(OK, 103) == "starting"
    assert t.observe(OK, 104) == "healthy"


def test_starting_to_failed_at_startup_deadline_via_observe_and_poll():
    t = tracker(startup=10, t0=100)
    assert t.observe(BAD, 105) == "starting"
    assert t.poll(109.99) == "starting"
    assert t.poll(110) == "failed"
    assert "startup_timeout 10s" in t.reason and "503 DOWN" in t.reason
    t2 = tracker(startup=10, t0=100)
    assert t2.observe(BAD, 111) == "failed"
    t3 = tracker(startup=1, t0=0)
    assert t3.poll(5) == "failed" and "no check completed" in t3.reason


def test_reaching_threshold_on_the_deadline_counts_as_healthy():
    t = tracker(h=1, startup=10, t0=100)
    assert t.observe(OK, 110) == "healthy"
    assert t.poll(1000) == "healthy"  # the deadline only applies while starting


def test_failed_is_final():
    t = tracker(startup=1, t0=0)
    t.poll(2)
    assert t.observe(OK, 3) == "failed"
    assert t.observe(OK, 4) == "failed"


def test_healthy_unhealthy_and_back():
    t = tracker(h=2, u=3)
    t.observe(OK, 101)
    t.observe(OK, 101)
    assert t.observe(BAD, 102) == "healthy"
    assert t.observe(BAD, 103) == "healthy"
    assert t.observe(OK, 104) == "healthy"  # a pass resets the failure count
    for now in (105, 106):
        assert t.observe(BAD, now) == "healthy"
    assert t.observe(BAD, 107) == "unhealthy"
    assert "3 failed check(s)" in t.reason and "503 DOWN" in t.reason
    assert t.observe(OK, 108) == "unhealthy"
    assert t.observe(BAD, 109) == "unhealthy"
    assert t.observe(OK, 110) == "unhealthy"
    assert t.observe(OK, 111) == "healthy"
    assert t.poll(10_000) == "healthy"


def test_fail_marks_process_death():
    t = tracker()
    t.observe(OK, 101)
    assert t.fail("process exited", 102) == "failed"
    assert t.reason == "process exited" and t.last_results[-1].detail == "process exited"


def test_last_results_are_bounded_and_summarised():
    t = tracker(keep=3)
    for i in range(5):
        t.observe(CheckResult(False, f"r{i}", 0.002), 101)
    assert [r.detail for r in t.last_results] == ["r2", "r3", "r4"]
    assert t.summary(2) == "fail: r3 (2ms)\nfail: r4 (2ms)"


def test_initial_state_for_an_instance_known_healthy():
    t = tracker(h=2, u=1, initial="healthy")
    assert t.poll(1e9) == "healthy"
    assert t.observe(BAD, 1) == "unhealthy"


def test_thresholds_must_be_positive():
    with pytest.raises(ValueError):
        HealthTracker(0, 1, 1, 0)


# -- servers ---------------------------------------------------------------------


class App:
    """A tiny HTTP server on port 0 whose answer the test sets."""

    def __init__(self) -> None:
        self.status, self.body, self.hits = 200, b'{"status":"UP"}', 0
        app = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                app.hits += 1
                self.send_response(app.status)
                self.send_header("Content-Length", str(len(app.body)))
                self.end_headers()
                self.wfile.write(app.body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app():
    a = App()
    yield a
    a.close()


@pytest.fixture
def silent_port():
    """Accepts connections (kernel backlog) but never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hc(**kw) -> HealthConfig:
    kw.setdefault("timeout", 0.5)
    return HealthConfig(**kw)


def run(coro):
    return asyncio.run(coro)


def test_http_up(app):
    r = run(check_once(hc(path="/actuator/health", expect_body="UP"), "127.0.0.1", app.port))
    assert r.ok and r.detail == '200 {"status":"UP"}' and 0 <= r.latency < 1


def test_http_body_down(app):
    app.body = b'{"status":"DOWN"}'
    r = run(check_once(hc(expect_body="UP"), "127.0.0.1", app.port))
    assert not r.ok and r.detail.startswith('200 {"status":"DOWN"}') and "'UP'" in r.detail


def test_http_wrong_status(app):
    app.status, app.body = 503, b'{"status":"DOWN"}'
    r = run(check_once(hc(), "127.0.0.1", app.port))
    assert not r.ok and r.detail == '503 {"status":"DOWN"}'
    app.status = 204
    app.body = b""
    assert run(check_once(hc(expect_status=204), "127.0.0.1", app.port)).ok


def test_http_detail_is_trimmed(app):
    app.status, app.body = 500, b"x" * 5000
    r = run(check_once(hc(), "127.0.0.1", app.port))
    assert not r.ok and len(r.detail) <= DETAIL_MAX and r.detail.startswith("500 xxx")


def test_http_refused(closed_port):
    r = run(check_once(hc(), "127.0.0.1", closed_port))
    assert not r.ok and r.detail == "connection refused"


def test_http_timeout_when_server_never_answers(silent_port):
    t0 = time.monotonic()
    r = run(check_once(hc(timeout=0.3), "127.0.0.1", silent_port))
    assert not r.ok and r.detail == "timed out after 0.3s"
    assert 0.25 < time.monotonic() - t0 < 2


def test_http_with_a_shared_client(app):
    async def go():
        async with httpx.AsyncClient(trust_env=False) as c:
            return [await check_once(hc(), "127.0.0.1", app.port, client=c) for _ in range(3)]

    assert all(r.ok for r in run(go())) and app.hits == 3


def test_tcp(app, closed_port):
    assert run(check_once(hc(type="tcp"), "127.0.0.1", app.port)) == CheckResult(True, "connected", pytest.approx(0, abs=1))
    r = run(check_once(hc(type="tcp"), "127.0.0.1", closed_port))
    assert not r.ok and r.detail == "connection refused"


def test_command_check_gets_port_and_host(closed_port):
    script = "import sys; print('checked', sys.argv[1], sys.argv[2]); sys.exit(0 if sys.argv[2] == '%d' else 1)" % closed_port
    r = run(check_once(hc(type="command", command=[PY, "-c", script, "{host}", "{port}"]), "127.0.0.1", closed_port))
    assert r.ok and r.detail == f"exit 0: checked 127.0.0.1 {closed_port}"
    r = run(check_once(hc(type="command", command=[PY, "-c", script, "{host}", "1"]), "127.0.0.1", closed_port))
    assert not r.ok and r.detail.startswith("exit 1: checked")


def test_command_check_with_shell():
    r = run(check_once(hc(type="command", command="test {port} -eq 4242 && echo fine", shell=True), "127.0.0.1", 4242))
    assert r.ok and r.detail == "exit 0: fine"


def test_command_check_timeout_kills_it():
    t0 = time.monotonic()
    r = run(check_once(hc(type="command", command=[PY, "-c", "import time; time.sleep(30)"], timeout=0.3), "h", 1))
    assert not r.ok and "timed out after 0.3s" in r.detail
    assert time.monotonic() - t0 < 3


def test_command_not_found_and_bad_placeholder():
    r = run(check_once(hc(type="command", command="no-such-check-nonstop {port}"), "h", 1))
    assert not r.ok and r.detail == "command not found: no-such-check-nonstop"
    with pytest.raises(ConfigError, match=r"\{prot\}"):
        run(check_once(hc(type="command", command="check {prot}"), "h", 1))


# -- wait_healthy --------------------------------------------------------------------


def test_wait_healthy_with_a_fake_clock(closed_port):
    """Deterministic: a fake sleep advances a fake clock; refused until the deadline."""
    now = [0.0]

    sleeps = []

    async def fake_sleep(s):
        sleeps.append(s)
        now[0] += s

    t = HealthTracker(2, 3, 1.0, 0.0)
    cfg = hc(interval=0.2, startup_timeout=1.0)
    state = run(
        wait_healthy(
            cfg, "127.0.0.1", closed_port, started_at=0.0, is_alive=lambda: True,
            clock=lambda: now[0], sleep=fake_sleep, tracker=t,
        )
    )
    assert state == "failed" and now[0] == pytest.approx(1.0)
    # nothing passed yet: checked every BOOT_POLL, not every interval (last 10 results kept)
    assert all(r.detail == "connection refused" for r in t.last_results) and len(t.last_results) == 10
    assert sleeps.count(BOOT_POLL) >= 19


def test_wait_healthy_turns_healthy_when_the_app_comes_up(app):
    app.status, app.body = 503, b"DOWN"

    async def go():
        async def flip():
            await asyncio.sleep(0.15)
            app.status, app.body = 200, b"UP"

        task = asyncio.create_task(flip())
        t = HealthTracker(2, 3, 5.0, time.monotonic())
        st = await wait_healthy(
            hc(interval=0.05, expect_body="UP"), "127.0.0.1", app.port,
            started_at=time.monotonic(), is_alive=lambda: True, tracker=t,
        )
        await task
        return st, t

    t0 = time.monotonic()
    state, t = run(go())
    assert state == HealthState.HEALTHY and time.monotonic() - t0 < 2
    assert t.last_results[0].detail == "503 DOWN" and t.last_results[-1].ok


def test_wait_healthy_fails_early_when_the_process_dies(closed_port):
    calls = [0]

    def alive():
        calls[0] += 1
        return calls[0] < 3

    t = HealthTracker(2, 3, 60.0, time.monotonic())
    t0 = time.monotonic()
    state = run(
        wait_healthy(hc(interval=0.05), "127.0.0.1", closed_port, started_at=time.monotonic(), is_alive=alive, tracker=t)
    )
    assert state == "failed" and t.reason == "process exited"
    assert time.monotonic() - t0 < 2


def test_wait_healthy_startup_timeout_in_real_time(closed_port):
    t0 = time.monotonic()
    state = run(
        wait_healthy(
            hc(interval=0.05, startup_timeout=0.3), "127.0.0.1", closed_port,
            started_at=time.time(),  # epoch, as ProcessHandle.started_at: converted
            is_alive=lambda: True,
        )
    )
    assert state == "failed" and 0.25 < time.monotonic() - t0 < 2
