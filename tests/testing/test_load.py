"""The load client (nonstop.testing.load): it must see every failure, and only real ones."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time


from nonstop.testing.launch import run_app, start_app
from nonstop.testing.load import LoadClient, LoadResult, RequestRecord

from .conftest import ok_response, read_request


def test_healthy_app_all_kinds_zero_failures(app):
    with LoadClient(app.url, rate=200, slow_ms=200) as load:
        load.wait_served(100)
        time.sleep(0.5)
    r = load.result
    assert r.failed == 0, r.format()
    assert set(r.by_kind()) == {"keepalive", "new", "post", "slow"}
    assert all(v["served"] > 0 for v in r.by_kind().values())
    assert r.by_version() == {"v1": r.served}
    assert r.longest_gap().seconds < 1.0, r.format()


def test_app_killed_mid_load_is_counted(app):
    with LoadClient(app.url, rate=100, slow_ms=2000, timeout=3) as load:
        load.wait_served(30)
        time.sleep(0.3)  # the slow request is in flight
        killed_at = time.monotonic()
        app.kill()
        app.wait(5)
        time.sleep(0.5)
    r = load.result
    assert r.failed > 0
    reasons = " | ".join(r.failure_reasons())
    assert "connect failed" in reasons  # new connections are refused
    assert "after the request was sent" in reasons  # the slow request died under way
    assert r.longest_gap().start <= killed_at + 0.2 and r.longest_gap().seconds >= 0.4
    assert "failed" in r.format()


def test_sigterm_mid_load_drains_then_refuses():
    # The app alone drains its in-flight requests; what fails is only what comes after it stopped
    # listening (a proxy is what hides that).
    app = start_app("v1")
    try:
        with LoadClient(app.url, rate=100, keepalive=0, new=0, post=0, slow=1, slow_ms=600, timeout=5) as load:
            time.sleep(0.3)
            app.terminate()
            assert app.wait(5) == 0
        r = load.result
        slow = [x for x in r.records if x.kind == "slow"]
        assert slow[0].ok and slow[0].status == 200  # in flight at SIGTERM: finished
        assert all(not x.ok for x in slow[1:])
    finally:
        app.stop()


def test_5xx_are_failures_with_their_status():
    with run_app("bad", fail_rate=0.5) as a:
        r = LoadClient(a.url, rate=None, keepalive=1, new=0, post=0, slow=0, max_requests=40).start().wait()
    assert (r.total, r.failed, r.served) == (40, 20, 20)
    assert r.failure_reasons() == {"status 500": 20}


def test_idle_keepalive_closed_by_server_is_a_reconnect_not_a_failure(tcp_server):
    def answer_then_close_when_idle(sock: socket.socket) -> None:
        sock.settimeout(0.05)  # a server with a 50 ms keep-alive timeout
        try:
            while read_request(sock):
                sock.sendall(ok_response())
        except TimeoutError:
            pass  # idle too long: close cleanly (FIN) while the client is not sending

    port = tcp_server(answer_then_close_when_idle)
    load = LoadClient(f"http://127.0.0.1:{port}/", rate=4, keepalive=1, new=0, post=0, slow=0,
                    duration=1.2).start()
    r = load.wait()
    assert r.failed == 0, r.format()
    assert sum(x.reconnected for x in r.records) >= r.total - 2


def test_connection_closed_after_the_request_was_written_is_a_failure(tcp_server):
    def read_then_close(sock: socket.socket) -> None:
        read_request(sock)  # takes the request, never answers

    port = tcp_server(read_then_close)
    load = LoadClient(f"http://127.0.0.1:{port}/", rate=None, keepalive=1, new=0, post=0, slow=0,
                    max_requests=3).start()
    r = load.wait()
    assert r.failed == 3
    assert all(x.sent and "after the request was sent" in x.error for x in r.failures)


def test_timeouts_and_wrong_echoes_are_failures(tcp_server):
    def hang(sock: socket.socket) -> None:
        read_request(sock)
        time.sleep(1)

    def wrong_echo(sock: socket.socket) -> None:
        while read_request(sock):
            sock.sendall(ok_response(b"not what you sent"))

    hang_port, echo_port = tcp_server(hang), tcp_server(wrong_echo)
    load = LoadClient(f"http://127.0.0.1:{hang_port}/", rate=None, keepalive=1, new=0, post=0, slow=0,
                    max_requests=1, timeout=0.3).start()
    assert load.wait().failure_reasons() == {"timeout after 0.3s (request sent)": 1}
    load = LoadClient(f"http://127.0.0.1:{echo_port}/", rate=None, keepalive=0, new=0, post=1, slow=0,
                    max_requests=2, post_bytes=(10, 10)).start()
    r = load.wait()
    assert r.failed == 2 and all(x.error.startswith("echo mismatch") for x in r.failures)


def test_rate_and_max_requests_bound_the_run(app):
    load = LoadClient(app.url, rate=50, keepalive=1, new=1, post=0, slow=0, duration=1.0).start()
    r = load.wait()
    assert 30 <= r.total <= 55, r.total  # late ticks are skipped on a busy machine
    load = LoadClient(app.url, rate=None, slow=0, max_requests=25, duration=10).start()
    r = load.wait()
    assert r.total == 25 and r.duration < 5


def _rec(start: float, end: float, version: str | None = "v1", error: str | None = None) -> RequestRecord:
    return RequestRecord(worker=0, kind="keepalive", seq=0, start=start, end=end, version=version, error=error)


def test_result_figures_from_records():
    recs = [_rec(0.0, 0.1), _rec(0.1, 0.2), _rec(0.2, 0.3, error="status 502"), _rec(0.3, 1.5, error="timeout"),
            _rec(1.5, 1.6, "v2"), _rec(1.6, 2.7, "v2")]
    r = LoadResult(recs, started=0.0, ended=3.0, stopped=2.5)
    assert (r.total, r.served, r.failed) == (6, 4, 2)
    assert r.by_version() == {"v1": 2, "v2": 2}
    gap = r.longest_gap()
    assert (round(gap.seconds, 3), gap.start, gap.end) == (1.4, 0.2, 1.6)
    assert r.version_switches() == [(0.1, "v1"), (1.6, "v2")]
    assert r.timeline() == [  # bucketed by end time
        {"t": 0.0, "served": {"v1": 2}, "failed": 1},
        {"t": 1.0, "served": {"v2": 1}, "failed": 1},
        {"t": 2.0, "served": {"v2": 1}, "failed": 0},
    ]
    assert "2 failed" in r.format() and "1 x timeout" in r.format()


def test_cli_prints_json_and_exit_code(app):
    out = subprocess.run([sys.executable, "-m", "nonstop.testing.load", app.url, "--duration", "0.5",
                          "--rate", "50", "--slow-ms", "100", "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["failed"] == 0 and summary["served"] > 10 and summary["by_version"] == {"v1": summary["served"]}
    bad = subprocess.run([sys.executable, "-m", "nonstop.testing.load", "http://127.0.0.1:9/", "--duration", "0.2",
                          "--rate", "20"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "connect failed" in bad.stdout


def test_unparseable_response_is_a_failure(tcp_server):
    def garbage(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 2x0 What\r\n\r\n")

    port = tcp_server(garbage)
    r = LoadClient(f"http://127.0.0.1:{port}/", rate=None, keepalive=1, new=0, post=0, slow=0,
                   max_requests=2).start().wait()
    assert r.failed == 2 and all(x.error.startswith("bad response") for x in r.failures), r.format()
