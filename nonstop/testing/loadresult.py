"""What a load run saw: every request (``RequestRecord``), and the verdicts over them (``LoadResult``).

``LoadResult`` answers the questions a zero-downtime test asks: how many failed and why, which
version answered when (``timeline``, ``version_switches``), the longest stretch without a
successful answer (``longest_gap``), latency quantiles; ``summary()`` is the JSON the CLI prints.
"""

from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass

__all__ = ["RequestRecord", "Gap", "LoadResult"]


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are ``time.monotonic()`` (comparable across processes)."""

    worker: int
    kind: str
    seq: int
    start: float
    end: float = 0.0
    status: int | None = None
    version: str | None = None  # X-App-Version
    release: str | None = None  # X-Nonstop-Release (set by the nonstop proxy)
    error: str | None = None  # None: served; otherwise why it failed
    sent: bool = False  # some byte of the request was written
    reconnected: bool = False  # the kept-alive connection was found closed while idle, and replaced

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        """The version that answered: the app's own header, else the proxy's release name."""
        return self.version or self.release or "?"


@dataclass(frozen=True)
class Gap:
    """The longest stretch without a successful response."""

    seconds: float
    start: float
    end: float


class LoadResult:
    """All the records of a run, and the figures drawn from them."""

    def __init__(self, records: list[RequestRecord], started: float, ended: float,
                 stopped: float | None = None) -> None:
        self.records = sorted(records, key=lambda r: r.start)
        self.started = started
        self.ended = ended  # the last request finished
        self.stopped = ended if stopped is None else stopped  # no new request was sent after this

    @property
    def total(self) -> int:
        return len(self.records)

    @property
    def served(self) -> int:
        return sum(1 for r in self.records if r.ok)

    @property
    def failures(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.ok]

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)

    def by_version(self) -> dict[str, int]:
        """Successful responses per version."""
        return dict(collections.Counter(r.label for r in self.records if r.ok))

    def by_kind(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            row = out.setdefault(r.kind, {"served": 0, "failed": 0})
            row["served" if r.ok else "failed"] += 1
        return out

    def failure_reasons(self) -> dict[str, int]:
        return dict(collections.Counter(r.error for r in self.records if not r.ok))

    def timeline(self, bucket: float = 1.0) -> list[dict]:
        """Per ``bucket`` seconds since the start (by response end time): served per version, failed."""
        rows: dict[int, dict] = {}
        for r in self.records:
            i = max(0, int((r.end - self.started) // bucket))
            row = rows.setdefault(i, {"t": round(i * bucket, 3), "served": {}, "failed": 0})
            if r.ok:
                row["served"][r.label] = row["served"].get(r.label, 0) + 1
            else:
                row["failed"] += 1
        return [rows[i] for i in sorted(rows)]

    def version_switches(self) -> list[tuple[float, str]]:
        """(seconds since start, version) each time the answering version changes, in end-time order."""
        out: list[tuple[float, str]] = []
        for r in sorted((r for r in self.records if r.ok), key=lambda r: r.end):
            if not out or out[-1][1] != r.label:
                out.append((round(r.end - self.started, 3), r.label))
        return out

    def longest_gap(self) -> Gap:
        """Longest time with no successful response, from the start of the run until it stopped sending.

        Responses that finish after the stop (slow requests) do not stretch it: nothing new was
        asked for then.
        """
        ends = sorted(min(r.end, self.stopped) for r in self.records if r.ok)
        points = [self.started, *ends, self.stopped]
        best = Gap(0.0, self.started, self.started)
        for a, b in zip(points, points[1:]):
            if b - a > best.seconds:
                best = Gap(b - a, a, b)
        return best

    def latency(self, q: float) -> float | None:
        """Quantile ``q`` (0..1) of successful requests' latency in seconds (slow requests excluded)."""
        lat = sorted(r.end - r.start for r in self.records if r.ok and r.kind != "slow")
        if not lat:
            return None
        return lat[min(len(lat) - 1, max(0, math.ceil(q * len(lat)) - 1))]

    def summary(self, max_failures: int = 20) -> dict:
        gap = self.longest_gap()
        p50, p99 = self.latency(0.5), self.latency(0.99)
        return {
            "duration_s": round(self.duration, 3),
            "total": self.total,
            "served": self.served,
            "failed": self.failed,
            "rate_rps": round(self.total / self.duration, 1) if self.duration else 0.0,
            "by_version": self.by_version(),
            "by_kind": self.by_kind(),
            "version_switches": self.version_switches(),
            "longest_gap_s": round(gap.seconds, 4),
            "longest_gap_at_s": round(gap.start - self.started, 3),
            "latency_p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "latency_p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "reconnects": sum(1 for r in self.records if r.reconnected),
            "failure_reasons": self.failure_reasons(),
            "failures": [
                {**asdict(r), "at_s": round(r.start - self.started, 3)} for r in self.failures[:max_failures]
            ],
        }

    def format(self, max_failures: int = 10) -> str:
        """A human summary, with the first failures and why: what a failed assertion should print."""
        s = self.summary(max_failures)
        lines = [
            f"{s['total']} requests in {s['duration_s']}s ({s['rate_rps']} req/s): "
            f"{s['served']} served, {s['failed']} failed",
            "served by version: " + (", ".join(f"{k}={v}" for k, v in sorted(s["by_version"].items())) or "none"),
            "by kind: " + ", ".join(f"{k} {v['served']}/{v['served'] + v['failed']}" for k, v in sorted(s["by_kind"].items())),
            f"longest gap without a success: {s['longest_gap_s'] * 1000:.1f} ms (at {s['longest_gap_at_s']}s)",
            f"latency p50 {s['latency_p50_ms']} ms, p99 {s['latency_p99_ms']} ms; reconnects {s['reconnects']}",
        ]
        for reason, n in sorted(s["failure_reasons"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n} x {reason}")
        for f in s["failures"]:
            lines.append(f"  at {f['at_s']}s worker {f['worker']} ({f['kind']}) #{f['seq']}: {f['error']}")
        return "\n".join(lines)
