"""Canary analysis: pure. Two cumulative stats snapshots + thresholds → a verdict.

The router's ``stats()`` counters are cumulative (docs/internals.md); a
window is the difference of two snapshots, per release. ``analyse`` compares
the canary's window to the thresholds of ``AnalysisConfig``:

- fewer than ``min_requests`` canary requests in the window → **inconclusive**
  ("waiting for N more requests"); never a pass. The caller keeps the window
  start then, so requests accumulate until there are enough.
- 5xx share above the error limit → **fail**. The limit is ``max_error_rate``;
  with ``max_error_rate_vs_stable: k`` and a stable release that served at
  least ``min_requests`` in the same window it is ``max_error_rate + k ×
  stable rate`` (a canary may be as bad as a stable that already errors, plus
  the margin).
- p99 above ``max_p99`` → **fail**; with ``max_p99_vs_stable: k`` (and enough
  stable requests) also p99 above ``k × stable p99`` → **fail**, except when
  the canary's p99 is under ``P99_FLOOR``: below that, differences are the
  histogram's bucket width, not the app.
- otherwise **pass**.

p99 is estimated from the window's histogram counts (linear within a bucket,
as Prometheus does). A counter that went down (the proxy restarted) makes the
window start at zero. ``failure_limit`` is counted by the step machine.
"""

from __future__ import annotations

from nonstop.proxy import stats as _stats

from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

__all__ = ["P99_FLOOR", "SKEW_MIN_REQUESTS", "Figures", "Verdict", "window", "quantile", "analyse", "received", "skew"]

P99_FLOOR = 0.025  # seconds; relative p99 is not judged below this

VerdictKind = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Figures:
    """One release's window: requests, 5xx, error rate, p99 (seconds)."""

    requests: int = 0
    errors: int = 0
    p99: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def to_json(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate}

    def words(self) -> str:
        rate = f"{self.error_rate:.1%}" if self.error_rate is not None else "-"
        return f"5xx {rate} ({self.errors}/{self.requests}), p99 {_ms(self.p99)}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one analysis, with the figures that led to it."""

    verdict: VerdictKind
    summary: str
    canary: Figures
    stable: Figures | None = None
    failed: tuple[str, ...] = ()  # the breached checks, in words
    needed: int = 0  # more canary requests needed (inconclusive)
    seconds: float = 0.0  # window length
    at: float = 0.0  # wall-clock time of the end snapshot (for display)

    @property
    def share(self) -> float | None:
        """The share of the window's requests the canary received (None: no requests at all)."""
        total = self.canary.requests + (self.stable.requests if self.stable else 0)
        return self.canary.requests / total if total else None

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "summary": self.summary,
            "canary": self.canary.to_json(),
            "stable": self.stable.to_json() if self.stable else None,
            "failed": list(self.failed),
            "needed": self.needed,
            "seconds": round(self.seconds, 3),
            "at": self.at,
            "received": received(self.canary, self.stable),
        }


def received(canary: Figures, stable: Figures | None) -> dict:
    """What each side received in a window, beside the weight asked for (status, dashboard, events)."""
    s = stable.requests if stable else 0
    total = canary.requests + s
    return {
        "canary": canary.requests,
        "stable": s,
        "requests": total,
        "share": round(canary.requests / total, 4) if total else None,
    }


SKEW_MIN_REQUESTS = 200


def skew(weight: int, canary: int, stable: int, *, match: bool = False) -> str | None:
    """Words when the share the canary received is far from its weight, else None. Pure.

    "Far": after at least SKEW_MIN_REQUESTS requests, off by more than four standard deviations of
    a binomial draw at that weight and by more than 5 points. With match rules the canary may get
    more than its weight on purpose: only too little counts then.
    """
    n = canary + stable
    if n < SKEW_MIN_REQUESTS or not 0 < weight < 100:
        return None
    p = weight / 100
    expected = n * p
    sd = (n * p * (1 - p)) ** 0.5
    off = canary - expected
    if abs(off) <= max(4 * sd, 0.05 * n) or (match and off > 0):
        return None
    return f"the canary received {canary / n:.1%} of {n:,} requests at weight {weight}%"


def _span(seconds: float) -> str:
    return f"{seconds / 60:.0f}m" if seconds >= 120 else f"{seconds:.0f}s"


def _ms(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1000:.0f}ms" if s < 1 else f"{s:.2f}s"


def quantile(bounds, counts: list[int], q: float) -> float | None:
    """Quantile ``q`` of a histogram with upper ``bounds`` (``counts`` has one more entry: +Inf)."""
    return _stats.quantile(counts, q, tuple(bounds))


def _release(snap: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    if not snap:
        return {}
    return (snap.get("releases") or {}).get(name) or {}


def window(start: Mapping[str, Any] | None, end: Mapping[str, Any], release: str) -> Figures:
    """``release``'s figures between two cumulative snapshots (``start`` None: since the proxy started)."""
    a, b = _release(start, release), _release(end, release)
    if int(b.get("requests", 0)) < int(a.get("requests", 0)):
        a = {}  # counters went down: the proxy restarted; count from zero
    requests = int(b.get("requests", 0)) - int(a.get("requests", 0))
    errors = int((b.get("by_class") or {}).get("5xx", 0)) - int((a.get("by_class") or {}).get("5xx", 0))
    lb, la = b.get("latency") or {}, a.get("latency") or {}
    bounds = list(lb.get("buckets") or [])
    cb = list(lb.get("counts") or [])
    ca = list(la.get("counts") or [0] * len(cb))
    if len(ca) != len(cb):
        ca = [0] * len(cb)
    delta = [max(0, x - y) for x, y in zip(cb, ca)]
    return Figures(requests=max(0, requests), errors=max(0, errors), p99=quantile(bounds, delta, 0.99))


def analyse(
    start: Mapping[str, Any] | None,
    end: Mapping[str, Any],
    *,
    canary: str,
    stable: str | None,
    cfg: Any,
    seconds: float = 0.0,
    at: float = 0.0,
) -> Verdict:
    """The verdict for the window ``start`` → ``end``. ``cfg`` is an ``AnalysisConfig``."""
    c = window(start, end, canary)
    s = window(start, end, stable) if stable else None
    if c.requests < cfg.min_requests:
        need = cfg.min_requests - c.requests
        total = c.requests + (s.requests if s else 0)
        share = f", {c.requests / total:.1%} of {total:,}" if total else ""
        return Verdict(
            "inconclusive",
            f"canary received {c.requests} request(s) in {_span(seconds)}{share} (min_requests {cfg.min_requests}): "
            f"waiting for {need} more",
            c, s, needed=need, seconds=seconds, at=at,
        )
    failed: list[str] = []
    stable_ok = s is not None and s.requests >= cfg.min_requests
    limit, how = cfg.max_error_rate, "max_error_rate"
    if cfg.max_error_rate_vs_stable is not None and stable_ok:
        limit = cfg.max_error_rate + cfg.max_error_rate_vs_stable * (s.error_rate or 0.0)
        how = f"max_error_rate {cfg.max_error_rate:.1%} + {cfg.max_error_rate_vs_stable:g} × stable {s.error_rate or 0.0:.1%}"
    if (c.error_rate or 0.0) > limit:
        failed.append(f"canary 5xx rate {c.error_rate:.1%} ({c.errors}/{c.requests}) > {limit:.1%} ({how})")
    if cfg.max_p99 is not None and c.p99 is not None and c.p99 > cfg.max_p99:
        failed.append(f"canary p99 {_ms(c.p99)} > max_p99 {_ms(cfg.max_p99)}")
    if (
        cfg.max_p99_vs_stable is not None
        and stable_ok
        and c.p99 is not None
        and s.p99 is not None
        and c.p99 > P99_FLOOR
        and c.p99 > cfg.max_p99_vs_stable * s.p99
    ):
        failed.append(f"canary p99 {_ms(c.p99)} > {cfg.max_p99_vs_stable:g} × stable p99 {_ms(s.p99)}")
    total = c.requests + (s.requests if s else 0)
    figures = (f"received {c.requests / total:.1%}; " if total and s is not None else "") + f"canary {c.words()}" + (
        f"; stable {s.words()}" if s is not None and s.requests else ""
    )
    if failed:
        return Verdict("fail", "; ".join(failed) + f" [{figures}]", c, s, tuple(failed), seconds=seconds, at=at)
    return Verdict("pass", figures, c, s, seconds=seconds, at=at)


def watch_verdict(
    start: Mapping[str, Any] | None,
    end: Mapping[str, Any],
    *,
    release: str,
    baseline: Figures | None,
    cfg: Any,
    seconds: float = 0.0,
    at: float = 0.0,
) -> Verdict:
    """The verdict on ``release`` alone for the window ``start`` → ``end`` (blue-green after its switch,
    rolling after a batch). ``cfg`` is a ``WatchAnalysis``: its limits are absolute or relative to
    ``baseline`` (the previous release's own figures from just before the switch), shown beside."""
    f = window(start, end, release)
    base = f" (baseline {baseline.words()})" if baseline is not None else ""
    if f.requests < cfg.min_requests:
        need = cfg.min_requests - f.requests
        return Verdict(
            "inconclusive",
            f"{release} received {f.requests} request(s) in {_span(seconds)} (min_requests {cfg.min_requests}): "
            f"waiting for {need} more",
            f, baseline, needed=need, seconds=seconds, at=at,
        )
    failed: list[str] = []
    err_limit = cfg.max_error_rate.resolve(baseline.error_rate if baseline else None)
    if (f.error_rate or 0.0) > err_limit:
        how = "" if not cfg.max_error_rate.relative else f" = {cfg.max_error_rate.words(_pct)}"
        failed.append(f"5xx {f.error_rate:.1%} ({f.errors}/{f.requests}) > {err_limit:.1%}{how}")
    if cfg.max_p99 is not None and f.p99 is not None:
        p99_limit = cfg.max_p99.resolve(baseline.p99 if baseline else None)
        if f.p99 > p99_limit and not (cfg.max_p99.relative and f.p99 <= P99_FLOOR):
            how = "" if not cfg.max_p99.relative else f" = {cfg.max_p99.words(_ms)}"
            failed.append(f"p99 {_ms(f.p99)} > {_ms(p99_limit)}{how}")
    if failed:
        return Verdict("fail", "; ".join(failed) + base, f, baseline, tuple(failed), seconds=seconds, at=at)
    return Verdict("pass", f"{release} {f.words()}{base}", f, baseline, seconds=seconds, at=at)


def _pct(x: float) -> str:
    return f"{x:.1%}"
