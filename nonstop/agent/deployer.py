"""Deployments and rollbacks, one at a time, each step saved before it is taken.

``Deployer`` owns the deployment lifecycle: it takes the single-deployment
lock (a row in the store, so even two agents cannot both deploy), builds
and stores the release, hands a ``Run`` to the strategy (from the registry in
``nonstop.agent.strategies``), and records the outcome. After an agent
restart it finishes what a killed agent left (``recover``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from nonstop.agent import hooks, preflight, strategies
from nonstop.agent.fleet import Fleet
from nonstop.agent.store import Deployment, Release
from nonstop.agent.strategies.run import Aborted, Parts, Run, default_undo
from nonstop.errors import NonstopError, UsageError
from nonstop.names import STRATEGIES

log = logging.getLogger("nonstop.agent")

LIVE = "live_release"
LIVE_HISTORY = "live_history"  # release ids in the order they went live

__all__ = ["Deployer", "LIVE", "LIVE_HISTORY", "Aborted"]


class Deployer:
    """Runs deployments and rollbacks, one at a time."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.store = parts.store
        self.events = parts.events
        self.current: Run | None = None
        self.task: asyncio.Task | None = None

    @property
    def cfg(self):
        return self.parts.config.current

    # -- what is live -----------------------------------------------------------
    def live(self) -> Release | None:
        rid = self.parts.traffic.live_release or self.store.get_meta(LIVE)
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
    async def deploy(self, version: str | None, artifact: str | None, strategy: str | None, image: str | None = None) -> int:
        if self.current is None:
            # Config changes take effect on the next deployment; a broken file is refused
            # (exit 2) before anything changes.
            self.parts.config.reload()
        strategy = strategy or self.cfg.strategy.type
        live = self.live()
        # Every reason this deploy cannot work, at once (exit 2), before anything is stopped or recorded.
        preflight.refuse(await preflight.deploy(
            self.cfg, self.parts.releases, preflight.DeployRequest(version, artifact, strategy, image), live,
            runtime=self.parts.fleet.runtime,
        ))
        dep = self.store.create_deployment(version or "(building)", strategy, live.id if live else None)
        self.task = asyncio.get_running_loop().create_task(self._deploy(dep, version, artifact, strategy, live, image))
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
    async def _deploy(self, dep: Deployment, version: str | None, artifact: str | None, strategy: str,
                      live: Release | None, image: str | None = None) -> None:
        t0 = time.monotonic()
        self.store.update_deployment(dep.id, state="progressing")
        await self.events.emit(
            dep.id, "start", f"deploy started strategy={strategy} from={live.id if live else '-'}",
            strategy=strategy, from_release=live.id if live else None,
        )
        # the stable release's figures from here on can be a baseline (the history keeps older ones)
        await self.parts.stats.sample()
        try:
            release = await self._build(dep, version, artifact, image)
        except NonstopError as e:
            await self._finish(dep, "failed", e.message, t0, detail=e.detail)
            return
        except Exception as e:  # a bug must still end the deployment, not wedge the lock
            log.exception("deploy crashed")
            await self._finish(dep, "failed", f"internal error: {e!r}", t0)
            return
        try:
            if await hooks.run_hook(self.cfg, "pre_deploy", release, self.parts.releases.artifact_path(release)) is not None:
                await self.events.emit(dep.id, "hook", "pre_deploy hook passed", hook="pre_deploy")
        except NonstopError as e:
            await self._finish(dep, "failed", e.message, t0, detail=e.detail, release=release)
            return
        run = Run(self.parts, self.store.get_deployment(dep.id), release, live, strategy)
        self.current = run
        strat = strategies.get(strategy)
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
        try:
            if await hooks.run_hook(self.cfg, "post_deploy", release, self.parts.releases.artifact_path(release)) is not None:
                await self.events.emit(dep.id, "hook", "post_deploy hook passed", hook="post_deploy")
        except NonstopError as e:  # the release is live: said, not undone
            await self.events.emit(dep.id, "hook_failed", e.message, hook="post_deploy", **e.detail)
        await self._finish(run.dep, "promoted", f"{release.id} is live", t0, release=release)

    async def _build(self, dep: Deployment, version: str | None, artifact: str | None, image: str | None) -> Release:
        build = self.cfg.build
        if build and build.commands:
            await self.events.emit(dep.id, "step", f"building ({len(build.commands)} command(s))", phase="build")
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        resolve = None
        if cfg.run.containers:
            runtime = self.parts.fleet.runtime

            def resolve(rid: str, ver: str):
                # after the build (which may have made the image): the id the release will run, exactly
                ref = image or cfg.run.image.replace("{version}", ver).replace("{release}", rid)
                return asyncio.run_coroutine_threadsafe(runtime.resolve_image(ref), loop).result()

        release = await loop.run_in_executor(
            None,
            lambda: self.parts.releases.create(version, Path(artifact) if artifact else None, build, cfg.base_dir, None,
                                               image=resolve),
        )
        self.store.update_deployment(dep.id, release=release.id)
        await self.events.emit(dep.id, "release", f"release {release.id} stored", release=release.id)
        return release

    async def _undo(self, run: Run, strat: strategies.Strategy) -> bool:
        """Put traffic back on the stable release and stop the new instances. True when traffic had moved."""
        moved = run.dep.data.get("phase") not in (None, "starting", "smoke")
        try:
            await strat.undo(run)
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
            await self._prune()

    def _went_live(self, release: Release) -> None:
        self.store.set_meta(LIVE, release.id)
        hist = [r for r in self.store.get_meta(LIVE_HISTORY, []) if r != release.id]
        self.store.set_meta(LIVE_HISTORY, (hist + [release.id])[-50:])
        if release.status == "bad":
            self.store.mark_release(release.id, "ok")

    async def _prune(self) -> None:
        """Releases beyond ``keep_releases`` go, never the live or previous one (nor one still running);
        so do their images, unless a kept release runs the same image."""
        releases = self.parts.releases
        hist = self.store.get_meta(LIVE_HISTORY, [])
        protect = set(hist[-2:]) | {r.release for r in self.parts.fleet.running()}
        images = {r.id: releases.image(r) for r in self.store.list_releases()}
        try:
            removed = releases.prune(self.cfg.keep_releases, protect)
        except Exception:
            log.exception("prune failed")
            return
        if not removed:
            return
        log.info("pruned releases %s", ", ".join(removed))
        kept = {img.id for rid, img in images.items() if img is not None and rid not in removed}
        for img in {images[rid].id for rid in removed if images.get(rid) is not None} - kept:
            try:
                await self.parts.fleet.runtime.remove_image(img)
            except NonstopError as e:
                log.warning("could not remove image %s: %s", img, e.message)

    # -- rollback -------------------------------------------------------------------
    def _room_beside(self, n: int) -> bool:
        """Whether ``n`` instances can start beside what serves now: free ports, counting those of
        instances only kept warm (``Run.make_room`` stops them when their port is needed)."""
        fleet = self.parts.fleet
        routed = self.parts.traffic.split.routed_addrs
        warm = [r for r in fleet.running() if (r.data or {}).get("retire_at") and Fleet.addr(r) not in routed]
        return fleet.free_port_count() + len(warm) >= n

    async def _rollback(self, dep: Deployment, target: Release, live: Release | None) -> None:
        t0 = time.monotonic()
        self.store.update_deployment(dep.id, state="progressing")
        await self.events.emit(dep.id, "start", f"rollback to {target.id} started", strategy="rollback",
                               from_release=live.id if live else None)
        run = Run(self.parts, self.store.get_deployment(dep.id), target, live, "rollback")
        self.current = run
        fleet = self.parts.fleet
        try:
            n = self.cfg.run.instances
            warm = [r for r in fleet.running(target.id) if r.state == "healthy" and await fleet.alive(r)]
            if len(warm) >= n:
                warm = warm[:n]
                await run.step("switch", f"switching to warm {target.id} ({', '.join(r.id for r in warm)})", instant=True)
                for r in warm:
                    fleet.set_state(r, "healthy", retire_at=None)
                ready = warm
            elif self._room_beside(n):
                await run.step("starting", f"{target.id} is not warm: starting {n} instance(s)")
                ready = await run.start_new(n)
                await run.step("switch", f"switching to {target.id}")
            else:
                # run.ports leaves no room to start the target beside what serves (recreate: n ports;
                # rolling: n + max_surge): it goes back the way the configured strategy goes forward
                # (recreate stops first, the proxy holding requests; rolling replaces in batches).
                way = strategies.get(self.cfg.strategy.type)
                await run.step("starting", f"{target.id} is not warm and run.ports has no room beside "
                                           f"{live.id if live else 'nothing'}: {way.name} to it")
                try:
                    await way.run(run)
                except NonstopError as e:
                    await way.undo(run)
                    await self._finish(run.dep, "failed", e.message, t0, detail=e.detail, release=target)
                    return
                if live:
                    self.store.mark_release(live.id, "bad")
                self._went_live(target)
                await self._finish(run.dep, "promoted", f"rolled back to {target.id}", t0, release=target)
                return
            old = run.stable_instances()
            await run.switch_to(target, ready)
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
        """Finish what a killed agent left: the strategy's own recovery when it has one (a watch goes on
        for the rest of its window), else roll back a deployment caught before its switch and complete
        one caught after it."""
        dep = self.store.active_deployment()
        if dep is None:
            return
        phase = dep.data.get("phase")
        release = self.store.get_release(dep.release)
        stable = self.store.get_release(dep.from_release) if dep.from_release else None
        await self.events.emit(dep.id, "recover", f"agent restarted during deployment #{dep.id} (phase {phase})", phase=phase)
        t0 = time.monotonic()
        strat = strategies.get(dep.strategy) if dep.strategy in STRATEGIES else None
        if release is not None and strat is not None and strat.recover is not None:
            run = Run(self.parts, dep, release, stable, dep.strategy)
            self.current = run
            try:
                done = await strat.recover(run)
            except asyncio.CancelledError:
                self.current = None
                raise
            if done is not None:
                if done.state == "promoted":
                    self._went_live(release)
                else:
                    self.store.mark_release(release.id, "bad")
                await self._finish(run.dep, done.state, done.reason, t0, release=release)
                return
        split = self.parts.traffic.split
        fleet = self.parts.fleet
        if release is not None and self.parts.traffic.live_release == release.id and not split.canary:
            # The switch happened: finish (stop what is left of the old release).
            old = [r for r in fleet.running() if r.release != release.id and r.state in ("healthy", "draining")
                   and not (r.data or {}).get("retire_at")]
            run = Run(self.parts, dep, release, stable, dep.strategy)
            keep = getattr(self.cfg.strategy, "keep_previous", 0) if dep.strategy == "blue-green" else 0
            await run.retire([r for r in old if Fleet.addr(r) not in split.routed_addrs], keep_warm=keep)
            self._went_live(release)
            await self._finish(dep, "promoted", f"{release.id} is live (completed after agent restart)", t0, release=release)
            return
        # Not switched (or split mid-canary): back to the stable release.
        run = Run(self.parts, dep, release or Release(dep.release, dep.release, None, time.time(), "ok", None), stable, dep.strategy)
        run.new = [r for r in fleet.running(dep.release)] if release else []
        # The strategy's own undo knows its shape (rolling restarts the old instances it retired).
        await (strat.undo if strat is not None else default_undo)(run)
        if release:
            self.store.mark_release(release.id, "bad")
        await self._finish(dep, "rolled_back", "the agent was killed mid-deployment; rolled back on restart", t0, release=release)
