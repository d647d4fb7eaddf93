"""Fixtures for nonstop.testing's own tests: the test app on port 0, raw HTTP, and misbehaving servers."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator

import pytest

from nonstop.testing.launch import AppProcess, run_app


@pytest.fixture
def app() -> Iterator[AppProcess]:
    with run_app("v1") as a:
        yield a


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends ``data``, half-closes, and returns everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Reads one Content-Length-framed response from a kept-alive socket: (head, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return head, rest[:length]


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.behaviour(self.request)  # type: ignore[attr-defined]


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def tcp_server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """Starts a throwaway server on port 0 whose connections run ``behaviour(sock)``; returns its port."""
    servers: list[_Server] = []

    def start(behaviour: Callable[[socket.socket], None]) -> int:
        srv = _Server(("127.0.0.1", 0), _Handler)
        srv.behaviour = behaviour  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def read_request(sock: socket.socket) -> bytes | None:
    """Reads one request head plus a Content-Length body (enough for the load client's GETs)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return buf


def ok_response(body: bytes = b"ok", version: str = "t", close: bool = False) -> bytes:
    conn = b"Connection: close\r\n" if close else b""
    return (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-App-Version: %s\r\n%s\r\n%s"
            % (len(body), version.encode(), conn, body))
