"""What nginx and HAProxy routers share: the split plan, the names they carry, the commands they run.

- ``plan`` checks a ``RouteTable`` for names a config file cannot carry and computes the split
  both routers render: the usable releases, which of the 100 buckets goes to which release
  (``nonstop.proxy.split.normalise``: the embedded proxy's own rule, so every router gives a
  user the same bucket), and the match rules in order. Pure.
- ``resolve_targets`` turns target names into addresses before a router is told of them.
- ``run_command`` runs ``nginx -t``, ``haproxy -c`` and friends: never through a shell, bounded
  in time, the output kept for the error.
- ``error_tail`` is the end of a router's error log, on one line, for a ``RouterError``.
- ``still_running`` tells a process we started from a recycled pid.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass

import psutil

from nonstop.agent.logfiles import tail
from nonstop.agent.routers.base import Release, RouteTable
from nonstop.errors import RouterError
from nonstop.proxy.split import normalise

__all__ = ["BUCKETS", "COOKIE_NAME", "COOKIE_ATTRS", "Plan", "plan", "ident", "resolve_targets", "run_command", "error_tail", "still_running"]

BUCKETS = 100
COOKIE_NAME = "nonstop_bucket"
COOKIE_ATTRS = "Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:@+/=-]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_ADDR = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$")


@dataclass(frozen=True)
class Plan:
    """What a routing means for a router: usable releases, bucket → release, match rules in order."""

    usable: tuple[Release, ...]
    by_bucket: tuple[str, ...]  # 100 release names, or () when nothing is usable
    matchers: tuple[Release, ...]  # usable releases with match rules, first wins


def plan(routing: RouteTable) -> Plan:
    """Check a routing and compute its split (pure). Raises ``RouterError`` for names nginx/HAProxy cannot carry."""
    seen: set[str] = set()
    for r in routing.releases:
        if not r.name or not _SAFE_VALUE.match(r.name):
            raise RouterError(f"release name {r.name!r}: only letters, digits and _.:@+/=- are allowed")
        if r.name in seen:
            raise RouterError(f"release {r.name!r} is listed twice")
        seen.add(r.name)
        if not 0 <= r.weight <= 100:
            raise RouterError(f"release {r.name!r}: weight {r.weight} is not within 0..100")
        for t in r.targets:
            if not _ADDR.match(t.addr):
                raise RouterError(f"release {r.name!r}: target {t.addr!r} is not HOST:PORT")
        for name, _ in r.match_headers:
            if not _HEADER_NAME.match(name):
                raise RouterError(f"release {r.name!r}: match header name {name!r} is not a plain header name")
        for name, _ in r.match_cookies:
            if not _COOKIE_NAME.match(name):
                raise RouterError(f"release {r.name!r}: match cookie name {name!r}: only letters, digits and _")
        for _, value in (*r.match_headers, *r.match_cookies):
            if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
                raise RouterError(f"release {r.name!r}: match value {value!r} must be printable ASCII")
    usable = tuple(r for r in routing.releases if r.live_targets)
    shares = normalise([r.weight for r in usable])
    by_bucket: list[str] = []
    for r, share in zip(usable, shares):
        by_bucket.extend([r.name] * share)
    matchers = tuple(r for r in usable if r.match_headers or r.match_cookies)
    return Plan(usable=usable, by_bucket=tuple(by_bucket), matchers=matchers)


def ident(text: str) -> str:
    """A name nginx/HAProxy accept in identifiers: non-alphanumerics become ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


async def resolve_targets(p: Plan) -> tuple[dict[str, str], dict[str, str]]:
    """Each live target's address as ``ip:port`` (``[ip]:port`` for IPv6), and the aliases made.

    HAProxy takes a name it cannot resolve without complaint (the server just never works, as no
    resolvers section exists), so names are resolved here, before any change; a name that does not
    resolve is a ``RouterError`` naming the release and the target. The aliases (``ip:port`` ->
    the target as the routing names it) let stats read back under the routing's names.
    """
    resolved: dict[str, str] = {}
    aliases: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    for r in p.usable:
        for t in r.live_targets:
            host = t.host.strip("[]")
            try:
                ipaddress.ip_address(host)
                resolved[t.addr] = t.addr
                continue
            except ValueError:
                pass
            try:
                infos = await loop.getaddrinfo(host, t.port, type=socket.SOCK_STREAM)
            except OSError as e:
                raise RouterError(f"release {r.name!r}: cannot resolve target {t.addr!r}: {e}") from None
            ip = infos[0][4][0]
            resolved[t.addr] = f"[{ip}]:{t.port}" if ":" in ip else f"{ip}:{t.port}"
            aliases[resolved[t.addr].strip("[]").replace("]:", ":")] = t.addr
    return resolved, aliases


async def run_command(argv: list[str], *, timeout: float) -> tuple[int, str]:
    """Run a command (never through a shell); its exit code and its stdout+stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as e:
        raise RouterError(f"cannot run {argv[0]!r}: {e.strerror}", detail={"command": argv}) from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        await proc.wait()
        raise RouterError(f"{' '.join(argv)} did not finish within {timeout:.0f}s", detail={"command": argv}) from None
    return proc.returncode, out.decode(errors="replace")


def still_running(pid: int, create_time: float) -> bool:
    """Whether ``pid`` is still the process that started at ``create_time`` (and not a zombie)."""
    try:
        p = psutil.Process(pid)
        return p.create_time() == create_time and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def error_tail(path: str, lines: int = 5) -> str:
    """The last ``lines`` lines of ``path`` joined by `` | `` (``(no error log)`` when it is empty or missing)."""
    return " | ".join(tail(path, lines).strip().splitlines()) or "(no error log)"
