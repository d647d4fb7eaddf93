"""Listening sockets passed by systemd (socket activation, ``sd_listen_fds(3)``).

A socket unit binds the public addresses (80/443 need no root in nonstop
then) and hands them to the service as file descriptors 3, 4, … with
``LISTEN_PID`` (must be this process), ``LISTEN_FDS`` (how many) and
``LISTEN_FDNAMES`` (colon-separated, from ``FileDescriptorName=``).
``listen_fds()`` takes them once: it marks them close-on-exec (a child gets
one only when it is passed on purpose, e.g. ``Popen(pass_fds=…)``) and
unsets the variables, as ``sd_listen_fds(1)`` does, so no child mistakes
them for its own. ``for_address`` picks the one bound to a wanted
``HOST:PORT`` (by ``getsockname``), which is what nonstop matches on; the
names are for messages and for a unit that binds one address twice.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass

from nonstop.errors import ProxyError

__all__ = ["Inherited", "ListenFdsError", "listen_fds", "named", "for_address", "LISTEN_FDS_START"]

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ListenFdsError(ProxyError):
    """The sockets systemd passed are not what the protocol or the config says."""

    exit_code = 2


@dataclass(frozen=True)
class Inherited:
    """One listening socket passed by systemd, with its ``FileDescriptorName``."""

    name: str
    sock: socket.socket

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_fds(environ: MutableMapping[str, str] | None = None, *, pid: int | None = None,
               unset: bool = True) -> list[Inherited]:
    """The sockets passed to this process (empty when none were, or they were meant for another pid)."""
    env = os.environ if environ is None else environ
    try:
        if env.get("LISTEN_PID", "").strip() != str(os.getpid() if pid is None else pid):
            return []
        count = _count(env.get("LISTEN_FDS", ""))
        names = env.get("LISTEN_FDNAMES")
        labels = names.split(":") if names else ["unknown"] * count
        if len(labels) != count:
            raise ListenFdsError(f"LISTEN_FDNAMES names {len(labels)} sockets but LISTEN_FDS is {count}")
    finally:
        if unset:
            for var in _VARS:
                env.pop(var, None)
    out = []
    for i, name in enumerate(labels):
        fd = LISTEN_FDS_START + i
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise ListenFdsError(f"file descriptor {fd} ({name}) from systemd is not usable: {e.strerror or e}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ListenFdsError(f"file descriptor {fd} ({name}) from systemd is not a listening stream socket")
        out.append(Inherited(name, sock))
    return out


def named(socks: Sequence[Inherited]) -> dict[str, socket.socket]:
    """``{FileDescriptorName: socket}``; two sockets under one name are an error (use ``for_address``)."""
    out: dict[str, socket.socket] = {}
    for s in socks:
        if s.name in out:
            raise ListenFdsError(f"systemd passed two sockets named {s.name!r}; match them by address instead")
        out[s.name] = s.sock
    return out


def for_address(socks: Sequence[Inherited], addr: str) -> Inherited | None:
    """The socket bound to ``addr`` (``HOST:PORT`` as in the config), or ``None``.

    ``0.0.0.0:P`` is also served by a dual-stack ``[::]:P`` socket (systemd's
    default for ``ListenStream=[::]:P``); a host name is resolved.
    """
    host, _, port_s = addr.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_s)
    except ValueError:
        return None
    wanted = _addresses(host, port)
    for s in socks:
        if s.sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        shost, sport = s.sock.getsockname()[:2]
        if sport != port:
            continue
        got = ipaddress.ip_address(shost.split("%")[0])
        if got in wanted:
            return s
        if got == ipaddress.IPv6Address("::") and ipaddress.IPv4Address("0.0.0.0") in wanted and _dual_stack(s.sock):
            return s
    return None


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ListenFdsError(f"LISTEN_FDS is not a number: {value!r}") from None
    if n < 0:
        raise ListenFdsError(f"LISTEN_FDS is negative: {n}")
    return n


def _addresses(host: str, port: int) -> set:
    try:
        return {ipaddress.ip_address(host)}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos}


def _dual_stack(sock: socket.socket) -> bool:
    try:
        return not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    except OSError:
        return False
