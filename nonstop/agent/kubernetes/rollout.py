"""The rollout reconcilers: pure. A plan of stages, where the rollout stands, observations + ``now`` → next action.

A ``Plan`` is the stages a strategy goes through (each a ``Shape`` to apply
and the Deployments that must reach it) and the stages that go back to the
previous shape. ``advance(cfg, plan, pos, observed, now)`` returns the
position after this call and one action for the driver to perform:

- ``Apply(objects)`` — server-side apply these (the stage's rendered shape);
- ``Wait(until, why)`` — observe again at ``until``;
- ``Gate(kind)`` — the driver's part: ``promote`` (wait for ``nonstop
  promote``) or ``watch`` (analysis after a switch); it reports back with
  ``gate_passed`` or ``fail``;
- ``Done`` / ``RolledBack(reason)`` / ``Failed(reason)`` — finished.

A stage whose Deployments stall (``observe.judge``: ProgressDeadlineExceeded,
a crash-looping or unpullable new pod, no progress past the backstop) turns
the rollout around: the back stages are applied, and once they are ready
the outcome is ``RolledBack`` (traffic on the previous release, exit 1). A
stall while going back is ``Failed``. A first deploy has nothing to go back to.

Positions are plain JSON (``Position.to_json``) kept in the state ConfigMap
after every stage, so another ``nonstop`` can resume or roll back
(``recovery``) a rollout whose runner died.

Per strategy (``plan_for``):

- rolling / recreate: one stage, the ``main`` Deployment on the new
  template (the Deployment controller replaces pods within maxSurge /
  maxUnavailable, or all at once); back: the previous template.
- blue-green (and any change of track, e.g. a first rolling deploy after
  blue-green): start the idle color beside the live one, [promote gate],
  switch, [watch gate]; back: switch to the old side, then stop the new one.
  The old side stays warm (``keep_previous``).
- canary: built step by step by the driver (``canary_*_stages``), the step
  machine (``strategies/steps.py``) deciding the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Union

from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes.observe import (
    DeployObs,
    Pending,
    Ready,
    RouteObs,
    RouteWant,
    Stalled,
    Want,
    judge,
    judge_route,
)
from nonstop.agent.kubernetes.shapes import (
    COLORS,
    KRelease,
    Shape,
    Track,
    canary_replicas,
    canary_shape,
    deployment_name,
    other_color,
    rolling_shape,
)
from nonstop.config import BlueGreenStrategy, Config
from nonstop.errors import UsageError

__all__ = [
    "Stage",
    "Plan",
    "Position",
    "Apply",
    "Wait",
    "Gate",
    "Done",
    "RolledBack",
    "Failed",
    "Action",
    "wants",
    "waits",
    "route_key",
    "backstop",
    "advance",
    "gate_passed",
    "fail",
    "plan_for",
    "plan_rolling",
    "plan_switch",
    "canary_weight_stages",
    "canary_finish_stages",
    "canary_back_stages",
    "recovery",
]

POLL = 2.0  # seconds between observations while a stage is pending


@dataclass(frozen=True)
class Stage:
    """One step of a rollout: the shape to apply, the Deployments that must reach it, an optional gate."""

    name: str
    shape: Shape
    wait: tuple[Want, ...] = ()
    gate: str | None = None  # "promote" | "watch"
    traffic: bool = False  # from this stage on, the new release takes traffic


@dataclass(frozen=True)
class Plan:
    """A strategy's stages for one release from the ``previous`` shape, and the stages back to it."""

    strategy: str
    release: KRelease
    previous: Shape | None
    stages: tuple[Stage, ...]
    back: tuple[Stage, ...] = ()

    @property
    def final(self) -> Shape:
        return self.stages[-1].shape


@dataclass(frozen=True)
class Position:
    """Where a rollout stands: direction, stage, whether that stage was applied, its progress timer."""

    direction: str = "forward"  # forward | back
    stage: int = 0
    applied: bool = False
    since: float = 0.0  # the last progress (apply, or a change in what the stage waits for)
    last: str = ""  # what it waited for at the last observation (a change resets ``since``)
    finished: str | None = None  # done | rolled_back | failed
    reason: str = ""
    traffic: bool = False  # the new release has taken traffic

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, d: Mapping) -> "Position":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Apply:
    """Server-side apply these objects (one stage's rendered shape), in order."""

    objects: tuple[dict, ...]
    stage: str


@dataclass(frozen=True)
class Wait:
    """Observe again at ``until``; ``why`` says what the stage waits for."""

    until: float
    why: str


@dataclass(frozen=True)
class Gate:
    """The driver's turn: ``promote`` (wait for `nonstop promote`) or ``watch`` (analysis)."""

    kind: str  # promote | watch
    stage: str


@dataclass(frozen=True)
class Done:
    """The plan went through: the release serves all traffic."""

    reason: str = ""


@dataclass(frozen=True)
class RolledBack:
    """The plan turned around and the previous shape is back (traffic on the previous release)."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """Neither forward nor back could be reached (or a first deploy failed)."""

    reason: str


Action = Union[Apply, Wait, Gate, Done, RolledBack, Failed]


def wants(shape: Shape, only: tuple[str, ...] | None = None, app: str | None = None) -> tuple[Want, ...]:
    """What each Deployment of ``shape`` (or only the tracks named) must reach."""
    assert app is not None
    return tuple(
        Want(deployment_name(app, t.name), mf.label_value(t.release.id), t.replicas)
        for t in shape.tracks
        if only is None or t.name in only
    )


def route_key(name: str) -> str:
    """The key of an HTTPRoute in ``observed`` (Deployments are keyed by name: ``<app>`` is both)."""
    return f"HTTPRoute/{name}"


def waits(cfg: Config, stage: Stage) -> tuple[Want | RouteWant, ...]:
    """What a stage waits for: its Deployments and, with a gateway, the route taken by it (every stage
    applies the route: a change the gateway never takes would leave the weights where they were)."""
    k = cfg.kubernetes
    if k is None or k.gateway is None:
        return stage.wait
    return stage.wait + (RouteWant(cfg.app, k.gateway.name),)


def backstop(cfg: Config) -> float:
    """Seconds without any progress after which a stage counts as stalled even if Kubernetes says nothing."""
    return mf.progress_deadline(cfg) + 60.0


def _stages(plan: Plan, pos: Position) -> tuple[Stage, ...]:
    return plan.stages if pos.direction == "forward" else plan.back


def fail(plan: Plan, pos: Position, reason: str, now: float) -> Position:
    """Turn the rollout around (a breach, an abort, a stall): the back stages next, or failed without any."""
    if pos.finished:
        return pos
    if pos.direction == "back":
        return replace(pos, finished="failed", reason=f"{pos.reason}; going back failed too: {reason}")
    if not plan.back:
        return replace(pos, finished="failed", reason=reason)
    return Position(direction="back", stage=0, applied=False, since=now, reason=reason, traffic=pos.traffic)


def gate_passed(pos: Position, now: float) -> Position:
    """The driver's gate (promote, watch) is through: on to the next stage."""
    return replace(pos, stage=pos.stage + 1, applied=False, since=now, last="")


def advance(
    cfg: Config, plan: Plan, pos: Position, observed: Mapping[str, DeployObs], now: float, *, poll: float = POLL
) -> tuple[Position, Action]:
    """The next action of ``plan`` from ``pos`` given the Deployments observed (by name)."""
    for _ in range(2 * (len(plan.stages) + len(plan.back)) + 4):  # each pass returns or moves on
        if pos.finished == "done":
            return pos, Done(pos.reason)
        if pos.finished == "rolled_back":
            return pos, RolledBack(pos.reason)
        if pos.finished == "failed":
            return pos, Failed(pos.reason)
        stages = _stages(plan, pos)
        if pos.stage >= len(stages):
            if pos.direction == "forward":
                pos = replace(pos, finished="done", reason=pos.reason or f"{plan.release.id} rolled out")
            else:
                pos = replace(pos, finished="rolled_back")
            continue
        st = stages[pos.stage]
        if not pos.applied:
            pos = replace(pos, applied=True, since=now, last="", traffic=pos.traffic or (st.traffic and pos.direction == "forward"))
            return pos, Apply(tuple(mf.render(cfg, st.shape)), st.name)
        if st.gate is not None and pos.direction == "forward":
            return pos, Gate(st.gate, st.name)
        waiting: list[str] = []
        stalled: str | None = None
        for w in waits(cfg, st):
            if isinstance(w, RouteWant):
                robs = observed.get(route_key(w.name)) or RouteObs(name=w.name, exists=False)
                j = judge_route(robs, w, now, pos.since)  # type: ignore[arg-type]
            else:
                obs = observed.get(w.name) or DeployObs(name=w.name, exists=False)
                j = judge(obs, w, now, pos.since, backstop(cfg))  # type: ignore[arg-type]
            if isinstance(j, Stalled):
                stalled = j.reason
                break
            if isinstance(j, Pending):
                waiting.append(j.why)
            else:
                assert isinstance(j, Ready)
        if stalled is not None:
            pos = fail(plan, pos, f"{st.name}: {stalled}", now)
            continue
        if waiting:
            why = "; ".join(waiting)
            if why != pos.last:
                pos = replace(pos, since=now, last=why)
            return pos, Wait(now + poll, why)
        pos = replace(pos, stage=pos.stage + 1, applied=False, last="")
    raise AssertionError("rollout did not settle")  # pragma: no cover


# -- plans ---------------------------------------------------------------------------------


def plan_rolling(cfg: Config, release: KRelease, previous: Shape | None, *, strategy: str = "rolling") -> Plan:
    """The ``main`` Deployment on ``release``'s template; back: the previous template."""
    if previous is not None and previous.primary != "main":
        return plan_switch(cfg, release, previous, "main", strategy=strategy)
    new = rolling_shape(cfg, release, strategy=strategy)
    if previous is not None and previous.track("canary") is not None:
        # a canary Deployment left at 0 stays (no churn); it takes no traffic
        new = Shape(new.strategy, new.tracks + (replace(previous.track("canary"), replicas=0),), new.weights)
    verb = "replace every pod at once with" if strategy == "recreate" else "roll out"
    stages = (Stage(f"{verb} {release.id}", new, wants(new, ("main",), app=cfg.app), traffic=True),)
    back: tuple[Stage, ...] = ()
    if previous is not None:
        back = (Stage(f"put back {previous.live_release().id}", previous, wants(previous, app=cfg.app)),)
    return Plan(strategy, release, previous, stages, back)


def plan_switch(
    cfg: Config,
    release: KRelease,
    previous: Shape | None,
    target: str,
    *,
    strategy: str = "blue-green",
    promote_gate: bool = False,
    watch_gate: bool = False,
) -> Plan:
    """Start ``release`` on the ``target`` track beside the live one, switch all traffic to it, keep the old
    side warm. Back: traffic to the old side first, then the new side stopped."""
    n = cfg.run.instances
    preview = target if strategy == "blue-green" else None
    if previous is None:
        shape = Shape(strategy, (Track(target, release, n),), ((target, 100),))
        return Plan(strategy, release, None, (Stage(f"start {release.id} on {target}", shape, wants(shape, app=cfg.app), traffic=True),))
    others = tuple(t for t in previous.tracks if t.name != target)
    started = Shape(strategy, others + (Track(target, release, n),), previous.weights, preview=preview)
    switched = Shape(strategy, started.tracks, ((target, 100),), preview=None)
    stages = [Stage(f"start {n} pod(s) of {release.id} on {target} beside {previous.primary}", started, wants(started, (target,), app=cfg.app))]
    if promote_gate:
        stages.append(Stage("wait for `nonstop promote` before the switch", started, gate="promote"))
    stages.append(Stage(f"switch all traffic to {target} ({release.id})", switched, traffic=True))
    if watch_gate:
        stages.append(Stage(f"watch {release.id} after the switch", switched, gate="watch", traffic=True))
    back_switch = Shape(strategy, started.tracks, previous.weights)
    stopped = Shape(strategy, others + (Track(target, release, 0),), previous.weights)
    back = (
        Stage(f"switch traffic back to {previous.primary} ({previous.live_release().id})", back_switch),
        Stage(f"stop {release.id} on {target}", stopped, wants(stopped, app=cfg.app)),
    )
    return Plan(strategy, release, previous, tuple(stages), back)


def plan_for(cfg: Config, strategy: str, release: KRelease, previous: Shape | None, *, rollback: bool = False) -> Plan:
    """The plan of ``strategy`` for ``release`` from the ``previous`` shape (None: a first deploy). Canary
    rollouts are planned step by step by the driver; a rollback with canary rolls the stable side."""
    s = cfg.strategy
    if strategy == "blue-green":
        if previous is None:
            return plan_switch(cfg, release, None, "blue")
        target = other_color(previous.primary) if previous.primary in COLORS else "blue"
        warm = next((t.name for t in previous.tracks if t.name != previous.primary and t.release.id == release.id
                     and t.release.image_ref == release.image_ref and t.replicas >= cfg.run.instances), None)
        if rollback and warm is not None:
            target = warm  # still running (keep_previous, also a rolling Deployment a blue-green deploy left warm): one switch
        bg = s if isinstance(s, BlueGreenStrategy) else None
        return plan_switch(
            cfg, release, previous, target,
            promote_gate=bool(bg and not bg.auto_promote and not rollback),
            watch_gate=bool(bg and bg.analysis is not None and not rollback),
        )
    if strategy == "canary" and not rollback:
        raise ValueError("canary plans are built step by step (canary_weight_stages)")
    return plan_rolling(cfg, release, previous, strategy="recreate" if strategy == "recreate" else "rolling")


def _canary_base(cfg: Config, previous: Shape | None) -> KRelease:
    if previous is None or previous.primary != "main":
        raise UsageError(
            "strategy canary: the live release runs on "
            + (f"the {previous.primary} track (blue-green)" if previous else "nothing")
            + "; deploy once with --strategy rolling to move it to the main Deployment, then canary"
        )
    t = previous.track("main")
    assert t is not None
    return t.release


def canary_weight_stages(cfg: Config, previous: Shape, new: KRelease, before: int, weight: int) -> tuple[Stage, ...]:
    """Raise the canary from ``before`` to ``weight`` percent: its pods first (ready), then the route."""
    stable = _canary_base(cfg, previous)
    gw = cfg.kubernetes is not None and cfg.kubernetes.gateway is not None
    target = canary_shape(cfg, stable, new, weight)
    c = target.track("canary")
    assert c is not None
    if gw:
        scaled = canary_shape(cfg, stable, new, before, canary_pods=max(c.replicas, canary_replicas(cfg.run.instances, before, gateway=True)))
        return (
            Stage(f"{c.replicas} canary pod(s) of {new.id} for {weight}%", scaled, wants(scaled, ("canary",), app=cfg.app)),
            Stage(f"route {weight}% to {new.id}", target, traffic=weight > 0),
        )
    n = cfg.run.instances
    return (
        Stage(
            f"{c.replicas} canary pod(s) of {new.id} beside {n} stable (≈{round(100 * c.replicas / (n + c.replicas))}% of requests, asked {weight}%)",
            target, wants(target, ("canary",), app=cfg.app), traffic=weight > 0,
        ),
    )


def canary_finish_stages(cfg: Config, previous: Shape, new: KRelease, weight: int) -> tuple[Stage, ...]:
    """100%: the stable Deployment takes the new template (a zero-downtime rolling update), then the canary stops."""
    stable = _canary_base(cfg, previous)
    n = cfg.run.instances
    gw = cfg.kubernetes is not None and cfg.kubernetes.gateway is not None
    out: list[Stage] = []
    if gw:
        full = canary_shape(cfg, stable, new, weight, canary_pods=n)
        out.append(Stage(f"{n} canary pod(s) of {new.id} (all the traffic is coming)", full, wants(full, ("canary",), app=cfg.app)))
        on_canary = canary_shape(cfg, stable, new, 100, canary_pods=n)
        out.append(Stage(f"route 100% to the canary {new.id}", on_canary, traffic=True))
        promoted = canary_shape(cfg, new, new, 100, canary_pods=n)
        out.append(Stage(f"stable Deployment on {new.id}", promoted, wants(promoted, ("main",), app=cfg.app), traffic=True))
        # the route leaves the canary before its pods stop (never both in one apply)
        back_on_stable = canary_shape(cfg, new, new, 0, canary_pods=n)
        out.append(Stage(f"route 100% to the stable Deployment ({new.id})", back_on_stable, traffic=True))
    else:
        promoted = canary_shape(cfg, new, new, weight)
        out.append(Stage(f"stable Deployment on {new.id} (rolling, no pod lost)", promoted, wants(promoted, ("main",), app=cfg.app), traffic=True))
    done = canary_shape(cfg, new, new, 0, canary_pods=0)
    out.append(Stage(f"100% on {new.id}; canary stopped", done, wants(done, app=cfg.app), traffic=True))
    return tuple(out)


def canary_back_stages(cfg: Config, previous: Shape, new: KRelease) -> tuple[Stage, ...]:
    """Back to the stable release: traffic off the canary first, then its pods stopped, the stable template restored."""
    stable = _canary_base(cfg, previous)
    n = cfg.run.instances
    gw = cfg.kubernetes is not None and cfg.kubernetes.gateway is not None
    out: list[Stage] = []
    if gw:
        off = canary_shape(cfg, stable, new, 0, canary_pods=n)
        out.append(Stage(f"route 100% back to {stable.id}", off))
    back = canary_shape(cfg, stable, new, 0, canary_pods=0)
    out.append(Stage(f"stop the canary; {n} pod(s) of {stable.id}", back, wants(back, app=cfg.app)))
    return tuple(out)


def recovery(strategy: str, pos: Position) -> str:
    """What the next ``nonstop`` does with a rollout whose runner died (its Lease expired):
    ``finish_rollback`` when it was going back; ``resume`` for rolling and recreate (the Deployment
    controller carried on anyway) and for a switch that already moved traffic; ``roll_back`` otherwise —
    a canary's analysis died with its runner, and traffic is never left split by accident (its position
    is that of one step's small plan, so it is not read). ``settle``: the plan had finished, only the
    record of it had not been written."""
    if strategy == "canary":
        return "roll_back"
    if pos.finished:
        return "settle"
    if pos.direction == "back":
        return "finish_rollback"
    if strategy in ("rolling", "recreate"):
        return "resume"
    if strategy == "blue-green" and pos.traffic:
        return "resume"
    return "roll_back"

