"""Control sockets work at any depth: a state dir whose socket path exceeds sun_path (107 bytes)."""

from __future__ import annotations

import socket

from nonstop.unixsock import MAX_PATH, reachable


def test_bind_and_connect_beyond_sun_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "agent.sock"
    assert len(str(path)) > MAX_PATH
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with reachable(path) as where:
        srv.bind(where)
    srv.listen(1)
    assert path.exists()  # the socket file is where it was asked for
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with reachable(path) as where:
        cli.connect(where)
    conn, _ = srv.accept()
    cli.sendall(b"ping")
    assert conn.recv(4) == b"ping"
    for s in (conn, cli, srv):
        s.close()


def test_short_paths_are_used_as_they_are(tmp_path):
    with reachable("/tmp/x.sock") as where:
        assert where == "/tmp/x.sock"
