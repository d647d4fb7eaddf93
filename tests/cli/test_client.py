"""The CLI's HTTP client against a real Unix socket that answers with canned bytes."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from nonstop.cli.client import AgentClient, RemoteError
from nonstop.errors import AgentUnreachable


class Canned:
    """A Unix socket server that reads one request head and writes ``answer`` (then closes)."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.path, self.answer, self.request = path, answer, b""
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        with conn:
            conn.settimeout(5)
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(65536)
            head, _, rest = self.request.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    while len(rest) < int(line.split(b":")[1]):
                        rest += conn.recv(65536)
            self.request = head + b"\r\n\r\n" + rest
            conn.sendall(self.answer)

    def close(self) -> None:
        self.thread.join(5)
        self.srv.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def make(answer: bytes) -> tuple[AgentClient, Canned]:
        c = Canned(tmp_path / f"agent{len(servers)}.sock", answer)
        servers.append(c)
        return AgentClient(c.path, timeout=5), c

    yield make
    for s in servers:
        s.close()


def test_a_json_answer_by_content_length_and_the_request_sent(serve):
    client, srv = serve(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}')
    assert client.post("/rollback", {"to": "v1"}) == {"ok": True}
    head, _, body = srv.request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /rollback HTTP/1.1\r\n") and b"Connection: close" in head
    assert body == b'{"to": "v1"}'


def test_a_chunked_ndjson_stream_is_read_line_by_line(serve):
    events = b'{"type": "step", "n": 1}\n{"type": "step", "n": 2}\n{"type": "result", "ok": true}\n'
    chunks = [events[:10], events[10:33], events[33:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    client, _ = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    got = list(client.stream("/deploy", {"version": "v2"}))
    assert [e.get("n") for e in got] == [1, 2, None] and got[-1] == {"type": "result", "ok": True}


def test_a_body_delimited_by_close(serve):
    client, _ = serve(b"HTTP/1.1 200 OK\r\n\r\nplain text\n")
    assert client.text("/logs", release="v1") == "plain text\n"


def test_an_error_answer_carries_the_agents_exit_code(serve):
    err = b'{"error": "busy", "message": "deployment 7 is running", "exit_code": 4, "deployment": 7}'
    client, _ = serve(b"HTTP/1.1 409 Conflict\r\nContent-Length: %d\r\n\r\n%s" % (len(err), err))
    with pytest.raises(RemoteError) as e:
        client.post("/deploy", {})
    assert e.value.exit_code == 4 and e.value.message == "deployment 7 is running"
    assert e.value.detail == {"deployment": 7}


@pytest.mark.parametrize("answer", [
    b"",  # closed at once
    b"SSH-2.0-OpenSSH\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Len",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{{{",  # not JSON
])
def test_a_broken_answer_is_agent_unreachable_not_a_traceback(serve, answer):
    client, _ = serve(answer)
    with pytest.raises(AgentUnreachable):
        client.get("/status")


def test_no_socket_is_agent_unreachable(tmp_path):
    with pytest.raises(AgentUnreachable, match="not running"):
        AgentClient(tmp_path / "none.sock").get("/status")
