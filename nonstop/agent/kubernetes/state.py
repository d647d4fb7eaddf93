"""The state several machines share, kept in the cluster: the ConfigMap ``<app>-nonstop``.

A cluster is deployed to from CI jobs and from operators' laptops, so what
they must agree on lives beside the app, not only in one machine's SQLite:

- release history: id, version, image, digest (when known), created, status
  (``ok`` / ``bad``: rolled back as bad, skipped by ``rollback``);
- the settled shape (which track runs which release, where traffic goes),
  the live release and the warm side (``warm``: track, release, until);
- the deployment in progress (strategy, phase, stage, started, holder, the
  rollout position), so a deploy from another machine can resume or roll
  back one whose runner died;
- the last deployments with their outcome (bounded).

``ClusterState`` is a pure value with pure edits; ``read`` / ``write`` /
``update`` are the I/O, with optimistic concurrency: a write names the
``resourceVersion`` it read, and a 409 (someone wrote in between) makes
``update`` read again and redo its edit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes.errors import Conflict
from nonstop.agent.kubernetes.shapes import KRelease, Shape
from nonstop.config import Config

__all__ = ["KEEP_DEPLOYMENTS", "ClusterState", "read", "write", "update", "decode", "encode"]

KEEP_DEPLOYMENTS = 50
SCHEMA = 1


@dataclass(frozen=True)
class ClusterState:
    """Everything nonstop keeps in the cluster about one app (the content of ``state.json``)."""

    releases: tuple[dict, ...] = ()  # oldest first: {id, version, image, digest, created, status}
    shape: dict | None = None  # the settled Shape (to_json)
    warm: dict | None = None  # {track, release, until}: the previous side kept for an instant rollback
    deployment: dict | None = None  # in progress: {id, release, strategy, phase, started, holder, position, …}
    deployments: tuple[dict, ...] = ()  # finished, oldest first: {id, release, strategy, from, outcome, reason, started, finished}
    next_id: int = 1

    # -- reading ------------------------------------------------------------------------
    @property
    def live(self) -> str | None:
        s = self.settled
        return s.live_release().id if s is not None else None

    @property
    def settled(self) -> Shape | None:
        return Shape.from_json(self.shape) if self.shape else None

    def release(self, rid: str) -> KRelease | None:
        r = next((r for r in self.releases if r["id"] == rid), None)
        return KRelease.from_json(r) if r else None

    def status_of(self, rid: str) -> str | None:
        r = next((r for r in self.releases if r["id"] == rid), None)
        return r.get("status") if r else None

    def release_id(self, version: str, image: str) -> str:
        """The id a deploy of ``version`` gets: the same id when that version ran this image before, else
        the version, or ``version-2``, ``-3``… when the version already names another image."""
        taken = {r["id"]: r for r in self.releases}
        if version in taken and taken[version]["image"] == image:
            return version
        if version not in taken:
            return version
        n = 2
        while f"{version}-{n}" in taken and taken[f"{version}-{n}"]["image"] != image:
            n += 1
        return f"{version}-{n}"

    def previous_good(self) -> KRelease | None:
        """The release ``rollback`` without ``--to`` goes to: the newest ``ok`` one that is not live."""
        live = self.live
        for r in reversed(self.releases):
            if r["id"] != live and r.get("status", "ok") == "ok":
                return KRelease.from_json(r)
        return None

    # -- edits (pure: a new value) ------------------------------------------------------
    def with_release(self, rel: KRelease) -> "ClusterState":
        others = tuple(r for r in self.releases if r["id"] != rel.id)
        old = next((r for r in self.releases if r["id"] == rel.id), None)
        rec = {**rel.to_json(), "status": (old or {}).get("status", "ok")}
        return replace(self, releases=others + (rec,))

    def mark(self, rid: str, status: str) -> "ClusterState":
        assert status in ("ok", "bad")
        return replace(self, releases=tuple({**r, "status": status} if r["id"] == rid else r for r in self.releases))

    def pruned(self, keep: int) -> "ClusterState":
        """At most ``keep`` releases, never the live one, the warm one, or the one in progress."""
        protect = {self.live, (self.warm or {}).get("release"), (self.deployment or {}).get("release")}
        out = list(self.releases)
        while len(out) > keep:
            victim = next((r for r in out if r["id"] not in protect), None)
            if victim is None:
                break
            out.remove(victim)
        return replace(self, releases=tuple(out))

    def begin(self, dep: dict) -> tuple["ClusterState", int]:
        did = self.next_id
        return replace(self, deployment={**dep, "id": did}, next_id=did + 1), did

    def progress(self, **fields: Any) -> "ClusterState":
        assert self.deployment is not None
        return replace(self, deployment={**self.deployment, **fields})

    def finish(self, *, outcome: str, reason: str, finished: float, shape: Shape | None, warm: dict | None) -> "ClusterState":
        dep = self.deployment or {}
        rec = {
            "id": dep.get("id"),
            "release": dep.get("release"),
            "strategy": dep.get("strategy"),
            "from": dep.get("from"),
            "kind": dep.get("kind", "deploy"),
            "holder": dep.get("holder"),
            "outcome": outcome,
            "reason": reason,
            "started": dep.get("started"),
            "finished": finished,
        }
        return replace(
            self,
            deployment=None,
            deployments=(self.deployments + (rec,))[-KEEP_DEPLOYMENTS:],
            shape=shape.to_json() if shape is not None else self.shape,
            warm=warm,
        )

    def settle(self, shape: Shape, warm: dict | None) -> "ClusterState":
        return replace(self, shape=shape.to_json(), warm=warm)


def encode(state: ClusterState) -> str:
    d = asdict(state)
    d["schema"] = SCHEMA
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def decode(text: str | None) -> ClusterState:
    if not text:
        return ClusterState()
    d = json.loads(text)
    d.pop("schema", None)
    known = {k: d[k] for k in ClusterState.__dataclass_fields__ if k in d}
    for k in ("releases", "deployments"):
        if k in known:
            known[k] = tuple(known[k])
    return ClusterState(**known)


def read(client: Any, cfg: Config) -> tuple[ClusterState, str | None]:
    """The state and the resourceVersion it was read at (None: no ConfigMap yet)."""
    obj = client.get("ConfigMap", mf.state_name(cfg))
    if obj is None:
        return ClusterState(), None
    client.check_owned(obj)
    return decode((obj.get("data") or {}).get("state.json")), (obj.get("metadata") or {}).get("resourceVersion")


def write(client: Any, cfg: Config, state: ClusterState, resource_version: str | None) -> str | None:
    """Write ``state`` if nobody wrote since ``resource_version`` was read; ``Conflict`` otherwise."""
    body = mf.state_configmap(cfg, encode(state), resource_version=resource_version)
    out = client.create(body) if resource_version is None else client.replace(body)
    return (out.get("metadata") or {}).get("resourceVersion")


def update(client: Any, cfg: Config, edit: Callable[[ClusterState], ClusterState], attempts: int = 5) -> ClusterState:
    """Read, edit, write; on a lost race read again and redo the edit (``edit`` must be pure)."""
    last: Conflict | None = None
    for _ in range(attempts):
        state, rv = read(client, cfg)
        new = edit(state)
        try:
            write(client, cfg, new, rv)
            return new
        except Conflict as e:
            last = e
    assert last is not None
    raise last

