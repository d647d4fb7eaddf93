"""Helpers for the nginx / HAProxy router tests: backends, free ports, configs, a counting load client.

The load client speaks raw HTTP/1.1 over keep-alive connections so the test
controls exactly what happens when a proxy closes an idle connection:

- ``naive``: reuses a connection blindly; a request that gets no response is
  a failure, full stop.
- ``check``: before reusing an idle connection, looks whether the server
  already closed it (EOF pending) and opens a new one if so, as urllib3 and
  httpcore do; no retry.
- ``retry``: ``check``, and a request sent on a *reused* connection that was
  closed before any response byte arrived is sent again once on a new
  connection (what browsers and httpx do for idempotent requests). Counted in
  ``retried``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nonstop.config import from_dict

HERE = Path(__file__).resolve().parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Backend:
    proc: subprocess.Popen
    addr: str
    version: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_backend(version: str) -> Backend:
    proc = subprocess.Popen(
        [PY, str(HERE / "backend.py"), "--version", version],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"backend {version} did not start: {line!r}")
    return Backend(proc, line.split()[-1], version)


@contextmanager
def backends(*versions: str):
    started: list[Backend] = []
    try:
        for v in versions:
            started.append(start_backend(v))
        yield started
    finally:
        for b in started:
            b.stop()


def make_cfg(tmp: Path, router: dict, *, listen: str | None = None, app: str = "shop", **extra):
    data = {
        "app": app,
        "listen": listen or f"127.0.0.1:{free_port()}",
        "run": {"command": "true {port}", "ports": "20001-20004"},
        "router": router,
        "drain_timeout": "10s",
        **extra,
    }
    return from_dict(data, source=str(tmp / "nonstop.yml"))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class ClosedBeforeResponse(Exception):
    """The server closed the connection before sending any byte of the response."""


class Conn:
    """One keep-alive HTTP/1.1 client connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None
        self.used = 0

    async def open(self) -> None:
        self.r, self.w = await asyncio.open_connection(self.host, self.port)
        self.used = 0

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
            self.w = None

    async def request(self, path: str = "/", headers: dict[str, str] | None = None, method: str = "GET") -> Response:
        if self.w is None:
            await self.open()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.w.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            await self.w.drain()
            head = await self.r.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            self.close()
            if not e.partial:
                raise ClosedBeforeResponse() from None
            raise
        except (ConnectionResetError, BrokenPipeError):
            self.close()
            raise ClosedBeforeResponse() from None
        text = head.decode("latin-1").split("\r\n")
        status = int(text[0].split()[1])
        hdrs: dict[str, str] = {}
        for line in text[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                k = k.strip().lower()
                hdrs[k] = (hdrs[k] + ", " + v.strip()) if k in hdrs else v.strip()
        n = int(hdrs.get("content-length", "0"))
        body = await self.r.readexactly(n) if n and method != "HEAD" else b""
        self.used += 1
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return Response(status, hdrs, body)


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    retried: int = 0
    by_release: collections.Counter = field(default_factory=collections.Counter)
    by_status: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return self.ok + self.failed


async def load(
    addr: str,
    seconds: float,
    *,
    clients: int = 20,
    retry: bool = False,
    check: bool = False,
    path: str = "/",
    headers: dict[str, str] | None = None,
    pause: float = 0.0,
    stop: asyncio.Event | None = None,
) -> LoadResult:
    """``clients`` keep-alive clients sending requests back to back for ``seconds`` (or until ``stop``)."""
    host, _, port = addr.rpartition(":")
    res = LoadResult()
    end = time.monotonic() + seconds

    async def one() -> None:
        c = Conn(host, int(port))
        while time.monotonic() < end and not (stop and stop.is_set()):
            if (check or retry) and c.w is not None and c.r.at_eof():
                c.close()  # the server closed it while idle: do not reuse
            reused = c.w is not None and c.used > 0
            try:
                try:
                    r = await asyncio.wait_for(c.request(path, headers), 10)
                except ClosedBeforeResponse:
                    if not (retry and reused):
                        raise
                    res.retried += 1
                    r = await asyncio.wait_for(c.request(path, headers), 10)
            except Exception as e:  # every failure counts, whatever its kind
                res.failed += 1
                res.errors[type(e).__name__] += 1
                c.close()
                continue
            res.by_status[r.status] += 1
            if 200 <= r.status < 500:
                res.ok += 1
            else:
                res.failed += 1
                res.errors[f"status {r.status}"] += 1
            res.by_release[r.headers.get("x-nonstop-release", "?")] += 1
            if pause:
                await asyncio.sleep(pause)
        c.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return res


async def get(addr: str, path: str = "/", headers: dict[str, str] | None = None, method: str = "GET") -> Response:
    host, _, port = addr.rpartition(":")
    c = Conn(host, int(port))
    try:
        return await asyncio.wait_for(c.request(path, {**(headers or {}), "Connection": "close"}, method), 30)
    finally:
        c.close()


async def wait_serving(addr: str, release: str | None = None, timeout: float = 10) -> Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = await get(addr)
            if release is None or r.headers.get("x-nonstop-release") == release:
                return r
            last = r.headers
        except OSError as e:
            last = e
        await asyncio.sleep(0.05)
    raise AssertionError(f"{addr} did not serve {release or 'anything'} within {timeout}s: {last}")


def pids_alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            out.append(pid)
        except ProcessLookupError:
            pass
    return out
