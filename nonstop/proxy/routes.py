"""The route table: who gets traffic — the one model of it, shared by the agent and the proxy.

The agent builds a ``RouteTable`` (``agent/traffic.py``), every router turns
the same one into its own means (the embedded proxy's admin API, an nginx
include, HAProxy maps), and the proxy compiles it for its hot path
(``state.py``). Plain frozen dataclasses, JSON in and out (docs/internals.md,
"Route table"), validation that names the field. No I/O here except
:func:`save` / :func:`load`, which do the atomic file write and the restore on
start. The agent may import this module; it imports nothing of the agent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from nonstop.errors import ProxyError
from nonstop.files import write_atomic


class InvalidRoutes(ProxyError):
    """A route table failed validation; ``field`` names the offending entry."""

    def __init__(self, field_: str, message: str) -> None:
        super().__init__(f"{field_}: {message}", detail={"field": field_})
        self.field = field_


class StaleRevision(ProxyError):
    """A table was offered with a revision not above the current one."""


def parse_addr(addr: str) -> tuple[str, int]:
    """``"127.0.0.1:8081"`` → ``("127.0.0.1", 8081)``; ``"[::1]:80"`` too. Raises ValueError."""
    if not isinstance(addr, str) or ":" not in addr:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    host, _, port_s = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"expected HOST:PORT with a port in 1..65535, got {addr!r}")
    return host, int(port_s)


@dataclass(frozen=True)
class Target:
    """One upstream address and whether it takes new requests."""

    addr: str
    draining: bool = False

    @property
    def host(self) -> str:
        return self.addr.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.addr.rpartition(":")[2])


@dataclass(frozen=True)
class Release:
    """A named version: its share of user buckets, its targets, its match rules.

    ``match_headers`` names are lower-case; values compare exactly.
    """

    name: str
    weight: int
    targets: tuple[Target, ...]
    match_headers: tuple[tuple[str, str], ...] = ()
    match_cookies: tuple[tuple[str, str], ...] = ()

    @property
    def usable(self) -> bool:
        return any(not t.draining for t in self.targets)

    @property
    def live_targets(self) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if not t.draining)

    @property
    def has_match(self) -> bool:
        return bool(self.match_headers or self.match_cookies)


STICKY_MODES = (True, False, "client_ip")
"""``true``: the proxy's bucket cookie, else a random bucket sent back as a cookie; ``"client_ip"``: a hash
of the client address; ``false``: a random bucket per request. A ``split_key`` beats all three."""


@dataclass(frozen=True)
class SplitKey:
    """The app's own user key: a cookie or a header whose value is hashed into a bucket."""

    kind: str  # "cookie" | "header"
    name: str  # a header name is lower-case


@dataclass(frozen=True)
class RouteTable:
    """A whole routing decision at one revision; swapped as one piece."""

    revision: int = 0
    sticky: bool | str = True
    releases: tuple[Release, ...] = field(default=())
    split_key: SplitKey | None = None

    @classmethod
    def static(cls, addrs: list[str], name: str = "static") -> "RouteTable":
        """The table ``nonstop proxy --upstream A --upstream B`` serves: one release, no stickiness."""
        for i, a in enumerate(addrs):
            try:
                parse_addr(a)
            except ValueError as e:
                raise InvalidRoutes(f"upstream[{i}]", str(e)) from None
        rel = Release(name=name, weight=100, targets=tuple(Target(a) for a in addrs))
        return cls(revision=1, sticky=False, releases=(rel,) if addrs else ())

    def with_revision(self, revision: int) -> "RouteTable":
        return RouteTable(revision=revision, sticky=self.sticky, releases=self.releases, split_key=self.split_key)

    @property
    def addrs(self) -> set[str]:
        """Every target address the table lists (draining ones too)."""
        return {t.addr for r in self.releases for t in r.targets}

    def weight_of(self, release: str) -> int:
        return next((r.weight for r in self.releases if r.name == release), 0)

    def settle(self, current: int) -> "RouteTable":
        """This table as the next one after revision ``current``: revision 0 means ``current + 1``; a revision
        not above ``current`` is a stale writer (``StaleRevision``). The one place revisions are checked."""
        if self.revision == 0:
            return self.with_revision(current + 1)
        if self.revision <= current:
            raise StaleRevision(f"revision {self.revision} is not above the current {current}", detail={"current": current})
        return self

    # -- JSON ---------------------------------------------------------------

    def to_dict(self) -> dict:
        out = []
        for r in self.releases:
            d: dict = {"name": r.name, "weight": r.weight}
            if r.has_match:
                m: dict = {}
                if r.match_headers:
                    m["headers"] = dict(r.match_headers)
                if r.match_cookies:
                    m["cookies"] = dict(r.match_cookies)
                d["match"] = m
            d["targets"] = [{"addr": t.addr, "draining": t.draining} for t in r.targets]
            out.append(d)
        d: dict = {"revision": self.revision, "sticky": self.sticky, "releases": out}
        if self.split_key is not None:
            d["split_key"] = {self.split_key.kind: self.split_key.name}
        return d

    @classmethod
    def from_dict(cls, data: object, *, default_revision: int = 0) -> "RouteTable":
        """Validate and build; ``revision`` may be absent (then ``default_revision``)."""
        if not isinstance(data, dict):
            raise InvalidRoutes("table", "expected a JSON object")
        unknown = set(data) - {"revision", "sticky", "releases", "split_key"}
        if unknown:
            raise InvalidRoutes(sorted(unknown)[0], "unknown field")
        revision = data.get("revision", default_revision)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise InvalidRoutes("revision", "expected a non-negative integer")
        sticky = data.get("sticky", True)
        if sticky not in STICKY_MODES or (not isinstance(sticky, bool) and sticky != "client_ip"):
            raise InvalidRoutes("sticky", 'expected true, false or "client_ip"')
        split_key = _split_key(data.get("split_key"))
        rels = data.get("releases", [])
        if not isinstance(rels, list):
            raise InvalidRoutes("releases", "expected a list")
        releases = []
        names: set[str] = set()
        for i, rd in enumerate(rels):
            rel = _release_from_dict(rd, f"releases[{i}]")
            if rel.name in names:
                raise InvalidRoutes(f"releases[{i}].name", f"duplicate release name {rel.name!r}")
            names.add(rel.name)
            releases.append(rel)
        return cls(revision=revision, sticky=sticky, releases=tuple(releases), split_key=split_key)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, *, default_revision: int = 0) -> "RouteTable":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InvalidRoutes("table", f"not JSON: {e}") from None
        return cls.from_dict(data, default_revision=default_revision)


_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _split_key(value: object) -> SplitKey | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("cookie", "header"):
        raise InvalidRoutes("split_key", 'expected {"cookie": NAME} or {"header": NAME}')
    kind, name = next(iter(value.items()))
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise InvalidRoutes(f"split_key.{kind}", "expected a cookie or header name")
    return SplitKey(kind, name.lower() if kind == "header" else name)


def _str_map(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise InvalidRoutes(where, "expected an object of name: value")
    for k, v in value.items():
        if not isinstance(v, str) or not k:
            raise InvalidRoutes(f"{where}.{k}", "expected a string value")
    return tuple(value.items())


def _release_from_dict(rd: object, where: str) -> Release:
    if not isinstance(rd, dict):
        raise InvalidRoutes(where, "expected an object")
    unknown = set(rd) - {"name", "weight", "targets", "match"}
    if unknown:
        raise InvalidRoutes(f"{where}.{sorted(unknown)[0]}", "unknown field")
    name = rd.get("name")
    if not isinstance(name, str) or not name or any(c in name for c in "\r\n\"\\{},= "):
        raise InvalidRoutes(f"{where}.name", "expected a non-empty name without spaces, quotes or ,={}")
    weight = rd.get("weight", 0)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise InvalidRoutes(f"{where}.weight", "expected an integer 0..100")
    tds = rd.get("targets", [])
    if not isinstance(tds, list):
        raise InvalidRoutes(f"{where}.targets", "expected a list")
    targets = []
    seen: set[str] = set()
    for j, td in enumerate(tds):
        tw = f"{where}.targets[{j}]"
        if not isinstance(td, dict):
            raise InvalidRoutes(tw, "expected an object")
        unknown = set(td) - {"addr", "draining"}
        if unknown:
            raise InvalidRoutes(f"{tw}.{sorted(unknown)[0]}", "unknown field")
        addr = td.get("addr")
        try:
            parse_addr(addr)  # type: ignore[arg-type]
        except ValueError as e:
            raise InvalidRoutes(f"{tw}.addr", str(e)) from None
        if addr in seen:
            raise InvalidRoutes(f"{tw}.addr", f"duplicate target {addr!r}")
        seen.add(addr)
        draining = td.get("draining", False)
        if not isinstance(draining, bool):
            raise InvalidRoutes(f"{tw}.draining", "expected true or false")
        targets.append(Target(addr=addr, draining=draining))
    match = rd.get("match") or {}
    if not isinstance(match, dict):
        raise InvalidRoutes(f"{where}.match", "expected an object")
    unknown = set(match) - {"headers", "cookies"}
    if unknown:
        raise InvalidRoutes(f"{where}.match.{sorted(unknown)[0]}", "unknown field (headers, cookies)")
    headers = _str_map(match.get("headers", {}), f"{where}.match.headers")
    cookies = _str_map(match.get("cookies", {}), f"{where}.match.cookies")
    return Release(
        name=name,
        weight=weight,
        targets=tuple(targets),
        match_headers=tuple((k.lower(), v) for k, v in headers),
        match_cookies=cookies,
    )


def save(table: RouteTable, path: str) -> None:
    """Write ``routes.json`` whole: a proxy rereading it sees the old table or the new one."""
    write_atomic(path, table.to_json())


def load(path: str) -> RouteTable:
    """The table saved at ``path``; an empty table when the file does not exist."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return RouteTable()
    return RouteTable.from_json(text)
