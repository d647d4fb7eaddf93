"""Deployments and rollbacks, one at a time, each step saved before it is taken.

``Deployer`` owns the deployment lifecycle: it takes the single-deployment
lock (a row in the store, so even two agents cannot both deploy), builds
and stores the release, hands a ``Run`` to the strategy, and records the
outcome. Strategies (``nonstop.agent.strategies``) only sequence steps
through the ``Run`` they are given.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nonstop.agent import preflight
from nonstop.agent.events import EventBus
from nonstop.agent.fleet import Fleet
from nonstop.agent.releases import Releases
from nonstop.agent.routers.base import Router
from nonstop.agent.store import Deployment, InstanceRecord, Release, Store
from nonstop.agent.traffic import Side, Split, Traffic
from nonstop.config import Config
from nonstop.errors import DeploymentFailed, NonstopError, UsageError

log = logging.getLogger("nonstop.agent")

LIVE = "live_release"
LIVE_HISTORY = "live_history"  # release ids in the order they went live


class Aborted(DeploymentFailed):
    """The user aborted the deployment; traffic is back on the stable release."""


@dataclass
class Run:
    """One deployment in progress: what a strategy may see and do."""

    deployer: "Deployer"
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
    # Set by a strategy (canary, rolling): what `status` shows under "deployment", and a
    # check that refuses a control action the rollout cannot take now (raises UsageError).
    status_hook: Callable[[], dict] | None = None
    check_control: Callable[[str], None] | None = None

    def status(self) -> dict:
        """Strategy-specific status (``{"canary": {...}}``), merged into ``status``'s deployment."""
        return self.status_hook() if self.status_hook is not None else {}

    @property
    def cfg(self) -> Config:
        return self.deployer.cfg

    @property
    def fleet(self) -> Fleet:
        return self.deployer.fleet

    @property
    def traffic(self) -> Traffic:
        return self.deployer.traffic

    @property
    def router(self) -> Router:
        return self.deployer.router

    @property
    def events(self) -> EventBus:
        return self.deployer.events

    async def step(self, phase: str, message: str, **data: Any) -> None:
        """Record that the deployment enters ``phase`` (saved before acting, for recovery)."""
        self.dep = self.deployer.store.update_deployment(
            self.dep.id, step=self.dep.step + 1, data={"phase": phase, **data}
        )
        await self.events.emit(self.dep.id, "step", message, phase=phase, step=self.dep.step, **data)

    async def emit(self, type: str, message: str, **data: Any) -> None:
        await self.events.emit(self.dep.id, type, message, **data)

    def stable_instances(self) -> list[InstanceRecord]:
        if not self.stable:
            return []
        routed = self.traffic.split.routed_addrs
        return [r for r in self.fleet.running(self.stable.id) if Fleet.addr(r) in routed]

    async def start_new(self, n: int, ports: list[int] | None = None) -> list[InstanceRecord]:
        if ports is None:
            await self.make_room(n)
        artifact = self.deployer.releases.artifact_path(self.release)
        recs = await self.fleet.start(self.release, n, str(artifact) if artifact else None, self.dep.id, ports=ports)
        self.new.extend(recs)
        self.deployer.store.update_deployment(self.dep.id, data={"new_instances": [r.id for r in self.new]})
        return recs

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
            for r in recs:
                self.fleet.set_state(r, r.state, retire_at=time.time() + keep_warm)
            await self.emit("kept_warm", f"{', '.join(r.id for r in recs)} kept warm for {keep_warm:g}s (instant rollback)")
        else:
            await self.fleet.stop(recs, self.dep.id, reason=reason or "retired")

    async def wait_control(self, timeout: float | None) -> str | None:
        """Wait for promote/abort/pause/resume (None on timeout). The caller handles ``abort``."""
        self.listens_for_abort = True
        try:
            return await asyncio.wait_for(self.control.get(), timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            self.listens_for_abort = False


class Deployer:
    """Runs deployments and rollbacks, one at a time."""

    def __init__(
        self, cfg: Config, store: Store, events: EventBus, fleet: Fleet, traffic: Traffic, releases: Releases, router: Router
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.events = events
        self.fleet = fleet
        self.traffic = traffic
        self.releases = releases
        self.router = router
        self.current: Run | None = None
        self.task: asyncio.Task | None = None
        # Re-reads nonstop.yml before each deploy (set by the agent): config
        # changes take effect on the next deployment, and a broken file is
        # refused (exit 2) before anything changes.
        self.reload: Callable[[], None] | None = None

    # -- what is live -----------------------------------------------------------
    def live(self) -> Release | None:
        rid = self.traffic.live_release or self.store.get_meta(LIVE)
        return self.store.get_release(rid) if rid else None

    def rollback_target(self, to: str | None) -> Release:
        live = self.live()
        if to:
            rel = self.store.get_release(to)
            if rel is None:
                known = ", ".join(r.id for r in self.store.list_releases()[:10]) or "none"
                raise UsageError(f"unknown release {to!r} (kept releases: {known})")
            if live and rel.id == live.id:
                raise UsageError(f"release {to!r} is already live")
            return rel
        history = self.store.get_meta(LIVE_HISTORY, [])
        for rid in reversed(history):
            if live and rid == live.id:
                continue
            rel = self.store.get_release(rid)
            if rel and rel.status != "bad":
                return rel
        raise UsageError("no previous release to roll back to (releases rolled back as bad are skipped; use --to)")

    # -- entry points (return once the deployment is recorded and started) -------
    async def deploy(self, version: str | None, artifact: str | None, strategy: str | None) -> int:
        if self.reload is not None and self.current is None:
            self.reload()
        strategy = strategy or self.cfg.strategy.type
        live = self.live()
        # Every reason this deploy cannot work, at once (exit 2), before anything is stopped or recorded.
        preflight.refuse(await preflight.deploy(self.cfg, self.releases, preflight.DeployRequest(version, artifact, strategy), live))
        dep = self.store.create_deployment(version or "(building)", strategy, live.id if live else None)
        self.task = asyncio.get_running_loop().create_task(self._deploy(dep, version, artifact, strategy, live))
        return dep.id

    async def rollback(self, to: str | None) -> int:
        target = self.rollback_target(to)
        live = self.live()
        dep = self.store.create_deployment(target.id, "rollback", live.id if live else None)
        self.task = asyncio.get_running_loop().create_task(self._rollback(dep, target, live))
        return dep.id

    def steer(self, action: str) -> Deployment:
        """promote / abort / pause / resume for the running deployment."""
        run = self.current
        if run is None:
            raise UsageError(f"no deployment in progress to {action}")
        if run.check_control is not None:
            run.check_control(action)  # an action the rollout cannot take now: UsageError, nothing queued
        if action == "abort" and not run.listens_for_abort:
            # Nothing in the strategy is waiting on the control queue right now:
            # interrupt whatever step it is in.
            run.abort_requested = True
            if run.task is not None and not run.task.done():
                run.task.cancel()
            return run.dep
        run.control.put_nowait(action)
        return run.dep

    # -- the deployment task --------------------------------------------------
    async def _deploy(self, dep: Deployment, version: str | None, artifact: str | None, strategy: str, live: Release | None) -> None:
        t0 = time.monotonic()
        self.store.update_deployment(dep.id, state="progressing")
        await self.events.emit(
            dep.id, "start", f"deploy started strategy={strategy} from={live.id if live else '-'}", strategy=strategy
        )
        try:
            release = await self._build(dep, version, artifact)
        except NonstopError as e:
            await self._finish(dep, "failed", e.message, t0, detail=e.detail)
            return
        except Exception as e:  # a bug must still end the deployment, not wedge the lock
            log.exception("deploy crashed")
            await self._finish(dep, "failed", f"internal error: {e!r}", t0)
            return
        run = Run(self, self.store.get_deployment(dep.id), release, live, strategy)
        self.current = run
        from nonstop.agent.strategies import get_strategy

        strat = get_strategy(strategy)
        try:
            # The strategy runs as its own task so that `abort` can interrupt it at
            # any step (a health wait, a pause); the agent shutting down cancels
            # this outer task instead, and the saved phase lets recovery finish.
            run.task = asyncio.get_running_loop().create_task(strat.run(run))
            try:
                await asyncio.shield(run.task)
            except asyncio.CancelledError:
                if run.task.cancelled() and run.abort_requested:
                    raise Aborted("aborted by the user") from None
                run.task.cancel()
                raise
        except asyncio.CancelledError:
            self.current = None
            raise  # agent shutting down: the saved phase lets recovery finish the job
        except Aborted as e:
            await self._undo(run, strat)
            await self._finish(run.dep, "aborted", e.message, t0, release=release)
            return
        except NonstopError as e:
            rolled = await self._undo(run, strat)
            self.store.mark_release(release.id, "bad")
            await self._finish(run.dep, "rolled_back" if rolled else "failed", e.message, t0, detail=e.detail, release=release)
            return
        except Exception as e:
            log.exception("strategy crashed")
            await self._undo(run, strat)
            await self._finish(run.dep, "failed", f"internal error: {e!r}", t0, release=release)
            return
        self._went_live(release)
        await self._finish(run.dep, "promoted", f"{release.id} is live", t0, release=release)

    async def _build(self, dep: Deployment, version: str | None, artifact: str | None) -> Release:
        build = self.cfg.build
        if build and build.commands:
            await self.events.emit(dep.id, "step", f"building ({len(build.commands)} command(s))", phase="build")
        loop = asyncio.get_running_loop()
        release = await loop.run_in_executor(
            None,
            lambda: self.releases.create(
                version, Path(artifact) if artifact else None, build, self.cfg.base_dir, None
            ),
        )
        self.store.update_deployment(dep.id, release=release.id)
        await self.events.emit(dep.id, "release", f"release {release.id} stored", release=release.id)
        return release

    async def _undo(self, run: Run, strat) -> bool:
        """Put traffic back on the stable release and stop the new instances. True when traffic had moved."""
        moved = run.dep.data.get("phase") not in (None, "starting", "smoke")
        try:
            undo = getattr(strat, "undo", None)
            if undo is not None:
                await undo(run)
            else:
                await default_undo(run)
        except Exception as e:  # keep going: report, never leave the lock held
            log.exception("undo failed")
            await run.emit("error", f"rollback step failed: {e}")
        return moved

    async def _finish(self, dep: Deployment, state: str, reason: str, t0: float, *, detail: dict | None = None, release: Release | None = None) -> None:
        took = time.monotonic() - t0
        self.store.update_deployment(
            dep.id, state=state, outcome=state, reason=reason, finished_at=time.time(), data={"seconds": round(took, 3), **({"detail": detail} if detail else {})}
        )
        ok = state == "promoted"
        await self.events.emit(
            dep.id,
            "result",
            f"deploy {'done' if ok else state} in {took:.1f}s: {reason}",
            ok=ok,
            state=state,
            reason=reason,
            seconds=round(took, 3),
            release=release.id if release else dep.release,
            detail=detail or {},
        )
        self.current = None
        if ok:
            self._prune()

    def _went_live(self, release: Release) -> None:
        self.store.set_meta(LIVE, release.id)
        hist = [r for r in self.store.get_meta(LIVE_HISTORY, []) if r != release.id]
        self.store.set_meta(LIVE_HISTORY, (hist + [release.id])[-50:])
        if release.status == "bad":
            self.store.mark_release(release.id, "ok")

    def _prune(self) -> None:
        hist = self.store.get_meta(LIVE_HISTORY, [])
        protect = set(hist[-2:]) | {r.release for r in self.fleet.running()}
        try:
            removed = self.releases.prune(self.cfg.keep_releases, protect)
        except Exception:
            log.exception("prune failed")
            return
        if removed:
            log.info("pruned releases %s", ", ".join(removed))

    # -- rollback -------------------------------------------------------------------
    async def _rollback(self, dep: Deployment, target: Release, live: Release | None) -> None:
        t0 = time.monotonic()
        self.store.update_deployment(dep.id, state="progressing")
        await self.events.emit(dep.id, "start", f"rollback to {target.id} started", strategy="rollback")
        run = Run(self, self.store.get_deployment(dep.id), target, live, "rollback")
        self.current = run
        try:
            n = self.cfg.run.instances
            warm = [r for r in self.fleet.running(target.id) if r.state == "healthy" and self.fleet.alive(r)]
            if len(warm) >= n:
                warm = warm[:n]
                await run.step("switch", f"switching to warm {target.id} ({', '.join(r.id for r in warm)})", instant=True)
                for r in warm:
                    self.fleet.set_state(r, "healthy", retire_at=None)
                ready = warm
            else:
                await run.step("starting", f"{target.id} is not warm: starting {n} instance(s)")
                ready = await run.start_new(n)
                await run.step("switch", f"switching to {target.id}")
            old = run.stable_instances()
            await self.traffic.set(Split(stable=Side(target.id, tuple(Fleet.addr(r) for r in ready)), sticky=self.traffic.split.sticky))
            await run.emit("switched", f"100% of traffic on {target.id}", release=target.id)
            if live:
                self.store.mark_release(live.id, "bad")
            await run.step("draining", "draining the rolled-back release")
            await run.retire(old, reason="rolled back")
        except asyncio.CancelledError:
            self.current = None
            raise
        except NonstopError as e:
            await default_undo(run)
            await self._finish(run.dep, "failed", e.message, t0, detail=e.detail, release=target)
            return
        except Exception as e:
            log.exception("rollback crashed")
            await self._finish(run.dep, "failed", f"internal error: {e!r}", t0, release=target)
            return
        self._went_live(target)
        await self._finish(run.dep, "promoted", f"rolled back to {target.id}", t0, release=target)

    # -- after an agent restart --------------------------------------------------------
    async def recover(self) -> None:
        """Finish what a killed agent left: roll back a deployment caught before its switch, complete one caught after."""
        dep = self.store.active_deployment()
        if dep is None:
            return
        phase = dep.data.get("phase")
        release = self.store.get_release(dep.release)
        live_now = self.traffic.live_release
        await self.events.emit(dep.id, "recover", f"agent restarted during deployment #{dep.id} (phase {phase})", phase=phase)
        t0 = time.monotonic()
        split = self.traffic.split
        if release is not None and live_now == release.id and not split.canary:
            # The switch happened: finish (stop what is left of the old release).
            old = [r for r in self.fleet.running() if r.release != release.id and r.state in ("healthy", "draining") and not (r.data or {}).get("retire_at")]
            stable = self.store.get_release(dep.from_release) if dep.from_release else None
            run = Run(self, dep, release, stable, dep.strategy)
            keep = self.cfg.strategy.keep_previous if dep.strategy in ("blue-green", "rollback") and hasattr(self.cfg.strategy, "keep_previous") else 0
            await run.retire([r for r in old if Fleet.addr(r) not in split.routed_addrs], keep_warm=keep if dep.strategy == "blue-green" else 0)
            self._went_live(release)
            await self._finish(dep, "promoted", f"{release.id} is live (completed after agent restart)", t0, release=release)
            return
        # Not switched (or split mid-canary): back to the stable release.
        stable = self.store.get_release(dep.from_release) if dep.from_release else None
        run = Run(self, dep, release or Release(dep.release, dep.release, None, time.time(), "ok", None), stable, dep.strategy)
        run.new = [r for r in self.fleet.running(dep.release)] if release else []
        strat = None
        if dep.strategy in ("recreate", "blue-green", "canary", "rolling"):
            from nonstop.agent.strategies import get_strategy

            strat = get_strategy(dep.strategy)
        # The strategy's own undo knows its shape (rolling restarts the old instances it retired).
        await (getattr(strat, "undo", None) or default_undo)(run)
        if release:
            self.store.mark_release(release.id, "bad")
        await self._finish(dep, "rolled_back", "the agent was killed mid-deployment; rolled back on restart", t0, release=release)


async def default_undo(run: Run) -> None:
    """Traffic on the stable release only; the new release's instances drained and stopped."""
    d = run.deployer
    stable_addrs = tuple(Fleet.addr(r) for r in run.stable_instances()) if run.stable else ()
    if run.stable and not stable_addrs:
        # The stable instances are not routed (a recreate that stopped them, or a switch that happened):
        # take the ones still running, or start the stable release again.
        running = [r for r in d.fleet.running(run.stable.id) if d.fleet.alive(r)]
        if not running:
            artifact = d.releases.artifact_path(run.stable)
            running = await d.fleet.start(run.stable, d.cfg.run.instances, str(artifact) if artifact else None, run.dep.id)
        for r in running:
            d.fleet.set_state(r, "healthy", retire_at=None)
        stable_addrs = tuple(Fleet.addr(r) for r in running)
    new_running = [r for r in d.fleet.running(run.release.id)] if run.release else []
    split = Split(stable=Side(run.stable.id, stable_addrs), sticky=d.traffic.split.sticky) if run.stable else Split(sticky=d.traffic.split.sticky)
    if run.stable or d.traffic.split.routed_addrs & {Fleet.addr(r) for r in new_running}:
        await d.traffic.set(split)
        await run.emit("switched", f"traffic back on {run.stable.id if run.stable else '(nothing)'}")
    await run.retire(new_running, reason="rolled back")
