"""Request counters and latency histograms, and their JSON / Prometheus renderings.

One :class:`Counters` per (release, target) pair is updated on the hot path
(a few integer increments and one bisect); per-target and per-release figures
are sums of pairs, computed only when someone asks.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

# Upper bounds in seconds ("le"); a last implicit +Inf bucket follows.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Counters:
    """Cumulative counts for one (release, target) pair: by status class, errors, in-flight, latency."""

    __slots__ = ("requests", "by_class", "proxy_errors", "in_flight", "counts", "sum")

    def __init__(self) -> None:
        self.requests = 0
        self.by_class = [0, 0, 0, 0, 0]
        self.proxy_errors = 0
        self.in_flight = 0
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def record(self, status: int, seconds: float) -> None:
        self.requests += 1
        c = status // 100 - 1
        if 0 <= c < 5:
            self.by_class[c] += 1
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def add(self, other: Counters) -> None:
        self.requests += other.requests
        self.proxy_errors += other.proxy_errors
        self.in_flight += other.in_flight
        self.sum += other.sum
        for i, v in enumerate(other.by_class):
            self.by_class[i] += v
        for i, v in enumerate(other.counts):
            self.counts[i] += v


def total(parts: Iterable[Counters]) -> Counters:
    out = Counters()
    for p in parts:
        out.add(p)
    return out


def quantile(counts: list[int], q: float, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> float | None:
    """Estimate a quantile from histogram counts (linear within a bucket, as Prometheus does).

    ``counts`` has one more entry than ``bounds`` (the +Inf bucket). None when
    there are no observations; observations in the +Inf bucket report the
    highest finite bound.
    """
    n = sum(counts)
    if n <= 0 or not bounds:
        return None
    rank = q * n
    seen = 0
    for i, c in enumerate(counts):
        if c > 0 and seen + c >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lo = bounds[i - 1] if i else 0.0
            return lo + (bounds[i] - lo) * max(rank - seen, 0) / c
        seen += c
    return bounds[-1]


def to_dict(c: Counters) -> dict:
    """The ``S`` object of ``GET /stats`` (docs/internals.md)."""
    return {
        "requests": c.requests,
        "by_class": dict(zip(CLASSES, c.by_class)),
        "proxy_errors": c.proxy_errors,
        "in_flight": c.in_flight,
        "latency": {
            "buckets": list(LATENCY_BUCKETS),
            "counts": list(c.counts),
            "sum": c.sum,
            "count": sum(c.counts),
        },
        "p50": quantile(c.counts, 0.50),
        "p90": quantile(c.counts, 0.90),
        "p99": quantile(c.counts, 0.99),
    }


def from_dict(d: dict) -> Counters:
    """The inverse of :func:`to_dict` (to add up counters reported by several worker processes)."""
    c = Counters()
    c.requests = d["requests"]
    c.by_class = [d["by_class"][k] for k in CLASSES]
    c.proxy_errors = d["proxy_errors"]
    c.in_flight = d["in_flight"]
    c.counts = list(d["latency"]["counts"])
    c.sum = d["latency"]["sum"]
    return c


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(pairs: Iterable[tuple[str, str, Counters]]) -> str:
    """Prometheus text exposition for (release, target, counters) triples."""
    pairs = list(pairs)
    lines = [
        "# HELP nonstop_proxy_requests_total Requests answered, by release, target and status class.",
        "# TYPE nonstop_proxy_requests_total counter",
    ]
    for rel, tgt, c in pairs:
        for cls, v in zip(CLASSES, c.by_class):
            lines.append(
                f'nonstop_proxy_requests_total{{release="{_esc(rel)}",target="{_esc(tgt)}",code_class="{cls}"}} {v}'
            )
    lines += [
        "# HELP nonstop_proxy_errors_total Upstream failures seen by the proxy (connect, reset, timeout).",
        "# TYPE nonstop_proxy_errors_total counter",
    ]
    for rel, tgt, c in pairs:
        lines.append(f'nonstop_proxy_errors_total{{release="{_esc(rel)}",target="{_esc(tgt)}"}} {c.proxy_errors}')
    lines += [
        "# HELP nonstop_proxy_in_flight Requests in flight (including upgraded connections).",
        "# TYPE nonstop_proxy_in_flight gauge",
    ]
    for rel, tgt, c in pairs:
        lines.append(f'nonstop_proxy_in_flight{{release="{_esc(rel)}",target="{_esc(tgt)}"}} {c.in_flight}')
    lines += [
        "# HELP nonstop_proxy_request_duration_seconds Time from request head to end of response.",
        "# TYPE nonstop_proxy_request_duration_seconds histogram",
    ]
    for rel, tgt, c in pairs:
        labels = f'release="{_esc(rel)}",target="{_esc(tgt)}"'
        cum = 0
        for le, n in zip(LATENCY_BUCKETS, c.counts):
            cum += n
            lines.append(f'nonstop_proxy_request_duration_seconds_bucket{{{labels},le="{le}"}} {cum}')
        cum += c.counts[-1]
        lines.append(f'nonstop_proxy_request_duration_seconds_bucket{{{labels},le="+Inf"}} {cum}')
        lines.append(f"nonstop_proxy_request_duration_seconds_sum{{{labels}}} {c.sum}")
        lines.append(f"nonstop_proxy_request_duration_seconds_count{{{labels}}} {cum}")
    return "\n".join(lines) + "\n"
