"""A canary on a cluster: the step machine (``strategies/steps.py``) deciding, plans performing each step.

Each ``SetWeight`` becomes a small plan (``rollout.canary_weight_stages``:
the canary's pods first, then the route weight), ``Finish`` the promotion
plan (the stable Deployment takes the new template by a rolling update, the
canary stops), ``RollBack`` / ``Abort`` the back stages (traffic off the
canary first). Between steps the canary's window is judged every
``analysis.interval`` against the stable side's (``watch.Analyst``, PromQL
shown in the events); ``failure_limit`` failures roll back; a step still
without a passing analysis after ``analysis.progress_deadline`` rolls back
too. Controls (promote, promote_full, abort, pause, resume) go through the
step machine's ``CONTROL_TABLE``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nonstop.agent.kubernetes import rollout as ro
from nonstop.agent.kubernetes.prometheus import Side, pod_regex
from nonstop.agent.kubernetes.shapes import KRelease, Shape, deployment_name
from nonstop.agent.strategies import steps as sm
from nonstop.config import CanaryStrategy, Config

__all__ = ["CanaryRun"]


class CanaryRun:
    """Owns one canary rollout's step state and analysis window; performs through a ``PlanRunner``."""

    def __init__(self, cfg: Config, runner: Any, analyst: Any, previous: Shape, release: KRelease) -> None:
        s = cfg.strategy
        assert isinstance(s, CanaryStrategy)
        self.cfg, self.s, self.runner, self.analyst = cfg, s, runner, analyst
        self.previous, self.release = previous, release
        t = previous.track("main")
        assert t is not None
        self.stable = t.release
        has_match = bool(s.match and (s.match.header or s.match.cookie))
        self.plan = sm.Plan(steps=s.steps, failure_limit=s.analysis.failure_limit, has_match=has_match)
        self.clock = runner.clock
        self.state = sm.start(self.clock.now())
        self.weight = 0
        self.window_t = self.clock.now()
        self.next_analysis = float("inf")
        self.back = ro.canary_back_stages(cfg, previous, release)
        self.results: list[dict] = []
        self._said = ""
        # promote / pause / resume sent while a step's pods start go to the step machine
        runner.other = lambda action: self._control(action, self.clock.now())

    def status(self) -> dict:
        st = self.state
        return {
            "canary": {
                # the weight traffic has now (the step's own is applied first: its pods, then the route)
                "weight": self.weight, "target_weight": st.weight, "step": min(st.step + 1, self.plan.count), "steps": self.plan.count,
                "phase": st.phase, "failures": st.failures, "failure_limit": self.plan.failure_limit,
                "waiting_for": sm.waiting_for(self.plan, st, self.clock.now()), "analysis": self.results[-5:],
                "received": (self.results[-1].get("received") if self.results else None) or {},
            }
        }

    def check_control(self, action: str) -> None:
        sm.control(self.plan, self.state, action, self.clock.now())

    def _sides(self) -> tuple[Side, Side]:
        app = self.cfg.app
        return (
            Side(self.release.id, "canary", pod_regex(deployment_name(app, "canary"))),
            Side(self.stable.id, "main", pod_regex(deployment_name(app, "main"))),
        )

    async def _perform(self, stages: tuple[ro.Stage, ...]) -> ro.Position:
        plan = ro.Plan("canary", self.release, self.previous, stages, self.back)
        return await self.runner.run(plan, ro.Position(since=self.clock.now()), extra={"canary": {"weight": self.weight, "step": self.state.step}})

    async def _go_back(self, reason: str) -> ro.Position:
        plan = ro.Plan("canary", self.release, self.previous, (), self.back)
        pos = ro.Position(direction="back", since=self.clock.now(), reason=reason, traffic=self.weight > 0)
        await self.runner.cb.emit("rollback", f"going back: {reason}", reason=reason)
        await self.runner.cb.step("rollback", f"rolling back: {reason}")
        return await self.runner.run(plan, pos, extra={"canary": {"weight": self.weight, "step": self.state.step}})

    async def run(self) -> tuple[str, str]:
        """(outcome, reason): ``promoted``, ``rolled_back``, ``aborted`` or ``failed``."""
        cb = self.runner.cb
        if self.plan.has_match:
            pos = await self._perform(ro.canary_weight_stages(self.cfg, self.previous, self.release, 0, 0))
            if pos.finished != "done":
                return self._ended(pos)
            self._new_window()
        while True:
            now = self.clock.now()
            self.state, action = sm.decide(self.plan, self.state, now)
            if isinstance(action, sm.SetWeight):
                n = self.plan.count
                await cb.step("canary", f"step {self.state.step + 1}/{n}: {action.weight}% of traffic to {self.release.id}", weight=action.weight)
                pos = await self._perform(ro.canary_weight_stages(self.cfg, self.previous, self.release, self.weight, action.weight))
                if pos.finished != "done":
                    return self._ended(pos)
                self.weight = action.weight
                await cb.emit("weight", f"{self.release.id} {action.weight}%, {self.stable.id} {100 - action.weight}%", weight=action.weight, release=self.release.id)
                self._new_window()
                continue
            if isinstance(action, sm.Finish):
                await cb.step("switch", f"100% of traffic to {self.release.id} ({action.reason})", weight=100)
                pos = await self._perform(ro.canary_finish_stages(self.cfg, self.previous, self.release, self.weight))
                return ("promoted", action.reason) if pos.finished == "done" else self._ended(pos)
            if isinstance(action, (sm.RollBack, sm.Abort)):
                pos = await self._go_back(action.reason)
                if pos.finished == "rolled_back":
                    return ("aborted" if isinstance(action, sm.Abort) else "rolled_back", action.reason)
                return self._ended(pos)
            assert isinstance(action, sm.Wait)
            await self._say_waiting(action, now)
            analysing = self.weight > 0 or self.plan.has_match
            wake = min(action.until if action.until is not None else float("inf"), self.next_analysis if analysing else float("inf"))
            got = await self.clock.wait(self.runner.control, 3600.0 if wake == float("inf") else max(0.0, wake - now))
            now = self.clock.now()
            if got is not None:
                await self._control(got, now)
            elif analysing and now >= self.next_analysis:
                await self._analyse(now)
                self.next_analysis = now + self.s.analysis.interval
            self._deadline(now)

    async def _say_waiting(self, action: sm.Wait, now: float) -> None:
        """What the rollout waits for, once per change (not on every wake-up)."""
        key = f"{action.kind}:{self.state.step}:{self.state.phase}"
        if key == self._said:
            return
        self._said = key
        text = sm.waiting_for(self.plan, self.state, now)
        await self.runner.cb.emit("waiting", f"waiting for {text}", waiting_for=text, kind=action.kind)
        if self.state.paused:
            await self.runner.save({"phase": "paused", "stage": text})

    def _new_window(self) -> None:
        self.window_t = self.clock.now()
        self.next_analysis = self.window_t + self.s.analysis.interval

    def _ended(self, pos: ro.Position) -> tuple[str, str]:
        if pos.finished == "rolled_back":
            return ("aborted" if pos.reason == "aborted by the user" else "rolled_back"), pos.reason
        return "failed", pos.reason

    async def _control(self, action: str, now: float) -> None:
        try:
            self.state = sm.control(self.plan, self.state, action, now)
        except sm.IllegalControl as e:
            await self.runner.cb.emit("control_ignored", f"{action} ignored: {e.message}", action=action)
            return
        await self.runner.cb.emit("control", f"{action} ({self.state.phase})", action=action, phase=self.state.phase)

    async def _analyse(self, now: float) -> None:
        canary, stable = self._sides()
        v = await self.analyst.judge(canary, stable, now - self.window_t, self.s.analysis, at=now, label=f"at {self.weight}%")
        self.results = (self.results + [{**v.to_json(), "weight": self.weight, "step": self.state.step + 1}])[-20:]
        if v.verdict != "inconclusive":
            self.window_t = now
        self.state = sm.observe(self.plan, self.state, v.verdict, now, v.summary)

    def _deadline(self, now: float) -> None:
        st = self.state
        limit = self.s.analysis.progress_deadline
        if st.finished or st.paused or st.passes > 0 or not (self.weight > 0 or self.plan.has_match):
            return
        if now - st.step_started > limit:
            self.state = replace(
                st, phase=sm.ROLLED_BACK,
                reason=f"no passing analysis within progress_deadline {limit:g}s at {self.weight}% (too little traffic or no metrics)",
            )
