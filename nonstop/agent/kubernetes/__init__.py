"""The kubernetes runtime: nonstop's strategies driving Deployments, Services and HTTPRoutes in a cluster.

Pure parts: ``shapes`` (what the cluster should look like), ``manifests``
(the objects of a shape), ``observe`` (reading and judging a Deployment's
status), ``rollout`` (plans and the ``advance`` reconciler), ``state`` and
``lease`` (the shared state and the deploy lock, with their small I/O).
I/O: ``client`` (the official ``kubernetes`` client, imported only when
connecting), ``prometheus`` (analysis figures), ``runner`` / ``canary_run``
/ ``watch`` (performing plans), ``driver`` (the seam the agent uses).
"""

from nonstop.agent.kubernetes.driver import KubernetesDriver, Outcome
from nonstop.agent.kubernetes.errors import (
    ClusterError,
    ClusterForbidden,
    ClusterRejected,
    ClusterUnreachable,
    Conflict,
    NotOwned,
    RolloutFailed,
)
from nonstop.agent.kubernetes.manifests import render, to_yaml
from nonstop.agent.kubernetes.runner import Callbacks, Clock, RealClock
from nonstop.agent.kubernetes.shapes import KRelease, Shape, Track, first_deploy_shape, image_for

__all__ = [
    "KubernetesDriver",
    "Outcome",
    "Callbacks",
    "Clock",
    "RealClock",
    "KRelease",
    "Shape",
    "Track",
    "first_deploy_shape",
    "image_for",
    "render",
    "to_yaml",
    "connect",
    "ClusterError",
    "ClusterForbidden",
    "ClusterRejected",
    "ClusterUnreachable",
    "Conflict",
    "NotOwned",
    "RolloutFailed",
]


def connect(cfg):  # noqa: ANN001, ANN201 - re-exported lazily: client imports nothing slow until called
    """A ``KubeClient`` for ``cfg.kubernetes`` (see ``client.connect``)."""
    from nonstop.agent.kubernetes.client import connect as _connect

    return _connect(cfg)
