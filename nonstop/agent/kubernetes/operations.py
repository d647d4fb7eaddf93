"""The kubernetes agent's deployer: one operation at a time through the driver, mirrored in the local store.

``KubeDeployer`` offers what the control API and the dashboard call on the
one-host ``Deployer`` — ``deploy(version, artifact, strategy, image)`` and
``rollback(to)`` (both return the local deployment's id once it is
recorded and started), ``steer(action)``, ``current``, ``task`` — and does
the work through the ``KubernetesDriver``. Each operation is a deployment
row in the agent's SQLite store; the driver's ``step`` / ``emit``
callbacks become that row's events (the CLI's progress stream, the
dashboard's timeline and the webhooks read them unchanged), and the row
ends with one ``result`` event. The shared truth (Lease, history, the
deployment in progress) is the cluster's: a request another machine's
deploy blocks is refused with exit 4 before anything is recorded, and the
agent's release rows and live release mirror the cluster's history after
every operation (for ``history`` and ``logs`` when no agent runs).

Every driver operation — deploy, rollback, recovery, housekeeping — runs
under one lock, so this agent never acts twice on the cluster at once (the
Lease alone would not stop it: it is this agent's own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nonstop.agent.kubernetes.shapes import KRelease
from nonstop.agent.preflight import statedir
from nonstop.agent.preflight.base import Env
from nonstop.configfile import ConfigProblems, Problem
from nonstop.errors import DeploymentInProgress, NonstopError, UsageError
from nonstop.names import STRATEGIES

__all__ = ["KubeDeployer", "Current", "request_problems"]

log = logging.getLogger("nonstop.agent.kubernetes")
_RESERVED = ("deployment_id", "type", "message")  # EventBus.emit's own parameters


@dataclass
class Current:
    """The operation running now: its local deployment row, what it does, where it is."""

    dep_id: int
    kind: str  # deploy | rollback | recover
    phase: str = "starting"  # build; cluster once the driver holds the Lease (controls reach it from then on)
    steps: int = 0


def _paused(type_: str, data: dict) -> bool | None:
    """Whether an event of the canary says it is held (a manual step, or ``nonstop pause``); None: it does not say.
    The deployment shows ``paused`` meanwhile, as on one host."""
    if type_ == "control" and data.get("phase"):
        return data["phase"] in ("paused_manual", "paused_user")
    if type_ == "waiting" and data.get("kind") in ("manual", "user", "pause", "analysis"):
        return data["kind"] in ("manual", "user")
    if type_ == "weight":
        return False
    return None


def request_problems(env: Env, version: str | None, artifact: str | None, strategy: str, image: str | None) -> list[Problem]:
    """Every reason a deploy request cannot work on a cluster (exit 2), before anything is recorded."""
    from nonstop.agent.store import validate_version
    from nonstop.config import CanaryStrategy

    cfg = env.cfg
    out: list[Problem] = []
    if strategy not in STRATEGIES:
        out.append(Problem("--strategy", f"unknown strategy {strategy!r} ({', '.join(STRATEGIES)})", None))
    elif strategy != cfg.strategy.type and strategy in ("canary", "rolling"):
        out.append(Problem("--strategy", f"{strategy} needs a strategy block of that type in the config", cfg.source))
    elif strategy == "canary" and not isinstance(cfg.strategy, CanaryStrategy):
        out.append(Problem("--strategy", "canary needs a strategy block of type canary (steps, analysis)", cfg.source))
    if version is not None:
        try:
            validate_version(version)
        except NonstopError as e:
            out.append(Problem("--version", e.message, None))
    if artifact is not None:
        out.append(Problem("--artifact", "runtime kubernetes deploys images, not artifacts: build.commands build and "
                                         "push the image of run.image, or name one with --image", None))
    if image is not None and (not image.strip() or any(c.isspace() for c in image)):
        out.append(Problem("--image", f"expected an image reference like registry.example/app:1.4.0; got {image!r}", None))
    out += statedir.room(env)
    return out


class KubeDeployer:
    """Owns the running operation (its local row, its task, the control queue) and the lock around the driver."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.store = agent.store
        self.events = agent.events
        self.control: asyncio.Queue[str] = asyncio.Queue()
        self.lock = asyncio.Lock()
        self.current: Current | None = None
        self.task: asyncio.Task | None = None

    @property
    def cfg(self):
        return self.agent.cfg

    # -- the driver's callbacks: events of the running operation's row --------------------------
    async def on_step(self, phase: str, message: str, **data: Any) -> None:
        cur = self.current
        if cur is not None:
            cur.steps += 1
            self.store.update_deployment(cur.dep_id, step=cur.steps, data={"phase": phase})
        await self._emit("step", message, phase=phase, **data)

    async def on_event(self, type_: str, message: str, **data: Any) -> None:
        if type_ in ("success", "failure"):
            return  # the operation's ``result`` event says it, with the outcome and the timing
        cur = self.current
        if cur is not None and type_ == "lease":
            cur.phase = "cluster"  # the driver holds the Lease and has dropped stale controls: steering reaches it now
        paused = _paused(type_, data)
        if cur is not None and paused is not None:
            dep = self.store.get_deployment(cur.dep_id)
            if dep is not None and dep.state in ("progressing", "paused") and (dep.state == "paused") != paused:
                self.store.update_deployment(cur.dep_id, state="paused" if paused else "progressing")
        await self._emit(type_, message, **data)

    async def _emit(self, type_: str, message: str, **data: Any) -> None:
        for k in _RESERVED:
            if k in data:
                data[f"{k}_"] = data.pop(k)
        await self.events.emit(self.current.dep_id if self.current else None, type_, message, **data)

    # -- requests (return once the deployment is recorded and started) ----------------------------
    async def deploy(self, version: str | None, artifact: str | None, strategy: str | None, image: str | None = None) -> int:
        if self.current is None:
            self.agent.reload_config()  # config changes take effect on the next deployment; a broken file: exit 2
        cfg = self.cfg
        strategy = strategy or cfg.strategy.type
        problems = request_problems(Env.of(cfg), version, artifact, strategy, image)
        if problems:
            raise ConfigProblems(problems)
        self._refuse_if_busy()
        driver = await self.agent.driver()
        await driver.check_lock()  # another machine deploys: exit 4, nothing recorded
        from nonstop.agent.releases import default_version

        workdir = cfg.path(cfg.build.workdir) if cfg.build else cfg.base_dir
        version = version or await asyncio.to_thread(default_version, workdir)  # asks git: not on the loop
        release = await driver.new_release(version, image)
        state = await driver.cluster_state()
        settled = state.settled
        if settled is not None and settled.live_release().id == release.id and settled.live_release().image_ref == release.image_ref:
            raise UsageError(f"release {release.id} is live already, with image {release.image_ref}: nothing to deploy",
                             detail={"release": release.id})
        dep = self.store.create_deployment(release.id, strategy, state.live)
        self.current = Current(dep.id, "deploy")
        self.task = asyncio.get_running_loop().create_task(self._deploy(dep.id, release, strategy, state.live))
        return dep.id

    async def rollback(self, to: str | None) -> int:
        self._refuse_if_busy()
        driver = await self.agent.driver()
        await driver.check_lock()
        target = await driver.rollback_target(to)
        live = (await driver.cluster_state()).live
        dep = self.store.create_deployment(target.id, "rollback", live)
        self.current = Current(dep.id, "rollback")
        self.task = asyncio.get_running_loop().create_task(self._rollback(dep.id, target, live))
        return dep.id

    def steer(self, action: str):
        """promote / promote_full / abort / pause / resume for the running rollout (the driver's control queue)."""
        cur = self.current
        if cur is None:
            raise UsageError(f"no deployment in progress to {action}")
        if cur.phase != "cluster":
            raise UsageError(f"{action}: deployment #{cur.dep_id} has not reached the cluster yet (its image builds, "
                             f"or it waits for its turn); nothing to {action} yet")
        driver = self.agent.driver_now()
        assert driver is not None
        driver.check_control(action)  # an action the rollout cannot take now: UsageError, nothing queued
        self.control.put_nowait(action)
        dep = self.store.get_deployment(cur.dep_id)
        assert dep is not None
        return dep

    def _refuse_if_busy(self) -> None:
        active = self.store.active_deployment()
        if active is not None:
            raise DeploymentInProgress(
                f"a deployment is in progress: release {active.release} ({active.strategy}), deployment #{active.id} "
                f"of this agent, at step {active.step} ({active.state}); wait for it, or `nonstop abort` it",
                detail={"deployment": active.id, "release": active.release, "strategy": active.strategy, "state": active.state},
            )

    # -- the tasks --------------------------------------------------------------------------------
    async def _deploy(self, dep_id: int, release: KRelease, strategy: str, live: str | None) -> None:
        t0 = time.monotonic()
        self.store.update_deployment(dep_id, state="progressing")
        await self._emit("start", f"deploy started strategy={strategy} from={live or '-'}", strategy=strategy,
                         from_release=live, release=release.id, image=release.image_ref)
        try:
            await self._build(dep_id, release)
            await self._emit("release", f"release {release.id}: image {release.image_ref}", release=release.id, image=release.image_ref)
            async with self.lock:
                driver = await self.agent.driver()
                out = await driver.deploy(release, strategy)
        except asyncio.CancelledError:
            raise  # the agent stops: the cluster's record lets the next agent (or machine) finish it
        except NonstopError as e:
            await self._finish(dep_id, "failed", e.message, t0, release=release.id, detail=e.detail, exit_code=e.exit_code)
            return
        except Exception as e:  # a bug must still end the deployment, not wedge the lock
            log.exception("kubernetes deploy crashed")
            await self._finish(dep_id, "failed", f"internal error: {e!r}", t0, release=release.id)
            return
        await self._finish(dep_id, out.state, out.reason if not out.ok else f"{out.release} is live", t0, release=out.release,
                           detail=out.detail, cluster_id=out.deployment)

    async def _rollback(self, dep_id: int, target: KRelease, live: str | None) -> None:
        t0 = time.monotonic()
        self.store.update_deployment(dep_id, state="progressing")
        await self._emit("start", f"rollback to {target.id} started", strategy="rollback", from_release=live, release=target.id)
        try:
            async with self.lock:
                driver = await self.agent.driver()
                out = await driver.rollback(target.id)
        except asyncio.CancelledError:
            raise
        except NonstopError as e:
            await self._finish(dep_id, "failed", e.message, t0, release=target.id, detail=e.detail, exit_code=e.exit_code)
            return
        except Exception as e:
            log.exception("kubernetes rollback crashed")
            await self._finish(dep_id, "failed", f"internal error: {e!r}", t0, release=target.id)
            return
        await self._finish(dep_id, out.state, f"rolled back to {target.id}" if out.ok else out.reason, t0, release=target.id,
                           detail=out.detail, cluster_id=out.deployment)

    async def _build(self, dep_id: int, release: KRelease) -> None:
        """``build.commands`` (with {version} and {release} filled in), e.g. ``docker build`` and ``docker push``."""
        build = self.cfg.build
        if build is None or not build.commands:
            return
        assert self.current is not None
        self.current.phase = "build"
        await self.on_step("build", f"building ({len(build.commands)} command(s))")

        def fill(c: str) -> str:
            return c.replace("{version}", release.version).replace("{release}", release.id)

        cmds = [fill(c) if isinstance(c, str) else [fill(a) for a in c] for c in build.commands]
        filled = build.model_copy(update={"commands": cmds})
        workdir = Path(self.cfg.path(build.workdir)).resolve()
        await asyncio.get_running_loop().run_in_executor(None, self.agent.releases.run_build, filled, workdir, release.id)

    async def _finish(self, dep_id: int, state: str, reason: str, t0: float, *, release: str | None = None,
                      detail: dict | None = None, exit_code: int | None = None, cluster_id: int | None = None) -> None:
        took = time.monotonic() - t0
        data: dict[str, Any] = {"seconds": round(took, 3)}
        if detail:
            data["detail"] = detail
        if cluster_id is not None:
            data["cluster_id"] = cluster_id
        self.store.update_deployment(dep_id, state=state, outcome=state, reason=reason, finished_at=time.time(), data=data)
        try:
            await self.agent.reread_cluster()  # the history and the mirror before the result goes out
        except NonstopError as e:
            log.warning("could not read the cluster's state after deployment #%s: %s", dep_id, e.message)
        ok = state == "promoted"
        extra = {"exit_code": exit_code} if exit_code not in (None, 1) and not ok else {}
        await self._emit(
            "result", f"deploy {'done' if ok else state} in {took:.1f}s: {reason}", ok=ok, state=state, reason=reason,
            seconds=round(took, 3), release=release, detail=detail or {}, **extra,
        )
        self.current = None

    # -- what a stopped agent or a dead machine left ---------------------------------------------
    async def recover(self) -> None:
        """Finish this agent's own interrupted row, and the cluster's deployment in progress whose runner died
        (resumed or rolled back by the driver); leave one that a live holder runs alone."""
        local = self.store.active_deployment()
        driver = await self.agent.driver()
        try:
            await driver.check_lock()
        except DeploymentInProgress as e:
            if local is not None:
                t0 = time.monotonic()
                self.current = Current(local.id, "recover", "cluster")
                await self._finish(local.id, "failed", f"interrupted when the agent stopped; {e.message}", t0, release=local.release)
            return
        pending = (await driver.cluster_state()).deployment
        if local is None and pending is None:
            return
        if local is None:
            assert pending is not None
            kind = pending.get("kind") or "deploy"
            local = self.store.create_deployment(str(pending.get("release")), "rollback" if kind == "rollback" else str(pending.get("strategy")),
                                                 pending.get("from"))
            self.store.update_deployment(local.id, state="progressing")
        self.current = Current(local.id, "recover", "cluster")
        t0 = time.monotonic()
        await self._emit("recover", f"deployment #{local.id} ({local.release}) was left unfinished"
                         + (f" by {pending.get('holder')} at {pending.get('stage')}" if pending else ""),
                         phase=(pending or {}).get("stage"), holder=(pending or {}).get("holder"))
        try:
            async with self.lock:
                out = await driver.recover()
        except asyncio.CancelledError:
            raise
        except NonstopError as e:
            await self._finish(local.id, "failed", e.message, t0, release=local.release, detail=e.detail, exit_code=e.exit_code)
            if e.exit_code == 3:
                raise
            return
        if out is None:
            words = "interrupted when the agent stopped; the cluster's history has how it ended"
            await self._finish(local.id, "failed", words, t0, release=local.release)
            return
        await self._finish(local.id, out.state, out.reason or f"{out.release} is live (completed after a restart)", t0,
                           release=out.release, detail=out.detail, cluster_id=out.deployment)

    async def housekeeping(self) -> None:
        """Between operations: a dead runner's deployment is recovered once its Lease expired; the warm side is
        scaled to 0 once ``keep_previous`` is over."""
        if self.current is not None or self.lock.locked() or self.store.active_deployment() is not None:
            return
        driver = await self.agent.driver()
        pending = (await driver.cluster_state()).deployment
        # Left by another runner (dead: recover() checks its Lease). One this agent left after an error waits for
        # the user's next operation, which finishes it first: retrying it here would only fail again and again.
        if pending is not None and pending.get("holder") != driver.holder:
            await self.recover()
            return
        if pending is not None:
            return
        async with self.lock:
            await driver.housekeeping()
