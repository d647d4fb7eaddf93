"""The watch after a switch, performed: stats every ``interval``, a verdict, the pure machine in ``watch.py``.

``Watcher`` owns one watch of one release: its window (a stats snapshot that
starts it; an inconclusive window keeps its start so requests accumulate, a
conclusive one starts the next), the baseline it is judged against (the
previous release's own figures from just before the switch, ``baseline``),
and the results shown in ``status``, the dashboard and the events. It saves
where it stands after every verdict, so an agent killed during the watch is
followed by one that goes on watching for the rest of the window
(``Watcher.resume``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nonstop.agent import analysis as an
from nonstop.agent.strategies import watch as wm
from nonstop.agent.strategies.run import Aborted, Run
from nonstop.config import WatchAnalysis
from nonstop.errors import DeploymentFailed, NonstopError, UsageError

log = logging.getLogger("nonstop.agent")

__all__ = ["WatchFailed", "Watcher", "baseline"]

KEEP_RESULTS = 20


class WatchFailed(DeploymentFailed):
    """The watched release breached its limits (or the user aborted the watch); traffic went back."""


async def baseline(r: Run, release: str, seconds: float) -> an.Figures | None:
    """``release``'s figures over the last ``seconds`` (from the stats history), or None without traffic."""
    end = await r.parts.stats.sample()
    if end is None:
        return None
    start = r.parts.stats.since(r.parts.stats.clock() - seconds)
    f = an.window(start[1] if start and start[1] is not end else None, end, release) if start else an.window(None, end, release)
    return f if f.requests else None


def _only(snap: dict | None, release: str) -> dict | None:
    """What of a snapshot a window needs (one release's counters), small enough to save with the deployment."""
    if snap is None:
        return None
    return {"releases": {release: (snap.get("releases") or {}).get(release) or {}}}


class Watcher:
    """One watch of ``release`` for ``cfg.watch`` (blue-green) or until a pass (rolling)."""

    def __init__(self, r: Run, cfg: WatchAnalysis, release: str, base: an.Figures | None, *,
                 until_pass: bool = False, label: str = "watch") -> None:
        self.r = r
        self.cfg = cfg
        self.release = release
        self.base = base
        self.label = label
        self.plan = wm.WatchPlan(watch=cfg.watch, failure_limit=cfg.failure_limit, until_pass=until_pass)
        self.state = wm.begin(time.time())
        self.window: dict | None = None
        self.window_t = self.state.started
        self.results: list[dict] = []

    # -- what it shows -----------------------------------------------------------
    def status(self) -> dict:
        now = time.time()
        end = self.state.started + self.plan.watch
        return {
            self.label: {
                "release": self.release,
                "started_at": self.state.started,
                "until": end,
                "remaining": max(0.0, round(end - now, 1)),
                "failures": self.state.failures,
                "failure_limit": self.plan.failure_limit,
                "baseline": self.base.to_json() if self.base else None,
                "analysis": self.results[-5:],
            }
        }

    def check_control(self, action: str) -> None:
        if action not in ("promote", "promote_full", "abort"):
            raise UsageError(f"the {self.label} cannot be paused: `nonstop promote` ends it, `nonstop abort` switches back")

    def saved(self) -> dict:
        return {
            "release": self.release,
            "started": self.state.started,
            "failures": self.state.failures,
            "passes": self.state.passes,
            "inconclusive": self.state.inconclusive,
            "window": self.window,
            "window_t": self.window_t,
            "baseline": self.base.to_json() if self.base else None,
            "results": self.results[-5:],
        }

    @classmethod
    def resume(cls, r: Run, cfg: WatchAnalysis, saved: dict, *, until_pass: bool = False, label: str = "watch") -> "Watcher":
        """The watch a killed agent saved, going on where it stood."""
        b = saved.get("baseline")
        base = an.Figures(b["requests"], b["errors"], b["p99"]) if b else None
        w = cls(r, cfg, saved["release"], base, until_pass=until_pass, label=label)
        w.state = wm.WatchState(started=float(saved["started"]), failures=int(saved.get("failures", 0)),
                                passes=int(saved.get("passes", 0)), inconclusive=int(saved.get("inconclusive", 0)))
        w.window = saved.get("window")
        w.window_t = float(saved.get("window_t") or w.state.started)
        w.results = list(saved.get("results") or [])
        return w

    # -- the watch -----------------------------------------------------------------
    async def start(self) -> None:
        """The window starts now (right after the switch)."""
        self.window = _only(await self._stats(), self.release)
        self.window_t = time.time()
        self.r.save(watch=self.saved())

    async def run(self) -> wm.Passed | wm.Breached:
        r = self.r
        prev_status, prev_check = r.status_hook, r.check_control
        r.status_hook = (lambda: {**prev_status(), **self.status()}) if prev_status else self.status
        r.check_control = self.check_control
        base = f"; baseline {self.base.words()}" if self.base else "; no baseline (the previous release had no traffic)"
        await r.emit(self.label, f"watching {self.release} for {self.plan.watch:g}s "
                     f"({self.cfg.interval:g}s checks, failure_limit {self.plan.failure_limit}{base})",
                     release=self.release, until=self.state.started + self.plan.watch,
                     baseline=self.base.to_json() if self.base else None)
        try:
            next_check = time.time() + self.cfg.interval
            while True:
                now = time.time()
                action = wm.decide(self.plan, self.state, now)
                if not isinstance(action, wm.Keep):
                    return action
                got = await r.wait_control(max(0.0, min(next_check, action.until) - now))
                now = time.time()
                if got is not None:
                    self.state = wm.control(self.state, got, now)
                    await r.emit("control", f"{got}: {self.state.reason or 'ignored during the watch'}", action=got)
                elif now >= next_check:
                    await self.check(now)
                    next_check = max(next_check + self.cfg.interval, now + self.cfg.interval / 2)
        finally:
            r.status_hook, r.check_control = prev_status, prev_check

    async def check(self, now: float) -> None:
        r = self.r
        end = await self._stats()
        if end is None:
            await r.emit("analysis", "analysis skipped: the router's stats cannot be read", verdict="inconclusive")
            self.state = wm.observe(self.plan, self.state, "inconclusive", now)
            return
        v = an.watch_verdict(self.window, end, release=self.release, baseline=self.base, cfg=self.cfg,
                             seconds=now - self.window_t, at=now)
        rec = v.to_json()
        # one release judged against its baseline: no canary and stable here
        rec = {**{k: x for k, x in rec.items() if k not in ("canary", "stable", "received")},
               "figures": rec["canary"], "baseline": rec["stable"],
               "release": self.release, "after": round(now - self.state.started, 1)}
        self.results = (self.results + [rec])[-KEEP_RESULTS:]
        if v.verdict != "inconclusive":
            self.window, self.window_t = _only(end, self.release), now
        self.state = wm.observe(self.plan, self.state, v.verdict, now, v.summary)
        kind = "analysis_failed" if v.verdict == "fail" else "analysis"
        extra = f" ({self.state.failures}/{self.plan.failure_limit} failures)" if v.verdict == "fail" else ""
        await r.emit(kind, f"{self.label} {v.verdict} at +{rec['after']:g}s: {v.summary}{extra}",
                     **{k: v for k, v in rec.items() if k not in ("type", "message")})
        r.save(watch=self.saved())

    async def _stats(self) -> dict | None:
        try:
            return await self.r.router.stats()
        except NonstopError as e:
            log.warning("watch: cannot read stats: %s", e.message)
            return None

    def failed(self, breach: wm.Breached) -> DeploymentFailed:
        """The error the deploy ends with: ``Aborted`` when the user asked, else ``WatchFailed`` with the figures."""
        detail = {"analysis": self.results[-5:], "baseline": self.base.to_json() if self.base else None}
        if breach.by_user:
            return Aborted(breach.reason, detail=detail)
        return WatchFailed(f"{self.release}: {breach.reason}", detail=detail)


def saved_watch(r: Run) -> dict[str, Any] | None:
    return (r.dep.data or {}).get("watch")
