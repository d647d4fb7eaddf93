"""Routers: how the agent moves traffic (embedded proxy, nginx, HAProxy), chosen by ``router.type``."""

from __future__ import annotations

from pathlib import Path

from nonstop.agent.routers.base import Release, Router, RouteTable, StatsSnapshot, Target
from nonstop.config import Config

__all__ = ["make_router", "Router", "RouteTable", "Release", "Target", "StatsSnapshot"]


def make_router(cfg: Config, state_dir: Path) -> Router:
    """The router ``cfg.router.type`` names (imports lazily: nginx users never load the proxy client)."""
    kind = cfg.router.type
    if kind == "embedded":
        from nonstop.agent.routers.embedded import EmbeddedRouter

        return EmbeddedRouter(cfg, state_dir)
    if kind == "nginx":
        from nonstop.agent.routers.nginx import NginxRouter

        return NginxRouter(cfg, state_dir)
    if kind == "haproxy":
        from nonstop.agent.routers.haproxy import HaproxyRouter

        return HaproxyRouter(cfg, state_dir)
    raise ValueError(f"unknown router type {kind!r}")  # config validation makes this unreachable
