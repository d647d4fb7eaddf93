"""What ``status`` and ``history`` show for an app on a cluster, built from the cluster's picture: pure.

The one-host agent's answers have a shape that the CLI, the dashboard and
``/metrics`` read (``live_release``, ``routes``, ``instances``,
``deployment``; ``releases`` and ``deployments`` in the history). These
functions fill that shape from what the cluster says — the driver's
``status()`` picture and the shared state — and add what only a cluster
has: ``cluster`` (context, server, namespace), ``deployments`` (every
Deployment of the app with its pods), ``service`` / ``route`` (the selector,
the weights), ``warm`` and ``lock``.

Traffic is read from the objects that carry it, not from what nonstop last
wrote: with a gateway, the HTTPRoute's backend weights; without one, the
Service's selector and the ready pods behind it (a Service spreads requests
over its endpoints, so a lane's weight per release is its share of them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nonstop.agent.kubernetes.shapes import TRACKS, lane, service_name
from nonstop.agent.traffic import Side, Split
from nonstop.config import Config

__all__ = ["track_weights", "routes", "instances", "split_of", "status_json", "history_json", "listen_of"]

LANE = "nonstop.dev/lane"
TRACK = "nonstop.dev/track"


def listen_of(cfg: Config) -> str:
    """The app's address inside the cluster (its Service's DNS name and port): what ``listen`` is on one host."""
    k = cfg.kubernetes
    assert k is not None
    return f"{cfg.app}.{k.namespace}.svc:{k.service_port}"


def _ready_pods(dep: Mapping[str, Any]) -> list[dict]:
    return [p for p in dep.get("pods") or [] if p.get("ready") and not p.get("terminating")]


def track_weights(cfg: Config, picture: Mapping[str, Any]) -> dict[str, int]:
    """Percent of requests each track gets now, as the cluster routes them."""
    deps = {d.get("track"): d for d in picture.get("deployments") or []}
    route = picture.get("route")
    if route and route.get("backends"):
        by_service = {service_name(cfg.app, t): t for t in TRACKS}
        raw = {by_service.get(b["name"]): int(b.get("weight") or 0) for b in route["backends"]}
        raw.pop(None, None)
        total = sum(raw.values())
        return {t: round(100 * w / total) for t, w in raw.items()} if total else {t: 0 for t in raw}
    selector = ((picture.get("service") or {}).get("selector")) or {}
    if TRACK in selector:
        chosen = [selector[TRACK]]
    elif LANE in selector:
        chosen = [t for t in TRACKS if lane(t) == selector[LANE]]
    else:
        chosen = []
    ready = {t: len(_ready_pods(deps[t])) for t in chosen if t in deps}
    total = sum(ready.values())
    if not total:
        return {t: 0 for t in ready}
    return {t: round(100 * n / total) for t, n in ready.items()}


def routes(cfg: Config, picture: Mapping[str, Any]) -> list[dict]:
    """``[{release, weight, targets}]`` (targets: ready pod names), canary first, as the one-host status lists them."""
    deps = {d.get("track"): d for d in picture.get("deployments") or []}
    out: dict[str, dict] = {}
    for track, w in track_weights(cfg, picture).items():
        d = deps.get(track)
        if d is None or not d.get("release"):
            continue
        r = out.setdefault(d["release"], {"release": d["release"], "weight": 0, "targets": [], "tracks": []})
        r["weight"] += w
        r["targets"] += [p["name"] for p in _ready_pods(d)]
        r["tracks"].append(track)
    return sorted((r for r in out.values() if r["weight"] > 0), key=lambda r: r["weight"])


def instances(cfg: Config, picture: Mapping[str, Any], now: float) -> list[dict]:
    """Every pod of the app, in the one-host ``instances`` shape (``id`` is the pod's name, ``pid`` none)."""
    weights = track_weights(cfg, picture)
    warm = picture.get("warm") or {}
    out = []
    for d in picture.get("deployments") or []:
        for p in d.get("pods") or []:
            waiting = p.get("waiting")
            if p.get("terminating"):
                state = "draining"
            elif p.get("ready"):
                state = "healthy"
            else:
                state = waiting or "starting"
            out.append({
                "id": p["name"],
                "release": p.get("release") or d.get("release"),
                "track": d.get("track"),
                "deployment": d.get("name"),
                "port": cfg.run.container_port,
                "pid": None,
                "state": state,
                "alive": waiting not in ("CrashLoopBackOff",) and not p.get("terminating"),
                "routed": bool(p.get("ready")) and weights.get(d.get("track"), 0) > 0,
                "uptime": round(now - p["created"], 1) if p.get("created") else None,
                "restarts": int(p.get("restarts") or 0),
                "crash_loop": waiting == "CrashLoopBackOff",
                "waiting": waiting,
                "message": p.get("message") or "",
                "warm_until": warm.get("until") if warm.get("track") == d.get("track") else None,
            })
    return out


def split_of(cfg: Config, picture: Mapping[str, Any]) -> Split:
    """The traffic as the agent's ``Split`` (the dashboard reads the weights per release from it)."""
    rs = routes(cfg, picture)
    if not rs:
        return Split()
    stable = rs[-1]
    canary = rs[0] if len(rs) > 1 else None
    return Split(
        stable=Side(stable["release"], tuple(stable["targets"])),
        canary=Side(canary["release"], tuple(canary["targets"])) if canary else None,
        canary_weight=canary["weight"] if canary else 0,
        sticky=False,
    )


def _local_deployment(dep: Any, picture: Mapping[str, Any]) -> dict:
    """This agent's deployment in progress (a store row), with the cluster's canary or watch figures."""
    data = dep.data or {}
    out = {
        "id": dep.id, "release": dep.release, "strategy": dep.strategy, "from_release": dep.from_release,
        "state": dep.state, "step": dep.step, "phase": data.get("phase"), "started_at": dep.started_at,
        "finished_at": dep.finished_at, "outcome": dep.outcome, "reason": dep.reason, "seconds": data.get("seconds"),
        "holder": None,
    }
    remote = picture.get("deployment") or {}
    if remote:
        out.update(holder=remote.get("holder"), stage=remote.get("stage"), cluster_id=remote.get("id"))
    for key in ("canary", "watch"):
        if picture.get(key):
            out[key] = picture[key]
    return out


def _remote_deployment(remote: Mapping[str, Any], lock: Mapping[str, Any] | None) -> dict:
    """A deployment in progress that another machine runs (the cluster's record of it)."""
    kind = remote.get("kind") or "deploy"
    return {
        "id": None, "cluster_id": remote.get("id"), "release": remote.get("release"),
        "strategy": "rollback" if kind == "rollback" else remote.get("strategy"), "from_release": remote.get("from"),
        "state": "progressing", "phase": remote.get("phase"), "stage": remote.get("stage"),
        "started_at": remote.get("started"), "holder": remote.get("holder"), "remote": True,
        "lock_expired": bool(lock and lock.get("expired")),
    }


def status_json(cfg: Config, picture: Mapping[str, Any] | None, *, agent: dict, dashboard: str | None,
                local: Any = None, error: str | None = None, now: float) -> dict:
    """``GET /status`` for the kubernetes runtime. ``picture``: the driver's (None when the cluster did not
    answer: ``error`` says why); ``local``: this agent's deployment in progress (a store row) or None."""
    k = cfg.kubernetes
    assert k is not None
    p = picture or {}
    via = f"gateway {k.gateway.namespace or k.namespace}/{k.gateway.name}" if k.gateway else "service"
    remote = p.get("deployment")
    if local is not None:
        dep = _local_deployment(local, p)
    elif remote:
        dep = _remote_deployment(remote, p.get("lock"))
    else:
        dep = None
    return {
        "app": cfg.app,
        "runtime": "kubernetes",
        "listen": listen_of(cfg),
        "agent": agent,
        "router": {"type": "kubernetes", "mode": via, "detail": {"service": cfg.app, "service_port": k.service_port}},
        "dashboard": dashboard,
        "cluster": {
            "context": p.get("context"), "server": p.get("server"), "namespace": k.namespace,
            "reachable": picture is not None, "error": error,
        },
        "live_release": p.get("live"),
        "strategy": p.get("strategy"),
        "routes": routes(cfg, p) if picture else [],
        "instances": instances(cfg, p, now) if picture else [],
        "deployments": [{k_: v for k_, v in d.items() if k_ != "pods"} for d in p.get("deployments") or []],
        "service": p.get("service"),
        "route": p.get("route"),
        "warm": p.get("warm"),
        "lock": p.get("lock"),
        "deployment": dep,
    }


def history_json(state: Any, limit: int = 50) -> dict:
    """``GET /history`` from the cluster's shared state (a ``state.ClusterState``): the same for every machine."""
    live = state.live
    releases = [
        {"id": r["id"], "version": r.get("version") or r["id"], "created_at": r.get("created"), "status": r.get("status", "ok"),
         "live": r["id"] == live, "image": r.get("image"), "digest": r.get("digest")}
        for r in reversed(state.releases)
    ]
    deps = []
    running = state.deployment
    rows = ([running] if running else []) + list(reversed(state.deployments))
    for d in rows[: max(0, limit)]:
        kind = d.get("kind") or "deploy"
        finished, started = d.get("finished"), d.get("started")
        deps.append({
            "id": d.get("id"), "release": d.get("release"), "strategy": "rollback" if kind == "rollback" else d.get("strategy"),
            "from_release": d.get("from"), "state": d.get("outcome") or "progressing", "step": None,
            "phase": d.get("phase"), "started_at": started, "finished_at": finished, "outcome": d.get("outcome"),
            "reason": d.get("reason"), "seconds": round(finished - started, 3) if finished and started else None,
            "holder": d.get("holder"),
        })
    return {"releases": releases, "deployments": deps, "source": "cluster"}
