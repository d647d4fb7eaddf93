"""``KubernetesDriver``: one app's deployments, rollbacks and recoveries against a cluster.

The seam the agent wires in (docs/internals.md, "The kubernetes runtime"):

    driver = KubernetesDriver(cfg, client, callbacks=Callbacks(step, emit), control=queue)
    release = await driver.new_release(version, image)        # id from the cluster's history
    outcome = await driver.deploy(release, strategy_name)     # → Outcome
    outcome = await driver.rollback(to=None)
    outcome = await driver.recover()                          # → Outcome | None
    await driver.housekeeping()                               # the warm side's expiry
    driver.check_control(action)                              # refuse (UsageError) before queueing
    await driver.check_lock()                                 # exit 4 before anything is accepted
    target = await driver.rollback_target(to)                 # UsageError for an unknown or live release
    status = await driver.status(); history = await driver.history()

Every operation holds the app's Lease for its whole length (renewed in the
background), reads and writes the state ConfigMap, and performs a plan
(``rollout.py``) through a ``PlanRunner``. Taking over a Lease whose holder
died first recovers what that holder left (``rollout.recovery``: resume, or
roll back), then does what was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator

from nonstop.agent.kubernetes import lease as lk
from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes import rollout as ro
from nonstop.agent.kubernetes import state as st
from nonstop.agent.kubernetes.canary_run import CanaryRun
from nonstop.agent.kubernetes.observe import observe_deployment
from nonstop.agent.kubernetes.prometheus import Prometheus, Side, pod_regex
from nonstop.agent.kubernetes.runner import Callbacks, Clock, PlanRunner, RealClock
from nonstop.agent.kubernetes.shapes import KRelease, Shape, deployment_name, first_deploy_shape, image_for
from nonstop.agent.kubernetes.watch import Analyst, Watcher
from nonstop.agent.strategies import steps as sm
from nonstop.config import BlueGreenStrategy, CanaryStrategy, Config, RollingStrategy
from nonstop.errors import DeploymentInProgress, UsageError

__all__ = ["Outcome", "KubernetesDriver"]

log = logging.getLogger("nonstop.agent.kubernetes")


@dataclass(frozen=True)
class Outcome:
    """How a deployment, rollback or recovery ended. ``ok``: the asked-for release serves all traffic."""

    state: str  # promoted | rolled_back | aborted | failed
    release: str
    strategy: str
    reason: str = ""
    deployment: int | None = None
    detail: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "promoted"

    def to_json(self) -> dict:
        return {"state": self.state, "ok": self.ok, "release": self.release, "strategy": self.strategy,
                "reason": self.reason, "deployment": self.deployment, **self.detail}


class KubernetesDriver:
    """Runs one app's deployments against a cluster; owns its Lease while it acts, never the cluster state itself
    (that is the state ConfigMap's)."""

    def __init__(
        self, cfg: Config, client: Any, *, callbacks: Callbacks | None = None, control: "asyncio.Queue[str] | None" = None,
        clock: Clock | None = None, metrics: Prometheus | None = None, holder: str | None = None, poll: float | None = None,
    ) -> None:
        assert cfg.kubernetes is not None
        self.cfg = cfg
        self.client = client
        self.cb = callbacks or Callbacks()
        self.control: asyncio.Queue[str] = control or asyncio.Queue()
        self.clock: Clock = clock or RealClock()
        k = cfg.kubernetes
        self.metrics = metrics or (Prometheus(k.prometheus, namespace=k.namespace, app=cfg.app, queries=k.prometheus_queries) if k.prometheus else None)
        self.holder = holder or lk.holder_identity()
        self.poll = poll if poll is not None else k.poll_interval  # seconds between reads of a rollout
        self._lease: lk.LeaseInfo | None = None
        self._lost: str | None = None
        self._canary: CanaryRun | None = None
        self._watching: Watcher | None = None
        self._gate_ok = False

    # -- plumbing --------------------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        """The client is blocking (urllib3): its calls run in a thread, the loop stays free."""
        return await asyncio.to_thread(fn, *args)

    def _runner(self, watcher: Watcher | None = None) -> PlanRunner:
        return PlanRunner(self.cfg, self.client, self.clock, self.cb, self.control, self._call, self.poll, watcher, lambda: self._lost)

    async def _state(self) -> st.ClusterState:
        return (await self._call(st.read, self.client, self.cfg))[0]

    async def _update(self, edit: Any) -> st.ClusterState:
        return await self._call(st.update, self.client, self.cfg, edit)

    @contextlib.asynccontextmanager
    async def _locked(self, release: str, strategy: str) -> AsyncIterator[lk.LeaseInfo | None]:
        """Hold the Lease for the block (renewed every third of its duration); yields an expired Lease taken over."""
        state = await self._state()
        step = (state.deployment or {}).get("stage")
        ours, taken = await self._call(
            lambda: lk.acquire(self.client, self.cfg, self.holder, release=release, strategy=strategy, now=self.clock.now(), step=step)
        )
        self._lease, self._lost = ours, None
        while not self.control.empty():  # a control sent after the last operation ended is not for this one
            self.control.get_nowait()
        await self.cb.emit("lease", f"deploy lock taken by {self.holder}", holder=self.holder, release=release)
        renewer = asyncio.create_task(self._renew())
        try:
            yield taken
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer
            if self._lost is None and self._lease is not None:
                try:
                    await self._call(lk.release, self.client, self.cfg, self._lease)
                except Exception:  # the Lease expires by itself; never mask the outcome
                    log.exception("could not release the deploy Lease")
            self._lease = None

    async def _renew(self) -> None:
        assert self.cfg.kubernetes is not None
        every = self.cfg.kubernetes.lease_duration / 3
        while True:
            await asyncio.sleep(every)
            assert self._lease is not None
            try:
                self._lease = await self._call(lk.renew, self.client, self.cfg, self._lease, self.clock.now())
            except lk.LeaseLost as e:
                self._lost = e.message
                log.error("deploy Lease lost: %s", e.message)
                return
            except Exception as e:  # a blip: the next renewal (well within the duration) tries again
                log.warning("deploy Lease renewal failed: %s", e)

    # -- control ------------------------------------------------------------------------------
    def check_control(self, action: str) -> None:
        """Refuse (``UsageError``) an action the running rollout cannot take now; nothing is queued then."""
        if action not in sm.ACTIONS:
            raise UsageError(f"unknown action {action!r}; expected one of {', '.join(sm.ACTIONS)}")
        if self._canary is not None:
            self._canary.check_control(action)
        elif action in ("pause", "resume"):
            raise UsageError(f"{action}: only a canary can be held; this rollout can be aborted")

    # -- operations -----------------------------------------------------------------------------
    async def new_release(self, version: str, image: str | None = None, digest: str | None = None) -> KRelease:
        """The release a deploy of ``version`` is: its id from the cluster's history (the same id when this
        version ran this image before, ``version-2``… when the version already names another image), its
        image (``image``, else ``run.image`` filled in)."""
        from nonstop.agent.store import validate_version

        validate_version(version)
        state = await self._state()
        ref = image_for(self.cfg, version, version, image)
        rid = state.release_id(version, ref)
        if rid != version and image is None:
            ref = image_for(self.cfg, version, rid, None)  # {release} in run.image names the id
            rid = state.release_id(version, ref)
        old = state.release(rid)
        created = old.created if old is not None else self.clock.now()
        return KRelease(rid, version, ref, digest or (old.digest if old is not None else None), created)

    async def deploy(self, release: KRelease, strategy_name: str | None = None) -> Outcome:
        """Roll ``release`` out with ``strategy_name`` (default: the configured strategy)."""
        strategy = strategy_name or self.cfg.strategy.type
        if strategy == "canary" and not isinstance(self.cfg.strategy, CanaryStrategy):
            raise UsageError("strategy: canary needs a strategy block of type canary (steps, analysis)")
        async with self._locked(release.id, strategy) as taken:
            await self._recover_locked(taken)
            await self._expire_warm()
            state = await self._state()
            previous = state.settled
            if previous is not None and previous.live_release().id == release.id and previous.live_release().image_ref == release.image_ref:
                raise UsageError(f"release {release.id} is already live", detail={"release": release.id})
            if strategy == "canary" and previous is not None and previous.primary != "main":
                raise UsageError(
                    f"strategy canary: the live release runs on the {previous.primary} Deployment (blue-green); "
                    "deploy once with --strategy rolling to move it to the main Deployment, then canary"
                )
            return await self._run(release, strategy, previous, kind="deploy")

    async def rollback(self, to: str | None = None) -> Outcome:
        """Back to ``to`` (default: the newest good release that is not live), zero-downtime; the release
        rolled back from is marked bad (``rollback`` skips it next time)."""
        target = await self.rollback_target(to)
        async with self._locked(target.id, "rollback") as taken:
            await self._recover_locked(taken)
            state = await self._state()
            previous = state.settled
            if previous is not None and previous.live_release().id == target.id:
                raise UsageError(f"release {target.id} is already live")
            strategy = previous.strategy if previous is not None else self.cfg.strategy.type
            return await self._run(target, strategy, previous, kind="rollback")

    async def recover(self) -> Outcome | None:
        """Finish what a dead runner left (judged by the state ConfigMap and its expired Lease); None when nothing was left."""
        state = await self._state()
        if state.deployment is None:
            return None
        dep = state.deployment
        async with self._locked(str(dep.get("release")), str(dep.get("strategy"))) as taken:
            return await self._recover_locked(taken)

    async def housekeeping(self) -> None:
        """Scale the warm side to 0 once ``keep_previous`` is over (under the Lease; skipped while one deploys)."""
        state = await self._state()
        warm = state.warm
        if not warm or float(warm.get("until", 0)) > self.clock.now():
            return
        try:
            async with self._locked(str(warm.get("release")), "housekeeping"):
                await self._expire_warm()
        except DeploymentInProgress:
            return  # the deploy that holds the Lease expires the warm side itself when it is done

    async def cluster_state(self) -> st.ClusterState:
        """The shared state as the cluster has it now (history, settled shape, warm side, deployment in progress)."""
        return await self._state()

    async def check_lock(self) -> None:
        """``DeploymentInProgress`` (exit 4, naming holder, release, started, step) when another live holder has
        the Lease. Asked before a request is accepted, so a refused one records nothing; the operation itself
        takes the Lease for real (``_locked``), and a race lost there is the same error."""
        info = lk.parse(await self._call(self.client.get, "Lease", mf.lease_name(self.cfg)))
        if info is None or lk.verdict(info, self.holder, self.clock.now()) != "held" or lk.dead_here(info, self.holder):
            return
        state = await self._state()
        raise lk.in_progress(self.cfg, info, (state.deployment or {}).get("stage"))

    async def rollback_target(self, to: str | None = None) -> KRelease:
        """The release ``rollback(to)`` would go to; ``UsageError`` when there is none, or it is live."""
        state = await self._state()
        target = state.release(to) if to else state.previous_good()
        if target is None:
            known = ", ".join(r["id"] for r in state.releases) or "none"
            raise UsageError(f"no release {to!r} in the cluster's history (known: {known})" if to else
                             "no previous release to roll back to (releases rolled back as bad are skipped; use --to)")
        if state.live == target.id:
            raise UsageError(f"release {target.id} is already live")
        return target

    async def status(self) -> dict:
        """The cluster's picture: every Deployment of the app with its pods, the Service's selector, the route's
        weights, the settled shape, the warm side, the Lease, the deployment in progress (the cluster's record,
        whichever machine runs it) and, while this driver runs one, its canary or watch."""
        k = self.cfg.kubernetes
        assert k is not None
        state = await self._state()
        info = lk.parse(await self._call(self.client.get, "Lease", mf.lease_name(self.cfg)))

        def read() -> tuple[list[dict], list[dict], dict | None, dict | None]:
            deps = self.client.list("Deployment", mf.owner_selector(self.cfg))
            pods = self.client.list("Pod", f"{mf.LABEL_APP}={self.cfg.app}")
            svc = self.client.get("Service", self.cfg.app)
            route = self.client.get("HTTPRoute", self.cfg.app) if k.gateway is not None else None
            return deps, pods, svc, route

        deps, pods, svc, route = await self._call(read)
        by_track: dict[str, list[dict]] = {}
        for p in pods:
            by_track.setdefault(((p.get("metadata") or {}).get("labels") or {}).get(mf.LABEL_TRACK, ""), []).append(p)
        observed = []
        for d in deps:
            track = ((d.get("metadata") or {}).get("labels") or {}).get(mf.LABEL_TRACK, "")
            obs = observe_deployment(d, by_track.get(track, []))
            observed.append({"track": track, **obs.to_json(), "pods": [p.to_json() for p in obs.pods]})
        shape = state.settled
        now = self.clock.now()
        out: dict[str, Any] = {
            "app": self.cfg.app,
            "namespace": self.client.namespace,
            "context": self.client.context,
            "server": self.client.server,
            "live": state.live,
            "strategy": shape.strategy if shape else None,
            "shape": shape.to_json() if shape else None,
            "deployments": observed,
            "service": {"name": self.cfg.app, "selector": (svc.get("spec") or {}).get("selector")} if svc else None,
            "route": _route_json(route) if route else None,
            "warm": state.warm,
            "deployment": state.deployment,
            "lock": None if info is None or info.holder is None else {
                "holder": info.holder, "release": info.release, "strategy": info.strategy, "started": info.started,
                "renewed": info.renewed, "expired": info.expired(now),
            },
        }
        if self._canary is not None:
            out.update(self._canary.status())
        if self._watching is not None and self._watching.end is not None:
            out["watch"] = self._watching.status()
        return out

    async def history(self) -> list[dict]:
        """Deployments, newest first, with the release each rolled out."""
        state = await self._state()
        rels = {r["id"]: r for r in state.releases}
        return [{**d, "release_info": rels.get(d.get("release"))} for d in reversed(state.deployments)]

    # -- the work, under the Lease -----------------------------------------------------------------
    def _warm_after(self, strategy: str, previous: Shape | None, final: Shape) -> dict | None:
        if previous is None or previous.primary == final.primary:
            return None
        keep = self.cfg.strategy.keep_previous if isinstance(self.cfg.strategy, BlueGreenStrategy) else 0.0
        prev = previous.track(previous.primary)
        assert prev is not None
        return {"track": prev.name, "release": prev.release.id, "until": self.clock.now() + keep}

    def _watcher(self, strategy: str, plan: ro.Plan) -> Watcher | None:
        s = self.cfg.strategy
        analysis = s.analysis if isinstance(s, (BlueGreenStrategy, RollingStrategy)) and s.type == strategy else None
        if analysis is None or self.metrics is None or not any(x.gate == "watch" for x in plan.stages):
            return None
        app = self.cfg.app
        new_track = plan.final.primary
        base = plan.previous.primary if plan.previous else None
        return Watcher(
            Analyst(self.metrics, self.cb.emit), self.clock, analysis,
            Side(plan.release.id, new_track, pod_regex(deployment_name(app, new_track))),
            Side(plan.previous.live_release().id, base, pod_regex(deployment_name(app, base))) if base and plan.previous else None,
        )

    def _plan(self, release: KRelease, strategy: str, previous: Shape | None, kind: str) -> ro.Plan:
        plan = ro.plan_for(self.cfg, "rolling" if strategy == "canary" else strategy, release, previous, rollback=kind == "rollback")
        s = self.cfg.strategy
        if kind == "deploy" and strategy == "rolling" and isinstance(s, RollingStrategy) and s.analysis is not None and previous is not None and previous.primary == "main":
            last = plan.stages[-1]
            plan = ro.Plan(plan.strategy, plan.release, plan.previous, plan.stages + (ro.Stage(f"watch {release.id}", last.shape, gate="watch", traffic=True),), plan.back)
        if strategy == "canary":
            plan = ro.Plan("canary", plan.release, plan.previous, plan.stages, plan.back)
        return plan

    async def _run(self, release: KRelease, strategy: str, previous: Shape | None, *, kind: str) -> Outcome:
        now = self.clock.now()
        dep_fields = {
            "release": release.id, "strategy": strategy, "kind": kind, "from": previous.live_release().id if previous else None,
            "from_shape": previous.to_json() if previous else None, "started": now, "holder": self.holder,
            "phase": "forward", "stage": "planning", "image": release.image_ref,
        }
        state = await self._update(lambda s: s.with_release(release).begin(dep_fields)[0])
        did = (state.deployment or {}).get("id")
        await self.cb.step("starting", f"{kind} {release.id} ({strategy}) from {dep_fields['from'] or 'nothing'}", release=release.id, strategy=strategy)
        if strategy == "canary" and previous is not None and previous.primary == "main" and kind == "deploy":
            return await self._run_canary(release, previous, did)
        if strategy == "canary" and previous is None:
            plan = ro.Plan("canary", release, None, (ro.Stage(f"start {release.id} (nothing to compare with)", first_deploy_shape(self.cfg, release, "canary"), ro.wants(first_deploy_shape(self.cfg, release, "canary"), app=self.cfg.app), traffic=True),))
        else:
            plan = self._plan(release, strategy, previous, kind)
        watcher = self._watcher(strategy, plan)
        if watcher is not None:
            await watcher.measure_baseline()
        self._watching = watcher
        try:
            pos = await self._runner(watcher).run(plan, ro.Position(since=now))
        finally:
            self._watching = None
        return await self._finish(plan, pos, did, kind)

    async def _run_canary(self, release: KRelease, previous: Shape, did: int | None) -> Outcome:
        if self.metrics is None:  # config load refuses this; a hand-built Config must not skip analysis silently
            raise UsageError("kubernetes.prometheus: canary analysis needs a metrics source")
        run = CanaryRun(self.cfg, self._runner(), Analyst(self.metrics, self.cb.emit), previous, release)
        self._canary = run
        try:
            outcome, reason = await run.run()
        finally:
            self._canary = None
        final = ro.canary_finish_stages(self.cfg, previous, release, 100)[-1].shape if outcome == "promoted" else run.back[-1].shape
        return await self._settle(release, "canary", final, outcome, reason, did, previous, "deploy", detail={"analysis": run.results[-5:]})

    async def _finish(self, plan: ro.Plan, pos: ro.Position, did: int | None, kind: str) -> Outcome:
        if pos.finished == "done":
            outcome, final = "promoted", plan.final
        elif pos.finished == "rolled_back":
            outcome, final = ("aborted" if pos.reason == "aborted by the user" else "rolled_back"), plan.back[-1].shape
        else:
            outcome = "failed"
            final = plan.back[-1].shape if pos.direction == "back" and plan.back else plan.final
        return await self._settle(plan.release, plan.strategy, final, outcome, pos.reason, did, plan.previous, kind)

    async def _settle(self, release: KRelease, strategy: str, final: Shape, outcome: str, reason: str, did: int | None,
                      previous: Shape | None, kind: str, detail: dict | None = None) -> Outcome:
        now = self.clock.now()
        warm = self._warm_after(strategy, previous, final) if outcome == "promoted" else (await self._state()).warm
        from_release = previous.live_release().id if previous else None

        def edit(s: st.ClusterState) -> st.ClusterState:
            s = s.finish(outcome=outcome, reason=reason, finished=now, shape=final if outcome != "failed" or previous is None else None, warm=warm)
            if outcome in ("rolled_back", "failed") and kind == "deploy":
                s = s.mark(release.id, "bad")
            if outcome == "promoted":
                s = s.mark(release.id, "ok")  # deployed again on purpose: no longer skipped by rollback
            if outcome == "promoted" and kind == "rollback" and from_release:
                s = s.mark(from_release, "bad")
            return s.pruned(self.cfg.keep_releases)

        await self._update(edit)
        if outcome in ("promoted", "rolled_back", "aborted"):
            await self._runner().prune(mf.render(self.cfg, final))
        if outcome == "promoted":
            await self._expire_warm()
        words = {"promoted": f"{release.id} is live", "rolled_back": f"rolled back: {reason}", "aborted": f"aborted: {reason}", "failed": f"failed: {reason}"}[outcome]
        await self.cb.step("done" if outcome == "promoted" else outcome, words, outcome=outcome)
        await self.cb.emit("success" if outcome == "promoted" else "failure", words, outcome=outcome, release=release.id)
        return Outcome(outcome, release.id, strategy, reason, did, detail or {})

    async def _expire_warm(self) -> None:
        state = await self._state()
        warm, shape = state.warm, state.settled
        if not warm or shape is None or float(warm.get("until", 0)) > self.clock.now():
            return
        track = shape.track(str(warm.get("track")))
        if track is None or track.replicas == 0 or shape.weight(track.name) > 0:
            await self._update(lambda s: s.settle(shape, None))
            return
        cooled = shape.with_replicas(track.name, 0)
        plan = ro.Plan(shape.strategy, track.release, shape, (ro.Stage(f"keep_previous over: {deployment_name(self.cfg.app, track.name)} to 0", cooled, ro.wants(cooled, (track.name,), app=self.cfg.app)),))
        pos = await self._runner().run(plan, ro.Position(since=self.clock.now()))
        if pos.finished == "done":
            await self._update(lambda s: s.settle(cooled, None))
            await self.cb.emit("warm_expired", f"{track.release.id} on {track.name} scaled to 0 (keep_previous over)", release=track.release.id)

    async def _recover_locked(self, taken: lk.LeaseInfo | None) -> Outcome | None:
        state = await self._state()
        dep = state.deployment
        if dep is None:
            return None
        # We hold the Lease: a deployment still recorded as in progress is nobody's any more (its runner
        # died, or failed with an error before it could record the outcome), whoever ran it.
        strategy = str(dep.get("strategy"))
        rel = state.release(str(dep.get("release")))
        previous = Shape.from_json(dep["from_shape"]) if dep.get("from_shape") else None
        pos = ro.Position.from_json(dep.get("position") or {})
        what = ro.recovery(strategy if strategy in ("rolling", "recreate", "blue-green", "canary") else "rolling", pos)
        expired = f" (its Lease expired {self.clock.now() - (taken.renewed or 0) - taken.duration:.0f}s ago)" if taken is not None and taken.renewed else ""
        await self.cb.emit(
            "recovering",
            f"{dep.get('kind', 'deploy')} of {dep.get('release')} by {dep.get('holder')}{expired} was left at {dep.get('stage')}: {what.replace('_', ' ')}",
            action=what, holder=dep.get("holder"), stage=dep.get("stage"),
        )
        if rel is None:
            await self._update(lambda s: s.finish(outcome="failed", reason="left unfinished; nothing to recover", finished=self.clock.now(), shape=None, warm=s.warm))
            return None
        kind = str(dep.get("kind") or "deploy")
        if strategy == "canary" and previous is not None and previous.primary == "main":
            plan = ro.Plan("canary", rel, previous, (), ro.canary_back_stages(self.cfg, previous, rel))
            pos = ro.Position(direction="back", since=self.clock.now(), reason=f"recovered after its runner ({dep.get('holder')}) died")
        else:
            plan = self._plan(rel, strategy, previous, kind) if strategy != "canary" else self._plan(rel, "rolling", previous, kind)
            if what == "roll_back":
                pos = ro.fail(plan, pos, f"recovered after its runner ({dep.get('holder')}) died", self.clock.now())
            else:
                pos = replace(pos, applied=False, since=self.clock.now())
        await self._update(lambda s: s.progress(holder=self.holder))
        pos = await self._runner().run(plan, pos)
        out = await self._finish(plan, pos, dep.get("id"), kind)
        await self.cb.emit("recovered", f"recovered {dep.get('release')}: {out.state}", outcome=out.state)
        return out


def _route_json(route: dict) -> dict:
    """An HTTPRoute as status shows it: its parents and the weighted backends of its last (default) rule."""
    spec = route.get("spec") or {}
    rules = spec.get("rules") or []
    backends = [{"name": b.get("name"), "weight": b.get("weight", 1)} for b in (rules[-1].get("backendRefs") or [])] if rules else []
    return {"name": (route.get("metadata") or {}).get("name"), "parents": [p.get("name") for p in spec.get("parentRefs") or []],
            "backends": backends}
