"""Drain bookkeeping: when a ``POST /drain`` is done. Pure: counts and ``now`` in, an action out.

Plain requests get ``timeout``; upgraded connections (WebSockets) get their
own ``upgraded_timeout`` (default: the same), after which the proxy closes
them. Drain only waits and closes tunnels; the routing change that stops new
requests (a ``draining`` flag, or removing the target) is a ``PUT /routes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    WAIT = "wait"
    CLOSE_TUNNELS = "close-tunnels"
    DONE = "done"


@dataclass(frozen=True)
class DrainPlan:
    """One drain request: when it started and its two deadlines."""

    started: float
    timeout: float
    upgraded_timeout: float | None = None

    def next(self, now: float, requests: int, tunnels: int) -> tuple[Action, bool]:
        """The action to take and, with DONE, whether everything drained."""
        if requests == 0 and tunnels == 0:
            return Action.DONE, True
        upgraded = self.timeout if self.upgraded_timeout is None else self.upgraded_timeout
        if tunnels and now >= self.started + upgraded:
            return Action.CLOSE_TUNNELS, False
        if requests and now >= self.started + self.timeout:
            return Action.DONE, False
        return Action.WAIT, False
