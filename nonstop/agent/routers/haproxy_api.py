"""A small client of the HAProxy runtime API (the ``stats socket … level admin``).

One connection per command (HAProxy's non-interactive mode: send a line,
read until it closes). HAProxy answers in free text; ``command`` turns the
answers that mean failure into ``RouterError`` so callers never parse them.
Tested against HAProxy 2.6 (Debian 12); see docs/routers.md.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass

from nonstop.errors import RouterError
from nonstop.unixsock import reachable

__all__ = ["HaproxyApi", "ServerStat"]

# Fragments of HAProxy's answers that mean "not done". Success answers are empty or
# "New server registered." / "Server deleted." / "New version created: N".
_FAILURE_MARKS = (
    "unknown",
    "no such",
    "expects",
    "require",
    "cannot",
    "can't",
    "not found",
    "failed",
    "invalid",
    "error",
    "only servers in maintenance",
    "permission denied",
    "not allowed",
    "is still",
    "out of memory",
    "missing",
    "must",
)


@dataclass(frozen=True)
class ServerStat:
    """One server line of ``show stat``, the fields nonstop uses."""

    backend: str
    name: str
    addr: str  # "127.0.0.1:8081"
    status: str  # UP, DOWN, MAINT, DRAIN, "no check"
    weight: int
    scur: int  # current sessions (requests in flight)
    stot: int
    by_class: dict[str, int]
    other: int
    econ: int  # connection errors
    eresp: int
    rtime_ms: int  # average response time over the last 1024 requests
    ttime_ms: int

    @property
    def requests(self) -> int:
        return sum(self.by_class.values()) + self.other


class HaproxyApi:
    """Sends runtime-API commands to one socket path."""

    def __init__(self, socket_path: str, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def raw(self, line: str, payload: str | None = None) -> str:
        """Send one command (plus an optional ``<<`` payload); the answer text."""
        text = line
        if payload is not None:
            text = f"{line} <<\n{payload.rstrip(chr(10))}\n\n"
        else:
            text = line + "\n"
        try:
            with reachable(self.socket_path) as where:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(where), self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise RouterError(f"HAProxy runtime API {self.socket_path}: cannot connect ({e})") from None
        try:
            writer.write(text.encode())
            await writer.drain()
            chunks = []
            while True:
                data = await asyncio.wait_for(reader.read(1 << 16), self.timeout)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
        except (OSError, asyncio.TimeoutError) as e:
            raise RouterError(f"HAProxy runtime API {self.socket_path}: {line!r} failed ({e!r})") from None
        finally:
            writer.close()

    async def command(self, line: str, payload: str | None = None, *, expect: str | None = None) -> str:
        """Like ``raw`` but raises ``RouterError`` when HAProxy's answer says it did not do it.

        ``expect``: a fragment the answer must contain (``add server`` answers "New server registered.").
        """
        out = await self.raw(line, payload)
        low = out.strip().lower()
        if expect is not None:
            if expect.lower() not in low:
                raise RouterError(f"HAProxy refused {line!r}: {out.strip()}", detail={"command": line})
            return out
        if low and any(m in low for m in _FAILURE_MARKS):
            raise RouterError(f"HAProxy refused {line!r}: {out.strip()}", detail={"command": line})
        return out

    # -- typed helpers ---------------------------------------------------
    async def show_stat(self) -> list[ServerStat]:
        out = await self.raw("show stat")
        if not out.startswith("# "):
            raise RouterError(f"HAProxy 'show stat' answered: {out.strip()[:200]}")
        rows = csv.DictReader(io.StringIO(out[2:]))
        stats = []
        for row in rows:
            if row.get("svname") in ("FRONTEND", "BACKEND") or row.get("type") != "2":
                continue
            stats.append(
                ServerStat(
                    backend=row["pxname"],
                    name=row["svname"],
                    addr=row.get("addr") or "",
                    status=row.get("status") or "",
                    weight=_int(row.get("weight")),
                    scur=_int(row.get("scur")),
                    stot=_int(row.get("stot")),
                    by_class={f"{i}xx": _int(row.get(f"hrsp_{i}xx")) for i in range(1, 6)},
                    other=_int(row.get("hrsp_other")),
                    econ=_int(row.get("econ")),
                    eresp=_int(row.get("eresp")),
                    rtime_ms=_int(row.get("rtime")),
                    ttime_ms=_int(row.get("ttime")),
                )
            )
        return stats

    async def servers(self, backend: str) -> dict[str, tuple[str, int]]:
        """``show servers state``: server name -> (addr "ip:port", admin state bits)."""
        out = await self.raw(f"show servers state {backend}")
        if "can't find backend" in out.lower() or "no such backend" in out.lower():
            raise RouterError(f"HAProxy has no backend {backend!r}")
        result: dict[str, tuple[str, int]] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 19 or parts[0].startswith("#") or parts[1] != backend:
                continue
            result[parts[3]] = (f"{parts[4]}:{parts[18]}", _int(parts[6]))
        return result

    async def replace_map(self, path: str, entries: list[tuple[str, str]]) -> None:
        """Swap a map's whole content atomically (``prepare map`` / ``add map @ver`` / ``commit map``)."""
        out = await self.command(f"prepare map {path}")
        ver = out.strip().rsplit(":", 1)[-1].strip()
        if not ver.isdigit():
            raise RouterError(f"HAProxy 'prepare map {path}' answered: {out.strip()}")
        for i in range(0, len(entries), 200):
            chunk = "\n".join(f"{k} {v}" for k, v in entries[i : i + 200])
            if chunk:
                await self.command(f"add map @{ver} {path}", payload=chunk)
        await self.command(f"commit map @{ver} {path}")


def _int(v: str | None) -> int:
    try:
        return int(v) if v not in (None, "") else 0
    except ValueError:
        return 0
