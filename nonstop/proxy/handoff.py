"""The listening sockets: bound fresh, inherited through ``NONSTOP_LISTEN_FDS``, or handed over by a running proxy.

A proxy serves up to two named listening sockets: ``http`` (``listen``) and
``https`` (``tls_listen``). They are kernel objects that outlive any one
process holding them:

- *inherited*: ``NONSTOP_LISTEN_FDS=http:3,https:4`` names descriptors the
  process was started with (the agent keeps its own copies, so a proxy that
  dies loses no connection still waiting in the kernel's backlog; a workers
  supervisor hands them to its workers the same way);
- *handed over*: ``POST /takeover`` on a running proxy's admin socket answers
  with its sockets as SCM_RIGHTS ancillary data, so both processes accept from
  the same queues until the old one stops (unlike two SO_REUSEPORT sockets,
  where closing one resets whatever sat in its own backlog); ``POST /share``
  does the same without retiring the old process (the agent taking copies).
"""

from __future__ import annotations

import array
import json
import os
import socket

from nonstop.errors import ProxyError
from nonstop.unixsock import reachable

ENV_FDS = "NONSTOP_LISTEN_FDS"
NAMES = ("http", "https")

__all__ = ["bind", "inherited", "env_value", "send", "receive", "address", "ENV_FDS", "NAMES"]


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


def inherited(environ: dict | None = None) -> dict[str, socket.socket]:
    """The listening sockets passed down in ``NONSTOP_LISTEN_FDS`` (``http:3,https:4``; a bare ``3`` is
    ``http``), by name. The variable is removed, so processes this one starts do not see it."""
    env = os.environ if environ is None else environ
    value = env.pop(ENV_FDS, None)
    out: dict[str, socket.socket] = {}
    if not value:
        return out
    for part in value.split(","):
        name, sep, fd = part.strip().rpartition(":")
        name = name if sep else "http"
        if name not in NAMES or not fd.isdigit():
            raise ProxyError(f"{ENV_FDS}: expected NAME:FD for NAME in {', '.join(NAMES)}; got {part!r}")
        sock = socket.socket(fileno=int(fd))
        sock.setblocking(False)
        out[name] = sock
    return out


def env_value(socks: dict[str, socket.socket]) -> tuple[str, tuple[int, ...]]:
    """``NONSTOP_LISTEN_FDS``'s value for ``socks`` and the descriptors to pass (``Popen(pass_fds=…)``)."""
    return ",".join(f"{name}:{s.fileno()}" for name, s in socks.items()), tuple(s.fileno() for s in socks.values())


def send(conn_fd: int, socks: dict[str, socket.socket], payload: dict) -> None:
    """Answer a ``POST /takeover`` or ``/share`` on the admin connection ``conn_fd``: the listening
    descriptors ride with the response, in the order ``payload["sockets"]`` names them."""
    body = json.dumps({**payload, "sockets": list(socks)}).encode()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(body)
    )
    s = socket.socket(fileno=os.dup(conn_fd))
    try:
        s.setblocking(True)
        fds = array.array("i", [sk.fileno() for sk in socks.values()])
        s.sendmsg([head + body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    finally:
        s.close()


def receive(admin_socket: str, path: str = "/takeover", timeout: float = 10.0) -> tuple[dict[str, socket.socket], dict]:
    """Ask the proxy on ``admin_socket`` for its listening sockets (``/takeover``: then retire it once
    this process is ready; ``/share``: only copies). Returns them by name and the old process's answer
    (``pid``, ``table``: its live route table, ``listen``)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with reachable(admin_socket) as where:
            s.connect(where)
        s.sendall(b"POST %s HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\n\r\n" % path.encode())
        data, fds, _flags, _addr = socket.recv_fds(s, 1 << 20, 8)
        chunks = [data]
        while True:
            more = s.recv(1 << 20)
            if not more:
                break
            chunks.append(more)
    except OSError as e:
        raise ProxyError(f"{path.strip('/')}: cannot reach the running proxy at {admin_socket}: {e}") from e
    finally:
        s.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    answer = json.loads(body) if head.startswith(b"HTTP/1.1 200") and fds else None
    names = (answer or {}).get("sockets") or ["http"]
    if answer is None or len(names) != len(fds):
        for fd in fds:
            os.close(fd)
        raise ProxyError(f"{path.strip('/')} refused by the running proxy: {raw[:200]!r}")
    out = {}
    for name, fd in zip(names, fds):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        out[name] = sock
    return out, answer


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
