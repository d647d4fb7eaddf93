"""The Python test app (nonstop.testing.app): endpoints, HTTP/1.1 framing, knobs, SIGTERM drain."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from nonstop.testing.launch import run_app, start_app

from .conftest import raw_exchange, read_response


def test_root_health_version_and_404(app):
    with httpx.Client(base_url=app.url, timeout=5) as c:
        r = c.get("/")
        assert (r.status_code, r.text, r.headers["x-app-version"]) == (200, "hello from v1\n", "v1")
        assert c.get("/actuator/health").json() == {"status": "UP"}
        assert c.get("/health").json() == {"status": "UP"}
        assert c.get("/version").text == "v1"
        assert c.get("/nope").status_code == 404
        head = c.head("/")
        assert head.status_code == 200 and head.headers["content-length"] == "14" and head.content == b""


def test_echo_streams_content_length_and_chunked_bodies(app):
    big = bytes(range(256)) * 4096  # 1 MiB
    with httpx.Client(base_url=app.url, timeout=10) as c:
        r = c.post("/echo", content=big)
        assert r.content == big and r.headers["content-length"] == str(len(big))
        r = c.post("/echo", content=iter([b"abc", b"", b"defg"]))  # a generator: httpx sends it chunked
        assert r.content == b"abcdefg" and r.headers["transfer-encoding"] == "chunked"
        r = c.post("/echo", content=big, headers={"Expect": "100-continue"})
        assert r.content == big
        assert c.post("/echo").content == b""


def test_keep_alive_and_pipelining(app):
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _, body = read_response(s)
        assert body == b"hello from v1\n"
        # two requests in one write, the second with a chunked body: answered in order, same socket
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                  b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while not buf.endswith(b"\r\n\r\nv1"):  # both answers, in however many reads they come
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
        first, second = buf.split(b"0\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"\r\n\r\n3\r\nabc\r\n")
        assert second.startswith(b"HTTP/1.1 200") and b"Content-Length: 2" in second


def test_connection_close_and_http10_are_honoured(app):
    out = raw_exchange(app.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.count(b"HTTP/1.1 200") == 2  # the third request came after "close": not answered
    assert out.endswith(b"Connection: close\r\n\r\nv1")
    out = raw_exchange(app.port, b"GET /version HTTP/1.0\r\n\r\n")
    assert b"Connection: close" in out and out.endswith(b"v1")


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"garbage\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
])
def test_malformed_requests_get_400_and_close(app, request_bytes):
    out = raw_exchange(app.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 400") and b"Connection: close" in out
    assert httpx.get(app.url, timeout=5).status_code == 200  # and the app is fine


def test_bad_chunk_cuts_a_streamed_echo_short(app):
    out = raw_exchange(app.port, b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
    # the echo had started: no 400 possible, the response ends without its last chunk
    assert out.startswith(b"HTTP/1.1 200") and not out.endswith(b"0\r\n\r\n")


def test_fail_rate_is_an_exact_fraction():
    with run_app("bad", fail_rate=0.25) as a, httpx.Client(base_url=a.url, timeout=5) as c:
        codes = [c.get("/").status_code for _ in range(20)]
        assert codes.count(500) == 5 and codes[3] == 500  # every fourth
        assert c.get("/health").status_code == 200  # health is unaffected: only analysis catches it


def test_health_down_and_latency():
    with run_app("down", health="DOWN", latency_ms=150) as a, httpx.Client(base_url=a.url, timeout=5) as c:
        r = c.get("/actuator/health")
        assert (r.status_code, r.json()) == (503, {"status": "DOWN"})
        t = time.monotonic()
        assert c.get("/").status_code == 200
        assert time.monotonic() - t >= 0.15


def test_binds_only_after_boot_seconds():
    t = time.monotonic()
    with run_app("v1", boot_seconds=0.5) as a:
        assert time.monotonic() - t >= 0.5
        assert a.lines[0].startswith("starting app v1")
        assert httpx.get(a.url, timeout=5).status_code == 200


def test_sigterm_finishes_in_flight_closes_idle_refuses_new_and_exits_0():
    app = start_app("v1")
    try:
        idle = socket.create_connection(("127.0.0.1", app.port), timeout=5)
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(idle)  # now an idle kept-alive connection
        results: dict = {}

        def slow() -> None:
            r = httpx.get(app.url + "slow?ms=1500", timeout=5)
            results["slow"] = (r.status_code, r.headers.get("connection"), time.monotonic())

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.4)  # the slow request is in flight
        sent_term = time.monotonic()
        app.terminate()
        assert idle.recv(100) == b""  # the idle connection is closed at once, not after the drain
        assert time.monotonic() - sent_term < 0.8
        _wait_until(lambda: any("draining" in line for line in app.lines))
        with pytest.raises(httpx.ConnectError):
            httpx.get(app.url, timeout=2)  # no longer listening
        t.join(5)
        status, connection, done_at = results["slow"]
        assert (status, connection) == (200, "close")  # finished, and told not to reuse the connection
        assert app.wait(5) == 0
        assert done_at - sent_term >= 0.8
        assert "stopped gracefully" in app.lines[-1]
        idle.close()
    finally:
        app.stop()


def test_die_after_seconds_crashes_without_draining():
    app = start_app("v1", die_after_seconds=0.3)
    try:
        assert app.wait(5) == 1
    finally:
        app.stop()


def _wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
