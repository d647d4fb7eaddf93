"""What a strategy may see and do: ``Run``, one deployment in progress, over the agent's ``Parts``.

A strategy only sequences steps through its ``Run``: start instances of the
new release (health-gated by the fleet), change the split (``traffic.set``),
drain and stop or keep warm, wait for the user's control actions, save where
it stands. It never sees the deployer, the runtime behind the fleet, or which
router moves the traffic.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from nonstop.agent.events import EventBus
from nonstop.agent.fleet import Fleet
from nonstop.agent.liveconfig import LiveConfig
from nonstop.agent.releases import Releases
from nonstop.agent.routers.base import Router
from nonstop.agent.stats_history import StatsHistory
from nonstop.agent.store import Deployment, InstanceRecord, Release, Store
from nonstop.agent.traffic import Side, Split, Traffic
from nonstop.config import Config
from nonstop.errors import DeploymentFailed

__all__ = ["Aborted", "Parts", "Run", "default_undo"]


class Aborted(DeploymentFailed):
    """The user aborted the deployment; traffic is back on the stable release."""


@dataclass
class Parts:
    """The agent's parts a deployment works with (each owns one thing)."""

    config: LiveConfig
    store: Store
    events: EventBus
    fleet: Fleet
    traffic: Traffic
    releases: Releases
    router: Router
    stats: StatsHistory


@dataclass
class Run:
    """One deployment in progress: its release, the stable one it replaces, and what it may do."""

    parts: Parts
    dep: Deployment
    release: Release
    stable: Release | None
    strategy: str
    started: float = field(default_factory=time.monotonic)
    new: list[InstanceRecord] = field(default_factory=list)
    control: asyncio.Queue = field(default_factory=asyncio.Queue)
    paused: bool = False
    task: asyncio.Task | None = None
    abort_requested: bool = False
    listens_for_abort: bool = False  # a strategy waiting in wait_control() handles abort itself
    # Set by a strategy (canary, rolling, a watch): what `status` shows under "deployment", and a
    # check that refuses a control action the rollout cannot take now (raises UsageError).
    status_hook: Callable[[], dict] | None = None
    check_control: Callable[[str], None] | None = None

    def status(self) -> dict:
        """Strategy-specific status (``{"canary": {...}}``), merged into ``status``'s deployment."""
        return self.status_hook() if self.status_hook is not None else {}

    # -- the parts -------------------------------------------------------------
    @property
    def cfg(self) -> Config:
        return self.parts.config.current

    @property
    def fleet(self) -> Fleet:
        return self.parts.fleet

    @property
    def traffic(self) -> Traffic:
        return self.parts.traffic

    @property
    def router(self) -> Router:
        return self.parts.router

    @property
    def events(self) -> EventBus:
        return self.parts.events

    @property
    def store(self) -> Store:
        return self.parts.store

    @property
    def releases(self) -> Releases:
        return self.parts.releases

    # -- recording -------------------------------------------------------------
    async def step(self, phase: str, message: str, **data: Any) -> None:
        """Record that the deployment enters ``phase`` (saved before acting, for recovery)."""
        self.dep = self.store.update_deployment(self.dep.id, step=self.dep.step + 1, data={"phase": phase, **data})
        await self.events.emit(self.dep.id, "step", message, phase=phase, step=self.dep.step, **data)

    def save(self, **data: Any) -> None:
        """Merge ``data`` into the deployment's saved state (what a restarted agent reads)."""
        self.dep = self.store.update_deployment(self.dep.id, data=data)

    def set_paused(self, paused: bool) -> None:
        """The deployment shows ``paused`` while a manual step or the user holds it."""
        if paused != self.paused:
            self.paused = paused
            self.dep = self.store.update_deployment(self.dep.id, state="paused" if paused else "progressing")

    async def emit(self, type: str, message: str, **data: Any) -> None:
        await self.events.emit(self.dep.id, type, message, **data)

    # -- instances ---------------------------------------------------------------
    def stable_instances(self) -> list[InstanceRecord]:
        if not self.stable:
            return []
        routed = self.traffic.split.routed_addrs
        return [r for r in self.fleet.running(self.stable.id) if Fleet.addr(r) in routed]

    async def start_new(self, n: int, ports: list[int] | None = None) -> list[InstanceRecord]:
        if ports is None:
            await self.make_room(n)
        recs = await self.fleet.start(self.release, n, self.dep.id, ports=ports)
        self.new.extend(recs)
        self.save(new_instances=[r.id for r in self.new])
        return recs

    async def start_stable(self, n: int) -> list[InstanceRecord]:
        """Start ``n`` instances of the stable release again (a rollback whose warm instances are gone)."""
        assert self.stable is not None
        return await self.fleet.start(self.stable, n, self.dep.id)

    async def make_room(self, n: int) -> None:
        """Stop instances kept warm for rollback (oldest first) when the new ones need their ports."""
        short = n - self.fleet.free_port_count()
        if short <= 0:
            return
        routed = self.traffic.split.routed_addrs
        warm = sorted(
            (r for r in self.fleet.running() if (r.data or {}).get("retire_at") and Fleet.addr(r) not in routed),
            key=lambda r: r.data["retire_at"],
        )[:short]
        if warm:
            await self.emit("evicting", f"stopping warm {', '.join(r.id for r in warm)} to free its port for {self.release.id}")
            await self.fleet.stop(warm, self.dep.id, reason="port needed")

    async def retire(self, recs: list[InstanceRecord], *, keep_warm: float = 0.0, reason: str = "") -> None:
        """Drain instances that are out of the split, then stop them (or keep them warm)."""
        if not recs:
            return
        addrs = [Fleet.addr(r) for r in recs]
        if keep_warm <= 0:
            for r in recs:
                self.fleet.set_state(r, "draining")
        await self.emit("draining", f"draining {', '.join(r.id for r in recs)}", instances=[r.id for r in recs])
        t0 = time.monotonic()
        drained = await self.router.drain(addrs, self.cfg.drain_timeout)
        await self.emit(
            "drained",
            f"drained in {time.monotonic() - t0:.2f}s" if drained else f"drain_timeout {self.cfg.drain_timeout:g}s passed with requests in flight",
            drained=drained,
        )
        if keep_warm > 0:
            self.keep_warm(recs, keep_warm)
            await self.emit("kept_warm", f"{', '.join(r.id for r in recs)} kept warm for {keep_warm:g}s (instant rollback)")
        else:
            await self.fleet.stop(recs, self.dep.id, reason=reason or "retired")

    def keep_warm(self, recs: list[InstanceRecord], seconds: float) -> None:
        """Keep ``recs`` running, out of the split, for ``seconds`` more (at least)."""
        until = time.time() + seconds
        for r in recs:
            cur = self.store.get_instance(r.id) or r
            self.fleet.set_state(cur, cur.state, retire_at=max(until, (cur.data or {}).get("retire_at") or 0))

    async def switch_to(self, release: Release, recs: list[InstanceRecord]) -> None:
        """All traffic on ``recs`` (of ``release``) at once."""
        await self.traffic.set(Split(stable=Side(release.id, tuple(Fleet.addr(x) for x in recs)), sticky=self.traffic.split.sticky))

    # -- the user ------------------------------------------------------------------
    async def wait_control(self, timeout: float | None) -> str | None:
        """Wait for promote/abort/pause/resume (None on timeout). The caller handles ``abort``."""
        self.listens_for_abort = True
        try:
            return await asyncio.wait_for(self.control.get(), timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            self.listens_for_abort = False


async def default_undo(run: Run) -> None:
    """Traffic on the stable release only; the new release's instances drained and stopped."""
    stable_addrs = tuple(Fleet.addr(r) for r in run.stable_instances()) if run.stable else ()
    if run.stable and not stable_addrs:
        # The stable instances are not routed (a recreate that stopped them, or a switch that happened):
        # take the ones still running, or start the stable release again.
        running = [r for r in run.fleet.running(run.stable.id) if await run.fleet.alive(r)]
        if not running:
            running = await run.start_stable(run.cfg.run.instances)
        for r in running:
            run.fleet.set_state(r, "healthy", retire_at=None)
        stable_addrs = tuple(Fleet.addr(r) for r in running)
    new_running = [r for r in run.fleet.running(run.release.id)] if run.release else []
    sticky = run.traffic.split.sticky
    split = Split(stable=Side(run.stable.id, stable_addrs), sticky=sticky) if run.stable else Split(sticky=sticky)
    if run.stable or run.traffic.split.routed_addrs & {Fleet.addr(r) for r in new_running}:
        await run.traffic.set(split)
        await run.emit("switched", f"traffic back on {run.stable.id if run.stable else '(nothing)'}",
                       release=run.stable.id if run.stable else None)
    await run.retire(new_running, reason="rolled back")
