"""What one proxy process knows right now: the live table, its targets and their counters.

``ProxyState`` is shared by every connection; it owns routing decisions
(release by split, target by least in-flight) but does no I/O itself, so it is
tested without sockets. Targets are kept by address across table swaps so
their in-flight counts, pools and counters carry over; a target removed from
the table stays (implicitly draining) until its last request ends.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Iterator

from nonstop.proxy.pool import MAX_IDLE, Pool
from nonstop.proxy.routes import RouteTable, parse_addr
from nonstop.proxy.split import Split
from nonstop.proxy.stats import Counters


class TargetState:
    """One upstream address: its in-flight count, open tunnels and idle connection pool."""

    __slots__ = ("addr", "host", "port", "in_flight", "tunnels", "pool", "listed")

    def __init__(self, addr: str, max_idle: int = MAX_IDLE) -> None:
        self.addr = addr
        self.host, self.port = parse_addr(addr)
        self.in_flight = 0  # requests, including upgraded connections
        self.tunnels: set = set()  # exchanges upgraded to a tunnel
        self.pool = Pool(max_idle)
        self.listed = True  # present (draining or not) in the live table


class Entry:
    """A target as one release lists it: the shared target, the pair's counters, the draining flag."""

    __slots__ = ("target", "counters", "draining", "release")

    def __init__(self, target: TargetState, counters: Counters, draining: bool, release: ReleaseRoute) -> None:
        self.target = target
        self.counters = counters
        self.draining = draining
        self.release = release


class ReleaseRoute:
    """A release of the live table, ready for the hot path (precomputed header line)."""

    __slots__ = ("name", "header", "entries", "_rr")

    def __init__(self, name: str) -> None:
        self.name = name
        self.header = b"X-Nonstop-Release: " + name.encode() + b"\r\n"
        self.entries: list[Entry] = []
        self._rr = 0

    def pick(self, exclude: tuple = ()) -> Entry | None:
        """Least in-flight non-draining target; ties go round robin. None when none is left."""
        entries = self.entries
        n = len(entries)
        if n == 1:
            e = entries[0]
            if e.draining or e.target in exclude:
                return None
            return e
        best = None
        start = self._rr
        self._rr = (start + 1) % n if n else 0
        for k in range(n):
            e = entries[(start + k) % n]
            if e.draining or e.target in exclude:
                continue
            if best is None or e.target.in_flight < best.target.in_flight:
                best = e
        return best


class ProxyState:
    """The live table (with its compiled split and routes), all known targets, and the per-pair counters."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self.table = RouteTable()
        self.split = Split(self.table)
        self.routes: list[ReleaseRoute] = []
        self.targets: dict[str, TargetState] = {}
        self.pairs: dict[tuple[str, str], Counters] = {}
        self.unrouted = Counters()  # requests answered without a target (hold timeout 503)
        self.rejected = 0  # malformed client requests (400/408/413/431/505)
        self.max_idle = max_idle
        self.started_at = time.time()
        self._changed: asyncio.Future | None = None
        self.rand = random.Random().getrandbits
        # the hot path's shortcut: set when every request goes to one target
        # (one usable release, one non-draining target, no match rules)
        self.fast: Entry | None = None
        # the loop's clock at the last tick (deadlines are this coarse) and whether the process is stopping;
        # kept here, where the hot path reads it as a C field, and set by the server
        self.now = 0.0
        self.closing = False

    # -- table ---------------------------------------------------------------

    def apply(self, table: RouteTable) -> RouteTable:
        """Swap in ``table`` (revision must grow; 0 means current + 1). Returns the table applied."""
        table = table.settle(self.table.revision)
        routes: list[ReleaseRoute] = []
        listed: set[str] = set()
        for rel in table.releases:
            route = ReleaseRoute(rel.name)
            for t in rel.targets:
                ts = self.targets.get(t.addr)
                if ts is None:
                    ts = self.targets[t.addr] = TargetState(t.addr, self.max_idle)
                key = (rel.name, t.addr)
                c = self.pairs.get(key)
                if c is None:
                    c = self.pairs[key] = Counters()
                route.entries.append(Entry(ts, c, t.draining, route))
                if not t.draining:
                    listed.add(t.addr)
            routes.append(route)
        in_table = table.addrs
        for addr, ts in list(self.targets.items()):
            ts.listed = addr in in_table
            if addr not in listed:
                # draining everywhere or removed: its idle connections will not be used again
                ts.pool.close_all()
        # one assignment each; the loop is single-threaded, so no request sees half a swap
        sp = Split(table)
        fast = None
        if sp.single is not None:
            live = [e for e in routes[sp.single.release].entries if not e.draining]
            if len(live) == 1:
                fast = live[0]
        self.table, self.split, self.routes, self.fast = table, sp, routes, fast
        self.forget_unlisted()
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
        return table

    def forget_unlisted(self) -> None:
        """Drop targets no longer in the table once nothing is in flight on them."""
        for addr in [a for a, t in self.targets.items() if not t.listed and t.in_flight == 0]:
            self.targets.pop(addr).pool.close_all()
            for key in [k for k in self.pairs if k[1] == addr]:
                del self.pairs[key]

    def changed(self) -> asyncio.Future:
        """A future resolved at the next table swap (for held requests)."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    # -- routing -------------------------------------------------------------

    def choose(self, headers, cookie: bytes | None, client_ip: str) -> tuple[Entry | None, int | None]:
        """The entry (release, target) for a new request and the bucket cookie to set, if any."""
        d = self.split.choose(headers, cookie, client_ip, self._rand100)
        if d is None:
            return None, None
        return self.routes[d.release].pick(), d.set_cookie

    def _rand100(self) -> int:
        return self.rand(16)

    def fallback(self, failed: Entry, tried: tuple) -> Entry | None:
        """Another target after a connect failure: same release first, then the others in list order."""
        e = failed.release.pick(tried)
        if e is not None:
            return e
        for route in self.routes:
            if route is not failed.release:
                e = route.pick(tried)
                if e is not None:
                    return e
        return None

    # -- reading -------------------------------------------------------------

    def in_flight(self, addr: str) -> tuple[int, int]:
        """(requests, tunnels) in flight on ``addr``; (0, 0) for an unknown address."""
        t = self.targets.get(addr)
        if t is None:
            return 0, 0
        return t.in_flight - len(t.tunnels), len(t.tunnels)

    def iter_pairs(self) -> Iterator[tuple[str, str, Counters]]:
        for (rel, addr), c in self.pairs.items():
            yield rel, addr, c
