"""Runtimes: how instances run (``run.runtime``), side by side behind ``base.Runtime``.

``process`` (``process.py``) runs a command per instance; ``docker`` and
``podman`` (``container.py``) a container per instance. The fleet is the only
user; strategies never see which one runs.
"""

from __future__ import annotations

from nonstop.agent.runtimes.base import Found, Handle, ImageInfo, InstanceSpec, Runtime, StopResult
from nonstop.config import Config

__all__ = ["Found", "Handle", "ImageInfo", "InstanceSpec", "Runtime", "StopResult", "make_runtime"]


def make_runtime(cfg: Config) -> Runtime:
    """The runtime ``run.runtime`` names (containers' modules are imported only when used)."""
    kind = cfg.run.runtime
    if kind == "process":
        from nonstop.agent.runtimes.process import ProcessRuntime

        return ProcessRuntime()
    if kind in ("docker", "podman"):
        from nonstop.agent.runtimes.container import ContainerRuntime

        return ContainerRuntime(kind, app=cfg.app, state_dir=cfg.state_path)
    raise ValueError(f"runtime {kind!r} runs no instances on this host")  # kubernetes: the cluster runs them
