"""Canary: the new release beside the stable one, weight raised step by step, analysis between steps.

The decisions are pure (``steps.py``: what next; ``analysis.py``: the
verdict); this module only performs them: start and health-gate the canary
instances (as many as ``run.instances``), apply each weight through
``Traffic.set`` (canary listed first, so raising the weight only adds
buckets), read the router's stats every ``analysis.interval`` while the
canary can receive traffic, and feed verdicts and the user's control
actions to the step machine.

Analysis windows: a window starts when a weight is applied and after each
conclusive (pass/fail) verdict; an inconclusive window keeps its start, so
requests accumulate until there are ``min_requests``. A timed pause ends
only once the step has a passing analysis (see ``steps.py``).

Endings: all steps done (or ``promote --full``) → the canary becomes the
stable side at 100%, the old instances are drained and stopped.
``failure_limit`` failed analyses → ``AnalysisFailed``; ``abort`` →
``Aborted``; in both cases the deployer's undo puts all traffic back on the
stable release and drains and stops the canary.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nonstop.agent import analysis as an
from nonstop.agent.strategies import Strategy
from nonstop.agent.strategies.run import Aborted, Run, default_undo
from nonstop.agent.fleet import Fleet
from nonstop.agent.strategies import steps as sm
from nonstop.agent.traffic import Side, Split
from nonstop.config import CanaryStrategy
from nonstop.errors import DeploymentFailed, NonstopError, UsageError

log = logging.getLogger("nonstop.agent")

KEEP_RESULTS = 20


class AnalysisFailed(DeploymentFailed):
    """The canary failed its analysis ``failure_limit`` times; traffic went back to the stable release."""


def _split_key(s: CanaryStrategy) -> tuple[str, str] | None:
    k = s.split_key
    if k is None:
        return None
    return ("cookie", k.cookie) if k.cookie else ("header", k.header.lower())


class CanaryDriver:
    """Performs one canary rollout's actions; owns its step state and analysis results."""

    def __init__(self, r: Run, s: CanaryStrategy, old_addrs: tuple[str, ...], new_addrs: tuple[str, ...]) -> None:
        self.r = r
        self.s = s
        self.old_addrs = old_addrs
        self.new_addrs = new_addrs
        match = s.match
        self.match_headers = tuple(sorted((match.header if match else {}).items()))
        self.match_cookies = tuple(sorted((match.cookie if match else {}).items()))
        self.plan = sm.Plan(
            steps=s.steps, failure_limit=s.analysis.failure_limit, has_match=bool(self.match_headers or self.match_cookies),
            progress_deadline=s.analysis.progress_deadline,
        )
        self.state = sm.start(time.monotonic())
        self.results: list[dict] = []
        self.last: an.Verdict | None = None
        self.window_snap: dict | None = None
        self.window_t = time.monotonic()
        self.next_analysis = float("inf")
        self.finishing = False
        self._said = ""  # the last "waiting" message emitted, to say each once
        self._skew_said: int | None = None  # the step whose skewed share was reported

    # -- hooks the deployer calls -----------------------------------------------------
    def status(self) -> dict:
        now = time.monotonic()
        st = self.state
        return {
            "canary": {
                "weight": st.weight,
                "step": min(st.step + 1, self.plan.count),
                "steps": self.plan.count,
                "phase": st.phase,
                "waiting_for": self.waiting_for(now),
                "failures": st.failures,
                "failure_limit": self.plan.failure_limit,
                "sticky": self.s.sticky,
                "match": {"headers": dict(self.match_headers), "cookies": dict(self.match_cookies)},
                "split_key": dict([_split_key(self.s)]) if self.s.split_key else None,
                "progress_deadline": self.plan.progress_deadline,
                # what each side received over the last analysis window, beside the weight asked for
                "received": self.results[-1]["received"] if self.results else None,
                "analysis": self.results[-5:],
            }
        }

    def check_control(self, action: str) -> None:
        """Refuse (UsageError) a control action the step machine would refuse now; nothing is queued then."""
        if self.finishing:
            raise UsageError("the canary is at 100% and becoming the stable release: nothing left to steer")
        sm.control(self.plan, self.state, action, time.monotonic())

    def waiting_for(self, now: float) -> str:
        text = sm.waiting_for(self.plan, self.state, now)
        if self.finishing:
            return "the old release to drain"
        if self.last is not None and self.last.verdict == "inconclusive" and self.state.phase in (
            sm.PROGRESSING,
            sm.WAITING_ANALYSIS,
        ):
            text += f"; waiting for {self.last.needed} more requests to the canary"
        return text

    # -- the rollout ------------------------------------------------------------------------
    async def run(self) -> None:
        r = self.r
        interval = self.s.analysis.interval
        if self.plan.has_match:
            await self.set_weight(0, initial=True)
        while True:
            now = time.monotonic()
            before = self.state
            self.state, action = sm.decide(self.plan, self.state, now)
            self._sync_paused(before)
            if isinstance(action, sm.SetWeight):
                await self.set_weight(action.weight)
                continue
            if isinstance(action, sm.Finish):
                await self.finish(action.reason)
                return
            if isinstance(action, sm.RollBack):
                raise AnalysisFailed(
                    f"canary rolled back at {self.state.weight}%: {action.reason}",
                    detail={"analysis": self.results[-5:], "failures": self.state.failures, "weight": self.state.weight},
                )
            if isinstance(action, sm.Abort):
                raise Aborted(action.reason, detail={"weight": self.state.weight, "analysis": self.results[-5:]})
            assert isinstance(action, sm.Wait)
            await self._say_waiting(action, now)
            analysing = self.state.weight > 0 or self.plan.has_match
            wake = min(action.until if action.until is not None else float("inf"), self.next_analysis if analysing else float("inf"))
            timeout = None if wake == float("inf") else max(0.0, wake - now)
            got = await r.wait_control(timeout)
            now = time.monotonic()
            if got is not None:
                await self.on_control(got, now)
            elif analysing and now >= self.next_analysis:
                await self.analyse(now)
                self.next_analysis = max(self.next_analysis + interval, now + interval / 2)

    async def on_control(self, action: str, now: float) -> None:
        before = self.state
        try:
            self.state = sm.control(self.plan, self.state, action, now)
        except sm.IllegalControl as e:  # raced with a change after steer() checked it
            await self.r.emit("control_ignored", f"{action} ignored: {e.message}", action=action)
            return
        self._sync_paused(before)
        words = {
            "promote": "promote: skipping to the next step",
            "promote_full": "promote --full: 100% now",
            "abort": "abort: all traffic back to the stable release",
            "pause": "paused by the user",
            "resume": "resumed",
        }[action]
        await self.r.emit("control", words, action=action, phase=self.state.phase)

    async def set_weight(self, weight: int, *, initial: bool = False) -> None:
        r = self.r
        n = self.plan.count
        if initial:
            msg = f"canary {r.release.id} at 0% (match rules only)"
        else:
            msg = f"step {self.state.step + 1}/{n}: {weight}% of traffic to {r.release.id}"
        await r.step("canary", msg, weight=weight, canary_step=self.state.step + 1, canary_steps=n)
        split = self._split(weight)
        await r.traffic.set(split)
        await r.emit(
            "weight", f"{r.release.id} {weight}%, {r.stable.id} {100 - weight}%"
            + (f" (+ requests matching {self._match_words()})" if self.plan.has_match else ""),
            weight=weight, release=r.release.id,
        )
        # A new window starts with the new weight.
        self.window_snap = await self._stats()
        self.window_t = time.monotonic()
        self.next_analysis = self.window_t + self.s.analysis.interval
        self.last = None

    def _match_words(self) -> str:
        return ", ".join([f"header {k}: {v}" for k, v in self.match_headers] + [f"cookie {k}={v}" for k, v in self.match_cookies])

    def _split(self, weight: int) -> Split:
        r = self.r
        cur = r.traffic.split
        # Keep what supervision changed (an instance taken out while unhealthy).
        stable = cur.stable if cur.stable and cur.stable.release == r.stable.id else Side(r.stable.id, self.old_addrs)
        canary = cur.canary if cur.canary and cur.canary.release == r.release.id else Side(r.release.id, self.new_addrs)
        return Split(
            stable=stable,
            canary=canary,
            canary_weight=weight,
            match_headers=self.match_headers,
            match_cookies=self.match_cookies,
            sticky=self.s.sticky,
            split_key=_split_key(self.s),
        )

    async def _stats(self) -> dict | None:
        try:
            return await self.r.router.stats()
        except NonstopError as e:
            log.warning("canary analysis: cannot read stats: %s", e.message)
            return None

    async def analyse(self, now: float) -> None:
        r = self.r
        end = await self._stats()
        if end is None:
            await r.emit("analysis", "analysis skipped: the router's stats cannot be read", verdict="inconclusive")
            before = self.state
            self.state = sm.observe(self.plan, self.state, "inconclusive", now, "the router's stats could not be read")
            self._sync_paused(before)
            return
        v = an.analyse(
            self.window_snap, end, canary=r.release.id, stable=r.stable.id, cfg=self.s.analysis,
            seconds=now - self.window_t, at=time.time(),
        )
        self.last = v
        rec = {**v.to_json(), "step": self.state.step + 1, "weight": self.state.weight}
        self.results = (self.results + [rec])[-KEEP_RESULTS:]
        if v.verdict != "inconclusive":
            self.window_snap, self.window_t = end, now
        before = self.state
        self.state = sm.observe(self.plan, self.state, v.verdict, now, v.summary)
        self._sync_paused(before)
        kind = "analysis_failed" if v.verdict == "fail" else "analysis"
        extra = f" ({self.state.failures}/{self.plan.failure_limit} failures)" if v.verdict == "fail" else ""
        await r.emit(kind, f"analysis {v.verdict} at {rec['weight']}%: {v.summary}{extra}", **_event_data(rec))
        r.save(analysis=self.results[-5:])
        await self._check_skew(rec)

    async def _check_skew(self, rec: dict) -> None:
        """Say once per step when the share the canary received is far from its weight, and why it may be."""
        got = rec["received"]
        words = an.skew(rec["weight"], got["canary"], got["stable"], match=self.plan.has_match)
        if words is None or self._skew_said == rec["step"]:
            return
        self._skew_said = rec["step"]
        await self.r.emit("split_skew", f"{words}: {self._skew_reasons()}", weight=rec["weight"], received=got)

    def _skew_reasons(self) -> str:
        s = self.s
        if s.split_key is not None:
            return ("most requests carry the same split_key value (one user, or a service account), "
                    "or none carries it and the sticky rule applies")
        if s.sticky == "client_ip":
            return ("sticky: client_ip hashes the client address, and most requests come from few addresses "
                    "(a load balancer or proxy in front? list it in trusted_proxies, or use sticky: true)")
        if s.sticky is True:
            return ("most requests carry the same nonstop_bucket cookie (one client that keeps cookies: a load "
                    "test, a monitor), so they stay on one side by design")
        return "with sticky: false every request is drawn at random; a skew this large means very few clients"

    async def _say_waiting(self, action: sm.Wait, now: float) -> None:
        """Emit what the rollout waits for, once per change (not on every wake-up)."""
        if action.kind == "pause":
            key = f"pause:{self.state.step}:{self.state.pause_until}"
            text = f"holding {self.state.weight}% for {max(0.0, (action.until or now) - now):.0f}s ({self.s.analysis.interval:g}s analysis interval)"
        else:
            key = f"{action.kind}:{self.state.step}:{self.last.needed if self.last and action.kind == 'analysis' else ''}"
            text = f"waiting for {self.waiting_for(now)}"
        if key != self._said:
            self._said = key
            await self.r.emit("waiting", text, waiting_for=self.waiting_for(now), kind=action.kind)

    def _sync_paused(self, before: sm.CanaryState) -> None:
        """The deployment shows ``paused`` while a manual step or the user holds it."""
        if before.paused == self.state.paused:
            return
        try:
            self.r.set_paused(self.state.paused)
        except NonstopError:  # the lifecycle table refused: keep going, status still shows the phase
            log.exception("could not record the canary's paused state")

    async def finish(self, reason: str) -> None:
        """100%: the canary becomes the stable side; the old instances drain and stop."""
        r = self.r
        self.finishing = True
        old = r.stable_instances()
        cur = r.traffic.split
        canary = cur.canary if cur.canary and cur.canary.release == r.release.id and cur.canary.addrs else Side(r.release.id, self.new_addrs)
        await r.step("switch", f"100% of traffic to {r.release.id} ({reason})", weight=100)
        await r.traffic.set(Split(stable=Side(r.release.id, canary.addrs), sticky=cur.sticky))
        await r.emit("switched", f"100% of traffic on {r.release.id}: the canary is the stable release", release=r.release.id)
        await r.step("draining", f"draining {r.stable.id}")
        await r.retire(old, reason="replaced by the canary")


def _only_abort(why: str):
    """A ``check_control`` for stretches where only ``abort`` makes sense (it interrupts them)."""

    def check(action: str) -> None:
        if action != "abort":
            raise UsageError(f"{why}: only `nonstop abort` is possible now")

    return check


def _event_data(rec: dict) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in ("type", "message")}


async def run(r: Run) -> None:
    s = r.cfg.strategy
    if not isinstance(s, CanaryStrategy):  # the deployer refuses --strategy canary without a canary block
        raise UsageError("strategy: canary needs a strategy block of type canary")
    n = r.cfg.run.instances
    old = r.stable_instances()
    r.check_control = _only_abort("the canary instances are starting")
    await r.step("starting", f"starting {n} canary instance(s) of {r.release.id} beside {r.stable.id if r.stable else 'nothing'}")
    new = await r.start_new(n)
    new_addrs = tuple(Fleet.addr(x) for x in new)
    if r.stable is None or not old:
        # Nothing to compare with (first deployment): the canary is simply the release.
        await r.step("switch", f"no stable release to compare with: 100% of traffic to {r.release.id}")
        await r.traffic.set(Split(stable=Side(r.release.id, new_addrs), sticky=s.sticky))
        await r.emit("switched", f"100% of traffic on {r.release.id}", release=r.release.id)
        return
    driver = CanaryDriver(r, s, tuple(Fleet.addr(x) for x in old), new_addrs)
    r.status_hook = driver.status
    r.check_control = driver.check_control
    try:
        await driver.run()
    finally:
        r.check_control = None


STRATEGY = Strategy("canary", run, default_undo)
