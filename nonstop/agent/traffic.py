"""Who gets traffic: the agent's picture of the split, and the one place that changes it.

``Split`` is a pure value (stable release, optional canary with a weight and
match rules); ``Traffic`` applies a new split through the router under a
lock and remembers it in the store, so a restarted agent knows what the
router serves without asking.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field, replace

from nonstop.agent.routers.base import Release, Router, RouteTable, SplitKey, Target
from nonstop.agent.store import Store

META_KEY = "traffic"


@dataclass(frozen=True)
class Side:
    release: str
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """Desired traffic: ``stable`` takes what the canary does not."""

    stable: Side | None = None
    canary: Side | None = None
    canary_weight: int = 0
    match_headers: tuple[tuple[str, str], ...] = ()
    match_cookies: tuple[tuple[str, str], ...] = ()
    sticky: bool | str = True
    split_key: tuple[str, str] | None = None

    def table(self) -> RouteTable:
        """The route table this split means (revision 0: the next one); the canary is listed first, so
        raising its weight only adds buckets."""
        rels: list[Release] = []
        has_match = bool(self.match_headers or self.match_cookies)
        if self.canary and self.canary.addrs and (self.canary_weight > 0 or has_match):
            w = self.canary_weight if self.stable and self.stable.addrs else 100
            rels.append(
                Release(
                    name=self.canary.release,
                    weight=w,
                    targets=tuple(Target(a) for a in self.canary.addrs),
                    match_headers=tuple((n.lower(), v) for n, v in self.match_headers),
                    match_cookies=self.match_cookies,
                )
            )
        if self.stable and self.stable.addrs:
            used = sum(r.weight for r in rels)
            rels.append(
                Release(name=self.stable.release, weight=100 - used, targets=tuple(Target(a) for a in self.stable.addrs))
            )
        key = SplitKey(self.split_key[0], self.split_key[1].lower() if self.split_key[0] == "header" else self.split_key[1]) \
            if self.split_key else None
        return RouteTable(revision=0, sticky=self.sticky, releases=tuple(rels), split_key=key)

    @property
    def routed_addrs(self) -> set[str]:
        return self.table().addrs

    def without_addr(self, addr: str) -> "Split":
        def drop(side: Side | None) -> Side | None:
            return side and Side(side.release, tuple(a for a in side.addrs if a != addr))

        return replace(self, stable=drop(self.stable), canary=drop(self.canary))

    def with_addr(self, release: str, addr: str) -> "Split":
        def add(side: Side | None) -> Side | None:
            if side and side.release == release and addr not in side.addrs:
                return Side(side.release, tuple(sorted((*side.addrs, addr))))
            return side

        return replace(self, stable=add(self.stable), canary=add(self.canary))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict | None) -> "Split":
        if not d:
            return cls()

        def side(x: dict | None) -> Side | None:
            return Side(x["release"], tuple(x["addrs"])) if x else None

        return cls(
            stable=side(d.get("stable")),
            canary=side(d.get("canary")),
            canary_weight=int(d.get("canary_weight", 0)),
            match_headers=tuple(tuple(p) for p in d.get("match_headers", ())),
            match_cookies=tuple(tuple(p) for p in d.get("match_cookies", ())),
            sticky=d["sticky"] if d.get("sticky") == "client_ip" else bool(d.get("sticky", True)),
            split_key=tuple(d["split_key"]) if d.get("split_key") else None,
        )


@dataclass
class Traffic:
    """Owns the live split: applies changes through the router, one at a time, and records them."""

    router: Router
    store: Store
    split: Split = field(default_factory=Split)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def load(self) -> None:
        self.split = Split.from_json(self.store.get_meta(META_KEY))

    async def set(self, split: Split) -> None:
        async with self._lock:
            await self.router.apply(split.table())  # raises RouterError and changes nothing
            self.split = split
            self.store.set_meta(META_KEY, split.to_json())

    async def reapply(self) -> None:
        """Push the remembered split again (after a router restart)."""
        await self.set(self.split)

    @property
    def live_release(self) -> str | None:
        return self.split.stable.release if self.split.stable else None
