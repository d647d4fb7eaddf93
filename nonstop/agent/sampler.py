"""Rates from cumulative counters: the dashboard's charts, kept in a small ring buffer. No I/O.

The router's stats are cumulative (requests, status classes, a latency
histogram per release). Once a second the dashboard hands ``Sampler.add``
a snapshot and the weights of the moment; the sampler differences it with
the previous snapshots and keeps one ``Sample`` per tick:

- ``rps``: requests per second over the last tick;
- ``error_rate`` (5xx share, 0..1) and ``p99`` (seconds) over a sliding
  window of ``window`` ticks, because one second of a 10% canary holds too
  few requests to say anything;
- ``weight``: the release's share of new users (0..100) at that moment.

A counter that went down (the proxy restarted, or a target left the
table and took its counts with it) gives no figure for that tick rather
than a wrong one; the next tick is measured from the new values.
"""

from __future__ import annotations

from nonstop.proxy import stats as _stats

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sampler", "Sample", "ReleaseSample", "quantile"]


@dataclass(frozen=True)
class ReleaseSample:
    rps: float | None
    error_rate: float | None
    p99: float | None
    weight: int
    requests: int  # in the last tick
    errors: int  # 5xx in the last tick

    def to_json(self) -> dict:
        return {
            "rps": _r(self.rps, 2),
            "error_rate": _r(self.error_rate, 5),
            "p99": _r(self.p99, 5),
            "weight": self.weight,
            "requests": self.requests,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class Sample:
    ts: float
    releases: dict[str, ReleaseSample] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"ts": round(self.ts, 3), "releases": {k: v.to_json() for k, v in self.releases.items()}}


@dataclass(frozen=True)
class _Cum:
    """One release's cumulative counters at one moment."""

    requests: int
    errors: int
    counts: tuple[int, ...]
    bounds: tuple[float, ...]

    @classmethod
    def of(cls, s: Mapping[str, Any]) -> "_Cum":
        lat = s.get("latency") or {}
        return cls(
            requests=int(s.get("requests", 0)),
            errors=int((s.get("by_class") or {}).get("5xx", 0)),
            counts=tuple(int(c) for c in lat.get("counts") or ()),
            bounds=tuple(float(b) for b in lat.get("buckets") or ()),
        )

    def covers(self, older: "_Cum") -> bool:
        """True when every counter of ``older`` is <= ours (no reset in between)."""
        if self.requests < older.requests or self.errors < older.errors:
            return False
        if len(self.counts) != len(older.counts):
            return not older.counts
        return all(a >= b for a, b in zip(self.counts, older.counts))


class Sampler:
    """Owns the ring buffer of samples (``size`` ticks) and the recent cumulative snapshots."""

    def __init__(self, size: int = 300, window: int = 5) -> None:
        self.samples: deque[Sample] = deque(maxlen=size)
        self.window = window
        self._snaps: deque[tuple[float, dict[str, _Cum]]] = deque(maxlen=max(1, window))

    def add(self, ts: float, stats: Mapping[str, Any] | None, weights: Mapping[str, int]) -> Sample:
        """Record the snapshot taken at ``ts`` (``None``: the router gave no stats) and return the new sample."""
        cur = {name: _Cum.of(s) for name, s in ((stats or {}).get("releases") or {}).items()}
        prev = self._snaps[-1] if self._snaps else None
        out: dict[str, ReleaseSample] = {}
        for name in sorted(set(cur) | set(weights)):
            c = cur.get(name)
            w = int(weights.get(name, 0))
            if c is None:
                out[name] = ReleaseSample(None, None, None, w, 0, 0)
                continue
            rps = None
            reqs = errs = 0
            if prev is not None and name in prev[1] and c.covers(prev[1][name]) and ts > prev[0]:
                p = prev[1][name]
                reqs, errs = c.requests - p.requests, c.errors - p.errors
                rps = reqs / (ts - prev[0])
            elif prev is not None and name not in prev[1]:
                # A release that appeared since the last tick: its counters started at 0 within it.
                reqs, errs = c.requests, c.errors
                rps = reqs / (ts - prev[0]) if ts > prev[0] else None
            err_rate, p99 = self._window(name, c)
            out[name] = ReleaseSample(rps, err_rate, p99, w, reqs, errs)
        if stats is not None:
            self._snaps.append((ts, cur))
        else:
            self._snaps.clear()  # no figures across a gap in the stats
        sample = Sample(ts, out)
        self.samples.append(sample)
        return sample

    def _window(self, name: str, c: _Cum) -> tuple[float | None, float | None]:
        """Error rate and p99 between ``c`` and the oldest kept snapshot it covers (up to ``window`` ticks back)."""
        base: _Cum | None = None
        for _, snap in self._snaps:  # oldest first
            old = snap.get(name)
            if old is not None and c.covers(old):
                base = old
                break
        if base is None:
            if self._snaps and all(name not in snap for _, snap in self._snaps):
                base = _Cum(0, 0, (), c.bounds)  # new release: everything it has counted is recent
            else:
                return None, None
        n = c.requests - base.requests
        if n <= 0:
            return None, None
        err = (c.errors - base.errors) / n
        counts = [a - (base.counts[i] if i < len(base.counts) else 0) for i, a in enumerate(c.counts)]
        return err, quantile(c.bounds, counts, 0.99)

    def to_json(self) -> list[dict]:
        return [s.to_json() for s in self.samples]


def quantile(bounds, counts: list[int], q: float) -> float | None:
    """Quantile ``q`` of a histogram with upper ``bounds`` (``counts`` has one more entry: +Inf)."""
    return _stats.quantile(counts, q, tuple(bounds))


def _r(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)
