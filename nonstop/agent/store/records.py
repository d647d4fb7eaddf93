"""What the store hands out: one dataclass per row kind (releases, deployments, events, instances), and the
rule a release's name must follow (it becomes a folder name)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nonstop.agent.lifecycle import DEPLOYMENT_FINISHED
from nonstop.errors import UsageError

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
RELEASE_STATUSES = frozenset({"ok", "bad"})


def validate_version(version: str) -> str:
    """Return ``version`` if it is a safe release name (it becomes a folder name), else raise ``UsageError``."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise UsageError(
            f"invalid version {version!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            detail={"field": "version"},
        )
    return version


@dataclass
class Release:
    """One stored release: an immutable artifact copy (or none, for command-only apps)."""

    id: str
    version: str
    artifact: str | None
    created_at: float
    status: str = "ok"  # 'ok' | 'bad' (rolled back as bad: `rollback` skips it)
    build_log: str | None = None  # path of the build log, when a build ran
    digest: str | None = None  # "sha256:…" of the artifact (a file, or a folder's files); None: no artifact


@dataclass
class Deployment:
    """One deployment: which release, how, where it got to and how it ended."""

    id: int
    release: str
    strategy: str
    from_release: str | None
    state: str
    step: int
    started_at: float
    finished_at: float | None = None
    outcome: str | None = None
    reason: str | None = None
    data: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in DEPLOYMENT_FINISHED


@dataclass
class Event:
    """One line of a deployment's (or the agent's) timeline."""

    id: int
    deployment_id: int | None
    ts: float
    type: str
    message: str
    data: dict = field(default_factory=dict)


@dataclass
class InstanceRecord:
    """What the agent must remember of a running instance to re-adopt it after a restart."""

    id: str
    release: str
    port: int
    pid: int | None
    pid_create_time: float | None
    state: str
    started_at: float
    slot: str | None = None  # "blue"/"green", "canary"/"stable", … as the strategy names it
    restarts: int = 0
    data: dict = field(default_factory=dict)
