"""The Router interface: the only way the agent moves traffic.

A ``Routing`` is the agent's desired traffic picture (releases, weights,
targets, match rules). Each router turns it into its own means: the embedded
proxy's route table, an nginx upstream file + reload, HAProxy runtime-API
commands. Stats come back in one shape (``StatsSnapshot``, the embedded
proxy's ``GET /stats`` form) so analysis never cares which router runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from nonstop.errors import RouterError

__all__ = ["Target", "ReleaseRoute", "Routing", "Router", "StatsSnapshot", "RouterError", "empty_stats"]

StatsSnapshot = dict[str, Any]
"""``{"releases": {name: S}, "targets": {addr: S}}``; S as in docs/internals.md
(``requests``, ``by_class``, ``proxy_errors``, ``in_flight``, ``latency`` histogram,
``p50``/``p90``/``p99``). Counters are cumulative; analysis differences two snapshots."""


def empty_stats() -> StatsSnapshot:
    return {"releases": {}, "targets": {}}


@dataclass(frozen=True)
class Target:
    addr: str  # "127.0.0.1:8081"
    draining: bool = False

    @property
    def host(self) -> str:
        return self.addr.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.addr.rpartition(":")[2])


@dataclass(frozen=True)
class ReleaseRoute:
    name: str
    weight: int
    targets: tuple[Target, ...]
    match_headers: tuple[tuple[str, str], ...] = ()
    match_cookies: tuple[tuple[str, str], ...] = ()

    @property
    def live_targets(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if not t.draining)


@dataclass(frozen=True)
class Routing:
    """Desired traffic. Releases in split order: the canary first (see docs/internals.md, buckets)."""

    releases: tuple[ReleaseRoute, ...] = ()
    sticky: bool | str = True  # True (bucket cookie, else random + cookie), "client_ip", False (random per request)
    split_key: tuple[str, str] | None = None  # ("cookie" | "header", name): the app's own user key

    def to_table(self) -> dict:
        """The embedded proxy's route-table JSON (without revision)."""
        out = []
        for r in self.releases:
            rel: dict[str, Any] = {
                "name": r.name,
                "weight": r.weight,
                "targets": [{"addr": t.addr, "draining": t.draining} for t in r.targets],
            }
            if r.match_headers or r.match_cookies:
                rel["match"] = {"headers": dict(r.match_headers), "cookies": dict(r.match_cookies)}
            out.append(rel)
        table: dict[str, Any] = {"sticky": self.sticky, "releases": out}
        if self.split_key is not None:
            table["split_key"] = {self.split_key[0]: self.split_key[1]}
        return table

    @classmethod
    def from_table(cls, table: dict) -> "Routing":
        rels = []
        for r in table.get("releases", []):
            m = r.get("match") or {}
            rels.append(
                ReleaseRoute(
                    name=r["name"],
                    weight=int(r.get("weight", 0)),
                    targets=tuple(Target(t["addr"], bool(t.get("draining", False))) for t in r.get("targets", [])),
                    match_headers=tuple(sorted((m.get("headers") or {}).items())),
                    match_cookies=tuple(sorted((m.get("cookies") or {}).items())),
                )
            )
        sticky = table.get("sticky", True)
        key = table.get("split_key") or None
        return cls(
            releases=tuple(rels),
            sticky=sticky if sticky == "client_ip" else bool(sticky),
            split_key=next(iter(key.items())) if key else None,
        )

    @property
    def addrs(self) -> set[str]:
        return {t.addr for r in self.releases for t in r.targets}

    def weight_of(self, release: str) -> int:
        return next((r.weight for r in self.releases if r.name == release), 0)


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
    async def apply(self, routing: Routing) -> None:
        """Make ``routing`` the live traffic picture, atomically."""

    @abstractmethod
    async def drain(self, addrs: list[str], timeout: float) -> bool:
        """Wait until no request is in flight to ``addrs`` (already out of the routing). True when drained in time."""

    @abstractmethod
    async def stats(self) -> StatsSnapshot:
        """Cumulative per-release and per-target stats."""

    @abstractmethod
    async def current(self) -> Routing | None:
        """The routing the router serves now, when it can tell (None when unknown)."""

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
