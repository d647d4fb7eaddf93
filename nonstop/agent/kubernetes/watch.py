"""Analysis on a cluster: verdicts from Prometheus figures, by the one set of rules in ``agent/analysis.py``.

``Analyst.judge`` asks the metrics source (``prometheus.Prometheus``) for the
window of the new side (and the stable side, for a canary) and returns the
verdict of ``analysis.analyse``, with the PromQL it ran (shown in the events).
A metrics source that cannot be asked gives an *inconclusive* verdict,
never a pass.

``Watcher`` is the ``watch`` gate of blue-green (after the switch) and
rolling (after the rollout): for ``analysis.watch`` it judges the new side
every ``analysis.interval`` against limits resolved from the baseline (the
previous release's figures over ``analysis.baseline`` before the change);
``failure_limit`` failed checks are a breach (the plan goes back). An
inconclusive watch (too little traffic) ends as a pass: the release already
had all the traffic there was.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from nonstop.agent import analysis as an
from nonstop.agent.kubernetes.prometheus import MetricsUnavailable, Prometheus, Side
from nonstop.config import WatchAnalysis

__all__ = ["Analyst", "Watcher"]


@dataclass
class Analyst:
    """Turns a window of Prometheus figures into a verdict and reports it."""

    metrics: Prometheus
    emit: Any  # async emit(type, message, **data)

    async def judge(self, new: Side, stable: Side | None, window: float, limits: Any, *, at: float, label: str) -> an.Verdict:
        sides = [new] + ([stable] if stable is not None else [])
        try:
            snap, asked = await self.metrics.figures(sides, window, at=None)
        except MetricsUnavailable as e:
            v = an.Verdict("inconclusive", f"metrics unavailable: {e.message}", an.Figures(), seconds=window, at=at)
            await self.emit("analysis", f"analysis inconclusive {label}: {e.message}", **v.to_json())
            return v
        v = an.analyse(None, snap, canary=new.release, stable=stable.release if stable else None, cfg=limits, seconds=window, at=at)
        kind = "analysis_failed" if v.verdict == "fail" else "analysis"
        await self.emit(kind, f"analysis {v.verdict} {label}: {v.summary}", query=asked.get(new.release), stable_query=asked.get(stable.release) if stable else None, **v.to_json())
        return v

    async def figures(self, side: Side, window: float) -> an.Figures | None:
        try:
            snap, _asked = await self.metrics.figures([side], window)
        except MetricsUnavailable:
            return None
        return an.window(None, snap, side.release)


class Watcher:
    """The watch after a switch: judges the new side for ``analysis.watch``; a breach is a reason, else None."""

    def __init__(self, analyst: Analyst, clock: Any, analysis: WatchAnalysis, new: Side, baseline: Side | None) -> None:
        self.analyst = analyst
        self.clock = clock
        self.a = analysis
        self.new = new
        self.baseline_side = baseline
        self.baseline: an.Figures | None = None
        self.end: float | None = None  # while watching: when the watch is over
        self.failures = 0
        self.results: list[dict] = []

    def status(self) -> dict:
        """The watch as ``nonstop status`` shows it (the one-host ``watch`` fields)."""
        now = self.clock.now()
        b = self.baseline
        return {
            "release": self.new.release,
            "remaining": max(0.0, (self.end or now) - now),
            "failures": self.failures,
            "failure_limit": self.a.failure_limit,
            "baseline": {"requests": b.requests, "error_rate": b.error_rate, "p99": b.p99} if b is not None else None,
            "analysis": self.results[-5:],
        }

    async def measure_baseline(self) -> None:
        """The previous release's figures just before the change (for ``baseline + …`` limits)."""
        if self.baseline_side is not None and (self.a.max_error_rate.relative or (self.a.max_p99 and self.a.max_p99.relative)):
            self.baseline = await self.analyst.figures(self.baseline_side, self.a.baseline)

    def limits(self) -> SimpleNamespace:
        b = self.baseline
        return SimpleNamespace(
            max_error_rate=self.a.max_error_rate.resolve(b.error_rate if b else None),
            max_p99=self.a.max_p99.resolve(b.p99 if b else None) if self.a.max_p99 is not None else None,
            max_error_rate_vs_stable=None,
            max_p99_vs_stable=None,
            min_requests=self.a.min_requests,
        )

    async def watch(self, stage: str, control: "asyncio.Queue[str]") -> str | None:
        now = self.clock.now()
        end = self.end = now + self.a.watch
        started = now
        window_t = now
        next_at = now + self.a.interval
        failures = self.failures = 0
        limits = self.limits()
        await self.analyst.emit("watching", f"{stage}: {self.a.watch:g}s, a check every {self.a.interval:g}s", watch=self.a.watch)
        while True:
            now = self.clock.now()
            if now >= end:
                await self.analyst.emit("watched", f"{self.new.release} passed its watch ({failures} failed check(s))", failures=failures)
                return None
            got = await self.clock.wait(control, max(0.0, min(next_at, end) - now))
            if got == "abort":
                return "abort"
            if got in ("promote", "promote_full"):
                return None
            now = self.clock.now()
            if now < next_at:
                continue
            next_at = now + self.a.interval
            v = await self.analyst.judge(self.new, None, now - window_t, limits, at=now, label=f"of {self.new.release}")
            self.results = (self.results + [{"after": round(now - started, 1), "verdict": v.verdict, "summary": v.summary}])[-20:]
            if v.verdict != "inconclusive":
                window_t = now
            if v.verdict == "fail":
                failures = self.failures = failures + 1
                if failures >= self.a.failure_limit:
                    return f"analysis failed {failures} time(s) (failure_limit {self.a.failure_limit}): {v.summary}"
