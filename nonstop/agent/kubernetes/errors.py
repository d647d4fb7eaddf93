"""The errors of the kubernetes runtime: what the cluster said, translated into nonstop's own.

Only ``client.py`` (the one boundary with the cluster) raises the cluster's
errors; the exit code each carries is read by the CLI alone.
"""

from __future__ import annotations

from nonstop.errors import AgentUnreachable, DeploymentFailed, NonstopError, UsageError

__all__ = [
    "ClusterError",
    "ClusterUnreachable",
    "ClusterForbidden",
    "ClusterRejected",
    "NotOwned",
    "Conflict",
    "RolloutFailed",
]


class ClusterError(NonstopError):
    """The Kubernetes API answered with an error nonstop has no better word for."""


class ClusterUnreachable(AgentUnreachable):
    """The cluster's API server cannot be reached, or refused the credentials (exit 3); names context and server."""


class ClusterForbidden(NonstopError):
    """The credentials may not do this (HTTP 403); names the verb, the resource and the namespace (exit 2:
    the Role must be fixed before any deploy can work)."""

    exit_code = 2


class ClusterRejected(UsageError):
    """The API server refused an object as invalid (HTTP 422); the message names the field it objected to."""


class NotOwned(UsageError):
    """An object nonstop would change exists but is not labelled as nonstop's; nothing was changed."""


class Conflict(ClusterError):
    """An optimistic write lost a race (HTTP 409: the resourceVersion moved, or the name exists)."""


class RolloutFailed(DeploymentFailed):
    """A rollout failed or stalled; traffic stayed on, or went back to, the previous release (exit 1)."""
