"""Performing a plan: the asyncio loop around ``rollout.advance``, with the cluster, the state and the clock.

``PlanRunner.run(plan, pos)`` observes the Deployments the current stage
waits for, asks ``advance`` for the next action and performs it: applies
objects (server-side, in the stage's order), waits (woken early by a control
action), resolves gates (``promote``: waits for ``nonstop promote``;
``watch``: the ``watch.Watcher`` analysis), and saves the position in the
state ConfigMap whenever the rollout moves to another stage or direction,
so another machine can take over from there. ``abort`` turns the rollout
around at any point (the back stages run: traffic to the previous release).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes import rollout as ro
from nonstop.agent.kubernetes import state as st
from nonstop.agent.kubernetes.observe import DeployObs, RouteWant, Want, observe_deployment, observe_route
from nonstop.agent.kubernetes.shapes import TRACKS, deployment_name
from nonstop.config import Config

__all__ = ["Clock", "RealClock", "Callbacks", "PlanRunner"]

log = logging.getLogger("nonstop.agent.kubernetes")

Emit = Callable[..., Awaitable[None]]


class Clock(Protocol):
    """Wall-clock time (epoch seconds: Leases and history are shared with other machines) and waiting."""

    def now(self) -> float: ...

    async def wait(self, queue: "asyncio.Queue[str]", seconds: float) -> str | None:
        """Wait up to ``seconds``; an item put on ``queue`` meanwhile ends the wait and is returned."""


class RealClock:
    """The clock of production: ``time.time`` and ``asyncio.wait_for`` on the control queue."""

    def now(self) -> float:
        return time.time()

    async def wait(self, queue: "asyncio.Queue[str]", seconds: float) -> str | None:
        try:
            return await asyncio.wait_for(queue.get(), max(0.0, seconds))
        except asyncio.TimeoutError:
            return None


async def _quiet(*_a: Any, **_k: Any) -> None:
    return None


@dataclass
class Callbacks:
    """How the driver reports: ``step(phase, message, **data)`` and ``emit(type, message, **data)``."""

    step: Emit = _quiet
    emit: Emit = _quiet


@dataclass
class PlanRunner:
    """Runs plans of one app against the cluster; owns nothing but the loop's bookkeeping."""

    cfg: Config
    client: Any
    clock: Clock
    cb: Callbacks
    control: "asyncio.Queue[str]"
    call: Callable[..., Awaitable[Any]]  # runs a blocking client call (in a thread)
    poll: float = ro.POLL
    watcher: Any = None  # watch.Watcher, for plans with a watch gate
    lost: Callable[[], str | None] = lambda: None  # the Lease's loss, when it happened
    other: Callable[[str], Awaitable[None]] | None = None  # controls the plan has no use for (a canary's step machine)
    said: str = field(default="", init=False)

    # -- observing -------------------------------------------------------------------------
    def _track_of(self, name: str) -> str:
        for t in TRACKS:
            if deployment_name(self.cfg.app, t) == name:
                return t
        raise ValueError(name)

    def observe_now(self, names: list[str], routes: list[str] = ()) -> dict[str, Any]:
        """Blocking: each Deployment named, with its pods (for crash loops), and each HTTPRoute."""
        out: dict[str, Any] = {}
        for name in routes:
            out[ro.route_key(name)] = observe_route(self.client.get("HTTPRoute", name), name)
        for name in names:
            obj = self.client.get("Deployment", name)
            pods = []
            if obj is not None:
                sel = f"{mf.LABEL_APP}={self.cfg.app},{mf.LABEL_TRACK}={self._track_of(name)}"
                pods = self.client.list("Pod", sel)
            out[name] = observe_deployment(obj, pods, name=name)
        return out

    async def observe(self, plan: ro.Plan, pos: ro.Position) -> dict[str, DeployObs]:
        stages = plan.stages if pos.direction == "forward" else plan.back
        if pos.finished or pos.stage >= len(stages) or not pos.applied:
            return {}
        wanted = ro.waits(self.cfg, stages[pos.stage])
        names = [w.name for w in wanted if isinstance(w, Want)]
        routes = [w.name for w in wanted if isinstance(w, RouteWant)]
        return await self.call(self.observe_now, names, routes) if wanted else {}

    # -- the loop ----------------------------------------------------------------------------
    async def save(self, dep_fields: dict) -> None:
        await self.call(st.update, self.client, self.cfg, lambda s: s.progress(**dep_fields) if s.deployment else s)

    async def run(self, plan: ro.Plan, pos: ro.Position, *, extra: dict | None = None) -> ro.Position:
        """Run ``plan`` from ``pos`` until it finishes; returns the final position (done/rolled_back/failed)."""
        cfg = self.cfg
        while True:
            why_lost = self.lost()
            if why_lost:
                from nonstop.agent.kubernetes.lease import LeaseLost

                raise LeaseLost(f"stopped acting on the cluster: {why_lost}")
            obs = await self.observe(plan, pos)
            before = pos
            pos, action = ro.advance(cfg, plan, pos, obs, self.clock.now(), poll=self.poll)
            if (before.direction, before.stage) != (pos.direction, pos.stage) or pos.finished:
                await self.save({"position": pos.to_json(), "phase": pos.direction, **(extra or {})})
            await self._turned(before, pos)
            if isinstance(action, ro.Apply):
                await self._apply(action)
                await self.save({"position": pos.to_json(), "phase": pos.direction, "stage": action.stage, **(extra or {})})
                continue
            if isinstance(action, ro.Wait):
                if action.why != self.said:
                    self.said = action.why
                    await self.cb.emit("waiting", action.why, waiting_for=action.why)
                got = await self.clock.wait(self.control, max(0.0, action.until - self.clock.now()))
                if got is not None:
                    before, pos = pos, await self.on_control(plan, pos, got, gate=None)
                    await self._turned(before, pos)
                continue
            if isinstance(action, ro.Gate):
                before, pos = pos, await self._gate(plan, pos, action)
                await self._turned(before, pos)
                continue
            return pos

    async def _turned(self, before: ro.Position, after: ro.Position) -> None:
        if before.direction == "forward" and after.direction == "back":
            await self.cb.emit("rollback", f"going back: {after.reason}", reason=after.reason)
            await self.cb.step("rollback", f"rolling back: {after.reason}")

    async def _apply(self, action: ro.Apply) -> None:
        await self.cb.step("apply", action.stage, objects=[f"{o['kind']}/{o['metadata']['name']}" for o in action.objects])
        for obj in action.objects:
            await self.call(self.client.apply, obj)
        await self.cb.emit(
            "applied", f"{action.stage}: applied " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in action.objects),
            objects=[f"{o['kind']}/{o['metadata']['name']}" for o in action.objects],
        )

    async def on_control(self, plan: ro.Plan, pos: ro.Position, action: str, *, gate: str | None) -> ro.Position:
        now = self.clock.now()
        if action == "abort" and pos.direction == "back":
            await self.cb.emit("control_ignored", "abort ignored: already going back to the previous release", action=action)
            return pos
        if action == "abort":
            await self.cb.emit("control", "abort: all traffic back to the previous release", action="abort")
            return ro.fail(plan, pos, "aborted by the user", now)
        if action in ("promote", "promote_full") and gate == "promote":
            await self.cb.emit("control", "promote: switching", action=action)
            return ro.gate_passed(pos, now)
        if action in ("promote", "promote_full") and gate == "watch":
            await self.cb.emit("control", "promote: the watch ends now", action=action)
            return ro.gate_passed(pos, now)
        if self.other is not None:
            await self.other(action)
            return pos
        await self.cb.emit("control_ignored", f"{action} ignored: nothing to {action} at this stage", action=action)
        return pos

    async def _gate(self, plan: ro.Plan, pos: ro.Position, gate: ro.Gate) -> ro.Position:
        if gate.kind == "promote":
            await self.cb.step("paused", f"{gate.stage} (`nonstop promote` switches, `nonstop abort` stops)")
            await self.cb.emit("waiting", "waiting for `nonstop promote`", waiting_for="promote", kind="manual")
            while True:
                got = await self.clock.wait(self.control, 3600.0)
                if got is None:
                    continue
                new = await self.on_control(plan, pos, got, gate="promote")
                if new != pos:
                    return new
        assert gate.kind == "watch" and self.watcher is not None
        breach = await self.watcher.watch(gate.stage, self.control)
        now = self.clock.now()
        if breach is None:
            return ro.gate_passed(pos, now)
        if breach == "abort":
            return ro.fail(plan, pos, "aborted by the user", now)
        return ro.fail(plan, pos, breach, now)

    async def prune(self, final: list[dict]) -> list[tuple[str, str]]:
        keep = {(o["kind"], o["metadata"]["name"]) for o in final}
        gone = await self.call(self.client.prune, keep)
        if gone:
            await self.cb.emit("pruned", "deleted " + ", ".join(f"{k}/{n}" for k, n in gone), objects=[f"{k}/{n}" for k, n in gone])
        return gone

