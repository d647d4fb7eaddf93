"""Per-release and per-target stats from a JSON access log (nginx's, or HAProxy's in managed mode).

Three small parts:

- ``LogTail`` follows a file by offset: each ``read()`` returns the complete
  new lines since the last call. It keeps the file open, so a rotation by
  rename (logrotate's default) loses nothing: the rest of the old file is read
  to its end, then the new file from its start, and the old one is still read
  for a few seconds (writers reopen their log a little later). A file truncated in place
  (``copytruncate``) is read again from 0.
- ``StatsBook`` folds records (``release``, ``target``, ``status``,
  ``seconds``, ``proxy_error``) into cumulative counters in the
  ``StatsSnapshot`` shape of docs/internals.md.
- ``nginx_record`` / ``haproxy_record`` read one line of the JSON log format
  nonstop gives each router (``nginx_conf.LOG_FORMAT_FIELDS``,
  ``haproxy_conf.LOG_FORMAT``) into such a record.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterable

from nonstop.proxy.stats import LATENCY_BUCKETS, Counters, to_dict

__all__ = ["LogTail", "StatsBook", "LATENCY_BUCKETS", "nginx_record", "haproxy_record"]


class LogTail:
    """Complete new lines of a growing file, across rotation. Not thread-safe; one reader."""

    ROTATED_GRACE = 5.0  # seconds the previous file is still read after a rotation (writers reopen late)

    def __init__(self, path: str, *, from_end: bool = False, max_read: int = 8 << 20) -> None:
        self.path = path
        self._f: Any = None
        self._ino: int | None = None
        self._partial = b""
        self._prev: Any = None  # the file before the last rotation, read until its writers moved on
        self._prev_partial = b""
        self._prev_until = 0.0
        self._from_end = from_end
        self._max_read = max_read

    def _open(self, at_end: bool) -> bool:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return False
        st = os.fstat(f.fileno())
        self._f, self._ino = f, st.st_ino
        if at_end:
            f.seek(0, os.SEEK_END)
        return True

    def read(self) -> list[bytes]:
        """New complete lines (without the newline); at most about ``max_read`` bytes per call."""
        lines: list[bytes] = []
        if self._prev is not None:
            data = self._prev.read(self._max_read)
            if data:
                lines.extend(self._split_prev(data))
            elif time.monotonic() > self._prev_until:
                self._prev.close()
                self._prev = None
        if self._f is None:
            if not self._open(self._from_end):
                return lines
            self._from_end = False
        budget = self._max_read
        while budget > 0:
            chunk = self._f.read(min(budget, 1 << 20))
            if chunk:
                budget -= len(chunk)
                lines.extend(self._split(chunk))
                continue
            # At EOF of the open file: rotated (other inode) or truncated?
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                break  # renamed, new one not created yet: keep reading the old one
            if st.st_ino != self._ino:
                if self._prev is not None:
                    self._prev.close()
                self._prev, self._prev_partial = self._f, self._partial
                self._prev_until = time.monotonic() + self.ROTATED_GRACE
                self._f, self._partial = None, b""
                if not self._open(False):
                    break
                continue
            if st.st_size < self._f.tell():
                self._f.seek(0)
                self._partial = b""
                continue
            break
        return lines

    def _split(self, chunk: bytes) -> list[bytes]:
        parts = (self._partial + chunk).split(b"\n")
        self._partial = parts.pop()
        return [p for p in parts if p]

    def _split_prev(self, chunk: bytes) -> list[bytes]:
        parts = (self._prev_partial + chunk).split(b"\n")
        self._prev_partial = parts.pop()
        return [p for p in parts if p]

    def close(self) -> None:
        for f in (self._f, self._prev):
            if f is not None:
                f.close()
        self._f = self._prev = None


class StatsBook:
    """Cumulative counters per release and per target, from access-log records.

    The counters and their JSON are the embedded proxy's (``nonstop.proxy.stats``):
    same latency buckets, same quantile estimate, so analysis reads every router alike.
    """

    def __init__(self) -> None:
        self.releases: dict[str, Counters] = {}
        self.targets: dict[str, Counters] = {}
        self.malformed = 0

    def add(self, release: str | None, target: str | None, status: int, seconds: float, proxy_error: bool) -> None:
        for key, table in ((release, self.releases), (target, self.targets)):
            if key:
                c = table.get(key)
                if c is None:
                    c = table[key] = Counters()
                c.record(status, seconds)
                if proxy_error:
                    c.proxy_errors += 1

    def add_all(self, records: Iterable[dict[str, Any] | None]) -> None:
        for rec in records:
            if rec is None:
                self.malformed += 1
                continue
            self.add(rec.get("release"), rec.get("target"), rec["status"], rec["seconds"], rec["proxy_error"])

    def snapshot(self, in_flight: dict[str, int] | None = None) -> dict[str, Any]:
        """``{"releases": {name: S}, "targets": {addr: S}}``; ``in_flight`` per target when the router knows it."""
        in_flight = in_flight or {}
        targets = {}
        for addr, c in self.targets.items():
            s = to_dict(c)
            s["in_flight"] = in_flight.get(addr, 0)
            targets[addr] = s
        return {"releases": {k: to_dict(c) for k, c in self.releases.items()}, "targets": targets}


def _last(field_value: str) -> str:
    """The last entry of an nginx multi-upstream field (``a, b : c``): the attempt that answered."""
    return field_value.replace(" : ", ", ").split(", ")[-1].strip()


def nginx_record(line: bytes, app: str | None = None) -> dict[str, Any] | None:
    """One nonstop JSON access-log line → a stats record, or None when malformed (or another app's)."""
    try:
        d = json.loads(line)
        if app is not None and d.get("app") not in (None, app):
            return None
        status = int(d["status"])
        seconds = float(d.get("request_time") or 0.0)
    except (ValueError, KeyError, TypeError):
        return None
    addr = _last(str(d.get("upstream_addr") or ""))
    target = addr if addr and ":" in addr and not addr.startswith("unix:") else None
    received = _last(str(d.get("upstream_bytes_received") or ""))
    # nginx's own 502/503/504: no byte came back from the upstream that answered last (or none was tried).
    proxy_error = status in (502, 503, 504) and received in ("", "-", "0")
    return {
        "release": d.get("release") or None,
        "target": target,
        "status": status,
        "seconds": seconds,
        "proxy_error": proxy_error,
    }


def haproxy_record(line: bytes, app: str) -> dict[str, Any] | None:
    try:
        d = json.loads(line)
        if d.get("app") != app:
            return None
        status = int(d["status"])
        seconds = max(0, int(d.get("ta_ms", 0))) / 1000
    except (ValueError, KeyError, TypeError):
        return None
    rel = d.get("release")
    target = d.get("target") or ""
    if target.startswith("-") or ":" not in target or d.get("server") in ("<NOSRV>", "-", None):
        target = None
    # HAProxy's own answers end abnormally ("SC", "sH", ...); the app's own 502 ends "--".
    proxy_error = status in (502, 503, 504) and not str(d.get("termination", "--")).startswith("-")
    return {
        "release": None if rel in (None, "", "-") else rel,
        "target": target,
        "status": status,
        "seconds": seconds,
        "proxy_error": proxy_error,
    }
