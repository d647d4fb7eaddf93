"""What listens inside a container: its network namespace seen from the host.

A container whose health check keeps failing often runs an app that listens
on another port than ``run.container_port`` (or on 127.0.0.1 inside, where
the published port cannot reach it). ``/proc/<pid>/net/tcp{,6}`` of the
container's main process is that namespace's socket table, readable from the
host (as root, or as the user a rootless container runs as) with nothing
needed inside the image.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["Listener", "parse_proc_net_tcp", "listeners", "describe_listening"]

_LISTEN = "0A"


class Listener(tuple):
    """(address, port) of one listening socket; address "0.0.0.0" / "::" for every interface."""

    __slots__ = ()

    def __new__(cls, address: str, port: int) -> "Listener":
        return super().__new__(cls, (address, port))

    @property
    def address(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    @property
    def loopback_only(self) -> bool:
        return self.address.startswith("127.") or self.address == "::1"


def _addr(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) order
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    full = b"".join(words)
    if full == bytes(16):
        return "::"
    if full == bytes(15) + b"\x01":
        return "::1"
    if full[:12] == bytes(10) + b"\xff\xff":
        return ".".join(str(b) for b in full[12:])
    return ":".join(full[i : i + 2].hex() for i in range(0, 16, 2))


def parse_proc_net_tcp(text: str) -> set[Listener]:
    """The listening sockets in a ``/proc/net/tcp`` or ``tcp6`` table."""
    out: set[Listener] = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or parts[3] != _LISTEN:
            continue
        addr, _, port = parts[1].partition(":")
        try:
            out.add(Listener(_addr(addr), int(port, 16)))
        except ValueError:
            continue
    return out


def listeners(pid: int, proc: Path = Path("/proc")) -> set[Listener] | None:
    """What listens in the network namespace of process ``pid``; None when it cannot be read."""
    found: set[Listener] = set()
    read_any = False
    for name in ("tcp", "tcp6"):
        try:
            text = (proc / str(pid) / "net" / name).read_text()
        except FileNotFoundError:
            continue  # no IPv6 in that namespace
        except OSError:
            return None
        read_any = True
        found |= parse_proc_net_tcp(text)
    return found if read_any else None


def describe_listening(container_port: int, found: set[Listener] | None) -> str | None:
    """Why the published port gets no answer, from what listens inside; None when nothing is wrong
    (something listens on ``container_port`` on every interface) or when it could not be told."""
    if found is None:
        return None
    on_port = [l for l in found if l.port == container_port]
    if on_port and any(not l.loopback_only for l in on_port):
        return None
    if on_port:
        return (
            f"the app listens on container_port {container_port} only on {on_port[0].address} inside the "
            "container, where the published port cannot reach it; make it bind 0.0.0.0"
        )
    others = sorted({l.port for l in found})
    if not others:
        return f"nothing listens on container_port {container_port} inside the container (nothing listens at all yet)"
    shown = ", ".join(str(p) for p in others)
    return (
        f"nothing listens on container_port {container_port} inside the container; it listens on {shown} "
        "(set run.container_port to the app's port, or make the app bind this one)"
    )
