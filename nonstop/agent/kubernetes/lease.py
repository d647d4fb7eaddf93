"""The deploy lock of a cluster: a ``coordination.k8s.io/v1`` Lease ``<app>-nonstop-lock``.

One deployment at a time per app, whichever machine runs it. The holder's
identity is ``user@host:pid``; the annotations say which release and
strategy it deploys and since when. The holder renews the Lease every third
of ``kubernetes.lease_duration``; a Lease not renewed within its duration
has expired (its holder died: a CI job killed mid-rollout) and the next
``nonstop`` may take it over and resume or roll back what it left. A holder
known dead sooner is one of this very machine (same user, host name and
boot id, recorded in an annotation) whose process no longer runs: an agent
killed and started again on one machine takes over at once instead of
waiting out the duration.

Taking and renewing use optimistic concurrency: a replace names the
resourceVersion read, so of two machines racing for a free Lease exactly
one wins; the other gets ``DeploymentInProgress`` (exit 4) naming the winner.
``verdict`` is the pure part.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes.errors import Conflict
from nonstop.agent.kubernetes.observe import parse_time
from nonstop.config import Config
from nonstop.errors import DeploymentInProgress, NonstopError

__all__ = ["LeaseInfo", "LeaseLost", "holder_identity", "boot_id", "dead_here", "parse", "verdict", "acquire", "renew", "release", "in_progress"]

ANN_RELEASE = "nonstop.dev/release"
ANN_STRATEGY = "nonstop.dev/strategy"
ANN_STARTED = "nonstop.dev/started"
ANN_BOOT = "nonstop.dev/boot-id"  # the holder machine's boot id: its pid means something only there


class LeaseLost(NonstopError):
    """Our Lease was taken over (we did not renew it in time) or could not be renewed."""


@dataclass(frozen=True)
class LeaseInfo:
    """The Lease as read: who holds it, for which release, since when, last renewed."""

    holder: str | None
    release: str | None = None
    strategy: str | None = None
    started: float | None = None
    renewed: float | None = None
    duration: float = 60.0
    transitions: int = 0
    resource_version: str | None = None
    boot: str | None = None

    def expired(self, now: float) -> bool:
        return self.holder is None or self.renewed is None or now > self.renewed + self.duration


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (a container's random uid)
        return str(os.getuid())


def holder_identity() -> str:
    return f"{_user()}@{socket.gethostname()}:{os.getpid()}"


def boot_id() -> str | None:
    """This machine's boot id (Linux), which tells a pid of this boot from one of another machine or boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def dead_here(info: LeaseInfo, me: str) -> bool:
    """True when the Lease's holder was a process of this machine, this boot and this user that is gone."""
    if not info.holder or info.boot is None or info.boot != boot_id():
        return False
    who, _, pid = info.holder.rpartition(":")
    if who != me.rpartition(":")[0] or not pid.isdigit():
        return False
    import psutil

    try:
        return psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def parse(obj: dict[str, Any] | None) -> LeaseInfo | None:
    if obj is None:
        return None
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    return LeaseInfo(
        holder=spec.get("holderIdentity") or None,
        release=ann.get(ANN_RELEASE),
        strategy=ann.get(ANN_STRATEGY),
        started=parse_time(ann.get(ANN_STARTED)) or parse_time(spec.get("acquireTime")),
        renewed=parse_time(spec.get("renewTime")),
        duration=float(spec.get("leaseDurationSeconds") or 60),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=meta.get("resourceVersion"),
        boot=ann.get(ANN_BOOT),
    )


def verdict(info: LeaseInfo | None, me: str, now: float) -> str:
    """``absent`` (no Lease yet), ``free`` (released), ``mine``, ``expired`` (holder gone), or ``held``."""
    if info is None:
        return "absent"
    if info.holder is None:
        return "free"
    if info.holder == me:
        return "mine"
    return "expired" if info.expired(now) else "held"


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "?"


def in_progress(cfg: Config, info: LeaseInfo, step: str | None = None) -> DeploymentInProgress:
    """Exit 4, naming the deployment that holds the Lease."""
    k = cfg.kubernetes
    where = f"Lease {k.namespace if k else 'default'}/{mf.lease_name(cfg)}"
    msg = (
        f"another deployment is in progress: release {info.release or '?'} ({info.strategy or '?'}), "
        f"started {_when(info.started)} by {info.holder}" + (f", at {step}" if step else "") + f" ({where})"
    )
    return DeploymentInProgress(
        msg,
        detail={
            "holder": info.holder, "release": info.release, "strategy": info.strategy,
            "started": info.started, "step": step, "lease": where,
        },
    )


def _body(cfg: Config, info: LeaseInfo) -> dict:
    ann = {}
    if info.release:
        ann[ANN_RELEASE] = info.release
    if info.strategy:
        ann[ANN_STRATEGY] = info.strategy
    if info.started:
        ann[ANN_STARTED] = mf.microtime(info.started)
    if info.holder and info.boot:
        ann[ANN_BOOT] = info.boot
    return mf.lease(
        cfg, holder=info.holder, duration=info.duration, acquired=info.started if info.holder else None,
        renewed=info.renewed if info.holder else None, transitions=info.transitions, annotations=ann,
        resource_version=info.resource_version,
    )


def _rv(obj: dict) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def acquire(client: Any, cfg: Config, me: str, *, release: str, strategy: str, now: float, step: str | None = None) -> tuple[LeaseInfo, LeaseInfo | None]:
    """Take the Lease for ``release``; returns (ours, the expired one taken over or None).
    ``DeploymentInProgress`` when another live holder has it (or won the race for it)."""
    assert cfg.kubernetes is not None
    duration = cfg.kubernetes.lease_duration
    for _ in range(3):
        obj = client.get("Lease", mf.lease_name(cfg))
        if obj is not None:
            client.check_owned(obj)
        cur = parse(obj)
        v = verdict(cur, me, now)
        if v == "held" and cur is not None and dead_here(cur, me):
            v = "expired"  # its process is gone from this machine: no need to wait out the duration
        if v == "held":
            assert cur is not None
            raise in_progress(cfg, cur, step)
        ours = LeaseInfo(me, release, strategy, now, now, duration, (cur.transitions + (v != "mine")) if cur else 0, boot=boot_id())
        try:
            if cur is None:
                out = client.create(_body(cfg, ours))
            else:
                out = client.replace(_body(cfg, replace(ours, resource_version=cur.resource_version)))
        except Conflict:
            continue  # someone wrote in between: read again, and name them if they hold it now
        return replace(ours, resource_version=_rv(out)), (cur if v == "expired" else None)
    obj = client.get("Lease", mf.lease_name(cfg))
    cur = parse(obj)
    if cur is not None and cur.holder not in (None, me):
        raise in_progress(cfg, cur, step)
    raise LeaseLost("could not take the deploy Lease: it kept changing under us")


def renew(client: Any, cfg: Config, ours: LeaseInfo, now: float) -> LeaseInfo:
    new = replace(ours, renewed=now)
    try:
        out = client.replace(_body(cfg, new))
    except Conflict:
        cur = parse(client.get("Lease", mf.lease_name(cfg)))
        if cur is None or cur.holder != ours.holder:
            raise LeaseLost(f"the deploy Lease was taken over by {cur.holder if cur else 'nobody (deleted)'}") from None
        out = client.replace(_body(cfg, replace(new, resource_version=cur.resource_version)))
    return replace(new, resource_version=_rv(out))


def release(client: Any, cfg: Config, ours: LeaseInfo) -> None:
    """Give the Lease up (holder cleared); a Lease someone else took is left alone."""
    free = LeaseInfo(None, duration=ours.duration, transitions=ours.transitions, resource_version=ours.resource_version)
    try:
        client.replace(_body(cfg, free))
    except Conflict:
        cur = parse(client.get("Lease", mf.lease_name(cfg)))
        if cur is not None and cur.holder == ours.holder:
            client.replace(_body(cfg, replace(free, resource_version=cur.resource_version)))
