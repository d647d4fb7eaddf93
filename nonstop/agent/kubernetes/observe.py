"""What the cluster says about a rollout, read from the API's JSON, and judged: pure.

``observe_deployment(obj, pods)`` turns a Deployment and its pods (as the API
returns them) into a ``DeployObs``; ``judge(obs, want, now, since, deadline)``
says whether that Deployment has reached what was asked of it, the way
``kubectl rollout status`` (client-go) reads it, plus what Kubernetes itself
does not act on:

1. the controller has not seen the change yet (``observedGeneration`` <
   ``generation``) → pending;
2. ``Progressing`` is False with ``ProgressDeadlineExceeded``, or
   ``ReplicaFailure`` is True (quota, admission) → **stalled**: Kubernetes
   only sets the condition, nonstop rolls back;
3. a pod of the new release crash-loops (``CrashLoopBackOff`` after
   ``CRASH_RESTARTS`` restarts) or cannot start at all (``ImagePullBackOff``,
   ``InvalidImageName``, ``CreateContainerConfigError``, …) → **stalled**,
   without waiting out the progress deadline;
4. fewer updated replicas than asked, old replicas still there, or updated
   ones not yet available → pending (the message says which);
5. otherwise ready. A backstop: pending past ``deadline`` seconds since the
   change was applied → stalled (a controller that never reports).
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field
from typing import Any, Union

from nonstop.agent.kubernetes.manifests import ANN_RELEASE, LABEL_RELEASE, LABEL_TRACK

__all__ = [
    "CRASH_RESTARTS",
    "FATAL_WAITING",
    "Condition",
    "PodObs",
    "DeployObs",
    "Want",
    "Pending",
    "Ready",
    "Stalled",
    "Judgement",
    "observe_deployment",
    "observe_pod",
    "judge",
    "RouteObs",
    "RouteWant",
    "ROUTE_DEADLINE",
    "observe_route",
    "judge_route",
    "parse_time",
]

CRASH_RESTARTS = 2
ROUTE_DEADLINE = 60.0  # seconds for a gateway to take a route's change (its status) before it counts as stalled
FATAL_WAITING = frozenset(
    {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
)


@dataclass(frozen=True)
class Condition:
    """One entry of a Deployment's ``status.conditions``."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class PodObs:
    """One pod: which release it runs, whether it is ready, and how its container is doing."""

    name: str
    release: str | None
    ready: bool
    restarts: int = 0
    waiting: str | None = None  # the container's waiting reason (CrashLoopBackOff, ImagePullBackOff, …)
    message: str = ""
    terminating: bool = False
    track: str | None = None
    created: float | None = None  # metadata.creationTimestamp

    def to_json(self) -> dict:
        return {
            "name": self.name, "release": self.release, "track": self.track, "ready": self.ready, "restarts": self.restarts,
            "waiting": self.waiting, "message": self.message, "terminating": self.terminating, "created": self.created,
        }


@dataclass(frozen=True)
class DeployObs:
    """A Deployment as observed: spec and status counts, conditions, the release its template runs, its pods."""

    name: str
    exists: bool = True
    generation: int = 0
    observed_generation: int = 0
    spec_replicas: int = 0
    replicas: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    release: str | None = None  # the template's release label
    release_id: str | None = None  # the template's full release id (annotation)
    conditions: tuple[Condition, ...] = ()
    pods: tuple[PodObs, ...] = field(default=())

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "exists": self.exists,
            "release": self.release_id or self.release,
            "replicas": self.spec_replicas,
            "ready": self.ready,
            "available": self.available,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class Want:
    """What a Deployment must reach: its template's release (label value) at ``replicas`` available."""

    name: str
    release: str
    replicas: int


@dataclass(frozen=True)
class Pending:
    """Not there yet; ``why`` in words (status, events)."""

    why: str


@dataclass(frozen=True)
class Ready:
    """The Deployment reached what was asked."""

    why: str = ""


@dataclass(frozen=True)
class Stalled:
    """It will not get there: the rollout turns around."""

    reason: str
    pod: str | None = None


Judgement = Union[Pending, Ready, Stalled]


def observe_pod(obj: dict[str, Any]) -> PodObs:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    restarts, waiting, message = 0, None, ""
    for cs in status.get("containerStatuses") or []:
        restarts = max(restarts, int(cs.get("restartCount") or 0))
        w = (cs.get("state") or {}).get("waiting")
        if w and w.get("reason"):
            waiting, message = w["reason"], w.get("message") or ""
            last = (cs.get("lastState") or {}).get("terminated")
            if last and not message:
                message = f"last exit code {last.get('exitCode')} ({last.get('reason') or 'terminated'})"
    return PodObs(
        name=str(meta.get("name", "?")),
        release=(meta.get("labels") or {}).get(LABEL_RELEASE),
        ready=ready,
        restarts=restarts,
        waiting=waiting,
        message=message,
        terminating=meta.get("deletionTimestamp") is not None,
        track=(meta.get("labels") or {}).get(LABEL_TRACK),
        created=parse_time(meta.get("creationTimestamp")),
    )


def observe_deployment(obj: dict[str, Any] | None, pods: list[dict[str, Any]] = (), name: str = "?") -> DeployObs:
    if obj is None:
        return DeployObs(name=name, exists=False)
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    st = obj.get("status") or {}
    tmeta = (spec.get("template") or {}).get("metadata") or {}
    return DeployObs(
        name=str(meta.get("name", name)),
        generation=int(meta.get("generation") or 0),
        observed_generation=int(st.get("observedGeneration") or 0),
        spec_replicas=int(spec.get("replicas", 1)),
        replicas=int(st.get("replicas") or 0),
        updated=int(st.get("updatedReplicas") or 0),
        ready=int(st.get("readyReplicas") or 0),
        available=int(st.get("availableReplicas") or 0),
        release=(tmeta.get("labels") or {}).get(LABEL_RELEASE),
        release_id=(tmeta.get("annotations") or {}).get(ANN_RELEASE),
        conditions=tuple(
            Condition(str(c.get("type")), str(c.get("status")), str(c.get("reason") or ""), str(c.get("message") or ""))
            for c in st.get("conditions") or []
        ),
        pods=tuple(observe_pod(p) for p in pods),
    )


def _sick_pod(obs: DeployObs, release: str) -> Stalled | None:
    for p in obs.pods:
        if p.release != release or p.terminating:
            continue
        if p.waiting in FATAL_WAITING:
            return Stalled(f"pod {p.name} cannot start: {p.waiting}" + (f" ({p.message})" if p.message else ""), p.name)
        if p.waiting == "CrashLoopBackOff" and p.restarts >= CRASH_RESTARTS:
            return Stalled(
                f"pod {p.name} is crash-looping ({p.restarts} restarts)" + (f": {p.message}" if p.message else ""), p.name
            )
    return None


def judge(obs: DeployObs, want: Want, now: float, since: float, deadline: float) -> Judgement:
    """Has ``obs`` reached ``want``? ``since``: when the change was applied; ``deadline``: the backstop."""
    late = now - since > deadline
    n = want.replicas

    def pending(why: str) -> Judgement:
        if late:
            return Stalled(f"{obs.name}: no progress within {deadline:.0f}s ({why})")
        return Pending(why)

    if not obs.exists:
        return pending(f"Deployment {want.name} does not exist yet")
    if obs.release != want.release:
        return pending(f"{obs.name} runs release {obs.release or '?'}, waiting for {want.release}")
    if obs.observed_generation < obs.generation:
        return pending(f"waiting for the Deployment controller to observe {obs.name} generation {obs.generation}")
    prog = obs.condition("Progressing")
    if prog is not None and prog.status == "False" and prog.reason == "ProgressDeadlineExceeded":
        return Stalled(f"{obs.name}: ProgressDeadlineExceeded" + (f" ({prog.message})" if prog.message else ""))
    fail = obs.condition("ReplicaFailure")
    if fail is not None and fail.status == "True":
        return Stalled(f"{obs.name}: {fail.reason or 'ReplicaFailure'}" + (f" ({fail.message})" if fail.message else ""))
    if n > 0:
        sick = _sick_pod(obs, want.release)
        if sick is not None:
            return sick
    if obs.updated < n:
        return pending(f"{obs.name}: {obs.updated} of {n} pods updated to {want.release}")
    if obs.replicas > obs.updated:
        return pending(f"{obs.name}: {obs.replicas - obs.updated} old pod(s) still running")
    if obs.available < obs.updated or obs.available < n:
        return pending(f"{obs.name}: {obs.available} of {n} updated pods available")
    if n == 0 and obs.replicas > 0:
        return pending(f"{obs.name}: {obs.replicas} pod(s) still running")
    return Ready(f"{obs.name}: {n} of {n} pods of {want.release} available")


def parse_time(text: str | None) -> float | None:
    """A Kubernetes Time or MicroTime (``2026-12-01T10:00:00Z``, ``…00.123456Z``) as epoch seconds."""
    if not text:
        return None
    main, _, frac = text.rstrip("Z").partition(".")
    try:
        t = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    return t + (float("0." + frac) if frac.isdigit() else 0.0)


# -- HTTPRoute: did the gateway take the change? ---------------------------------------------------


@dataclass(frozen=True)
class RouteWant:
    """The HTTPRoute ``name`` accepted, at its current generation, by the Gateway ``gateway``."""

    name: str
    gateway: str


@dataclass(frozen=True)
class RouteObs:
    """An HTTPRoute as observed: its generation and, per parent Gateway, the conditions its controller set."""

    name: str
    exists: bool = True
    generation: int = 0
    parents: tuple[tuple[str, tuple[Condition, ...], int], ...] = ()  # (gateway name, conditions, observedGeneration)


def observe_route(obj: dict[str, Any] | None, name: str = "?") -> RouteObs:
    if obj is None:
        return RouteObs(name=name, exists=False)
    meta = obj.get("metadata") or {}
    parents = []
    for p in (obj.get("status") or {}).get("parents") or []:
        conds = tuple(
            Condition(str(c.get("type")), str(c.get("status")), str(c.get("reason") or ""), str(c.get("message") or ""))
            for c in p.get("conditions") or []
        )
        seen = min([int(c.get("observedGeneration") or 0) for c in p.get("conditions") or []] or [0])
        parents.append((str((p.get("parentRef") or {}).get("name")), conds, seen))
    return RouteObs(name=str(meta.get("name", name)), generation=int(meta.get("generation") or 0), parents=tuple(parents))


def judge_route(obs: RouteObs, want: RouteWant, now: float, since: float, deadline: float = ROUTE_DEADLINE) -> Judgement:
    """Accepted (and its backends resolved) at the current generation → ready; refused → stalled."""
    late = now - since > deadline

    def pending(why: str) -> Judgement:
        return Stalled(f"HTTPRoute {want.name}: {why} after {deadline:.0f}s") if late else Pending(why)

    if not obs.exists:
        return pending(f"HTTPRoute {want.name} does not exist yet")
    mine = [p for p in obs.parents if p[0] == want.gateway]
    if not mine:
        return pending(f"waiting for Gateway {want.gateway} to accept HTTPRoute {want.name}")
    _gw, conds, seen = mine[0]
    if seen < obs.generation:
        return pending(f"waiting for Gateway {want.gateway} to take HTTPRoute {want.name} generation {obs.generation}")
    by = {c.type: c for c in conds}
    acc = by.get("Accepted")
    if acc is not None and acc.status == "False":
        return Stalled(f"Gateway {want.gateway} does not accept HTTPRoute {want.name}: {acc.reason}" + (f" ({acc.message})" if acc.message else ""))
    res = by.get("ResolvedRefs")
    if acc is None or acc.status != "True":
        return pending(f"waiting for Gateway {want.gateway} to accept HTTPRoute {want.name}")
    if res is not None and res.status == "False":
        return pending(f"HTTPRoute {want.name}: backends not resolved: {res.reason} {res.message}".strip())
    return Ready(f"HTTPRoute {want.name} accepted by Gateway {want.gateway}")
