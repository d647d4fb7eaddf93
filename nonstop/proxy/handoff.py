"""The listening socket: bound fresh, inherited through ``NONSTOP_LISTEN_FDS``, or taken over from a running proxy.

Takeover hands the *same* kernel socket to the new process (SCM_RIGHTS over
the old process's admin socket), so both processes accept from one shared
queue. When the old one stops accepting, connections waiting in that queue
are simply accepted by the new one: unlike two SO_REUSEPORT sockets, where
closing one resets whatever sat in its own backlog, nothing is lost.
"""

from __future__ import annotations

import array
import json
import os
import socket

from nonstop.errors import ProxyError
from nonstop.unixsock import reachable

ENV_FDS = "NONSTOP_LISTEN_FDS"


def bind(addr: str, backlog: int) -> socket.socket:
    """A new listening TCP socket on ``addr`` (port 0 picks a free port)."""
    host, port_s = addr.rsplit(":", 1) if ":" in addr else (addr, "0")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host or "0.0.0.0", int(port_s)))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ProxyError(f"cannot listen on {addr}: {e.strerror or e}") from e
    return sock


def from_env() -> socket.socket | None:
    """The listening socket passed down as a file descriptor in ``NONSTOP_LISTEN_FDS``, if any."""
    value = os.environ.pop(ENV_FDS, None)
    if not value:
        return None
    fd = int(value.split(",")[0])
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def send(conn_fd: int, listen_fd: int, payload: dict) -> None:
    """Answer a ``POST /takeover`` on the admin connection ``conn_fd``: the listening fd rides with the response."""
    body = json.dumps(payload).encode()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(body)
    )
    s = socket.socket(fileno=os.dup(conn_fd))
    try:
        s.setblocking(True)
        s.sendmsg([head + body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [listen_fd]))])
    finally:
        s.close()


def receive(admin_socket: str, timeout: float = 10.0) -> tuple[socket.socket, dict]:
    """Ask the proxy on ``admin_socket`` for its listening socket; returns it and the old process's answer.

    The answer holds ``pid`` (to signal once this process is ready) and
    ``table`` (its live route table).
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with reachable(admin_socket) as where:
            s.connect(where)
        s.sendall(b"POST /takeover HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\n\r\n")
        data, fds, _flags, _addr = socket.recv_fds(s, 1 << 20, 4)
        chunks = [data]
        while True:
            more = s.recv(1 << 20)
            if not more:
                break
            chunks.append(more)
    except OSError as e:
        raise ProxyError(f"takeover: cannot reach the running proxy at {admin_socket}: {e}") from e
    finally:
        s.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or not fds:
        for fd in fds:
            os.close(fd)
        raise ProxyError(f"takeover refused by the running proxy: {raw[:200]!r}")
    for fd in fds[1:]:
        os.close(fd)
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    return sock, json.loads(body)


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["bind", "from_env", "send", "receive", "address", "ENV_FDS"]
