"""The Router interface: the only way the agent moves traffic.

The desired traffic picture is a ``RouteTable`` (``nonstop.proxy.routes``: the
one model of it, releases with weights, targets and match rules). Each router
turns it into its own means: the embedded proxy's admin API, an nginx
upstream file + reload, HAProxy runtime-API commands. Stats come back in one
shape (``StatsSnapshot``, the embedded proxy's ``GET /stats`` form) so
analysis never cares which router runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from nonstop.errors import RouterError
from nonstop.proxy.routes import Release, RouteTable, SplitKey, Target

__all__ = ["Release", "RouteTable", "Router", "RouterInfo", "SplitKey", "StatsSnapshot", "RouterError", "Target", "empty_stats"]

StatsSnapshot = dict[str, Any]
"""``{"releases": {name: S}, "targets": {addr: S}}``; S as in docs/internals.md
(``requests``, ``by_class``, ``proxy_errors``, ``in_flight``, ``latency`` histogram,
``p50``/``p90``/``p99``). Counters are cumulative; analysis differences two snapshots."""


def empty_stats() -> StatsSnapshot:
    return {"releases": {}, "targets": {}}


@dataclass
class RouterInfo:
    """What ``status`` shows about the router."""

    type: str
    mode: str = "managed"
    detail: dict[str, Any] = field(default_factory=dict)


class Router(ABC):
    """Moves traffic for one app. Implementations: embedded, nginx, haproxy.

    Every method is safe to call again after a failure; ``apply`` is atomic:
    it raises ``RouterError`` and leaves the running routing untouched when it
    cannot apply the new one.
    """

    type: str = "?"
    capabilities: frozenset[str] = frozenset()

    @abstractmethod
    async def start(self) -> None:
        """Managed mode: start (or re-adopt) the server. External: check it answers."""

    @abstractmethod
    async def stop(self) -> None:
        """Managed mode: stop the server gracefully. External: nothing."""

    @abstractmethod
    async def apply(self, table: RouteTable) -> None:
        """Make ``table`` the live traffic picture, atomically (its revision is the router's business)."""

    @abstractmethod
    async def drain(self, addrs: list[str], timeout: float) -> bool:
        """Wait until no request is in flight to ``addrs`` (already out of the routing). True when drained in time."""

    @abstractmethod
    async def stats(self) -> StatsSnapshot:
        """Cumulative per-release and per-target stats."""

    @abstractmethod
    async def current(self) -> RouteTable | None:
        """The table the router serves now, when it can tell (None when unknown)."""

    def quickly_dead(self) -> bool:
        """True when the router's server is known to be gone without asking it (checked often; False: unknown)."""
        return False

    async def alive(self) -> bool:
        """True when the router's server answers (used by supervision)."""
        try:
            await self.current()
            return True
        except RouterError:
            return False

    def info(self) -> RouterInfo:
        return RouterInfo(type=self.type)
