"""A short history of the router's cumulative stats, so a figure can be taken "over the last minute".

Blue-green and rolling compare a new release with the previous one's own
figures from just before the switch (the baseline): requests, 5xx share and
p99 over ``analysis.baseline`` seconds. The router's counters are cumulative,
so a window is the difference of two snapshots; this keeps snapshots taken
every ``interval`` seconds (and whenever a deployment asks) for ``keep``
seconds. The ring itself does no I/O; ``feed`` is the thin loop that fills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable

from nonstop.errors import NonstopError

log = logging.getLogger("nonstop.agent")

__all__ = ["StatsHistory"]

Snapshot = dict[str, Any]


class StatsHistory:
    """Owns the recent snapshots: ``(monotonic time, snapshot)``, oldest first."""

    def __init__(self, read: Callable[[], Awaitable[Snapshot]], *, keep: float = 900.0, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.keep = keep
        self.interval = interval
        self.clock = clock
        self._ring: deque[tuple[float, Snapshot]] = deque()

    def add(self, t: float, snap: Snapshot) -> None:
        self._ring.append((t, snap))
        while self._ring and self._ring[0][0] < t - self.keep:
            self._ring.popleft()

    def since(self, t: float) -> tuple[float, Snapshot] | None:
        """The oldest kept snapshot taken at or after ``t`` (a window from it lasts at most ``now - t``)."""
        for at, snap in self._ring:
            if at >= t:
                return at, snap
        return None

    async def sample(self) -> Snapshot | None:
        """Read the router's stats now and keep them; None when they cannot be read."""
        try:
            snap = await self._read()
        except NonstopError as e:
            log.debug("stats history: cannot read stats: %s", e.message)
            return None
        self.add(self.clock(), snap)
        return snap

    async def feed(self, stop: asyncio.Event) -> None:
        """Sample every ``interval`` until ``stop`` is set."""
        while not stop.is_set():
            await self.sample()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
