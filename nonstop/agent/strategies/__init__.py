"""Deployment strategies, one module each, and the registry the deployer reads.

A strategy only sequences steps through the ``Run`` it is given
(``run.py``): start instances, switch the split, drain, stop. Decisions that
need no I/O (the canary step machine, the rolling planner, the watch after a
switch) live in pure modules beside them (``steps.py``, ``plan.py``,
``watch.py``). Each strategy module declares ``STRATEGY``: its name, how it
runs, how it is undone, and how it is picked up again by an agent that
restarted in the middle of it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Awaitable, Callable

from nonstop.agent.strategies.run import Run
from nonstop.names import STRATEGIES

__all__ = ["Strategy", "Recovered", "get", "NAMES"]

NAMES = STRATEGIES

_MODULES = {
    "recreate": "nonstop.agent.strategies.recreate",
    "blue-green": "nonstop.agent.strategies.bluegreen",
    "canary": "nonstop.agent.strategies.canary",
    "rolling": "nonstop.agent.strategies.rolling",
}
assert tuple(_MODULES) == STRATEGIES, "nonstop.names.STRATEGIES and the strategy registry disagree"


@dataclass(frozen=True)
class Recovered:
    """How a strategy finished a deployment that a killed agent left: ``promoted`` or ``rolled_back``."""

    state: str
    reason: str


@dataclass(frozen=True)
class Strategy:
    """One strategy as the deployer sees it."""

    name: str
    run: Callable[[Run], Awaitable[None]]
    undo: Callable[[Run], Awaitable[None]]
    # After an agent restart mid-deployment: finish it from the saved phase, or None to leave it to
    # the deployer's default (switched → completed; not switched → undone).
    recover: Callable[[Run], Awaitable[Recovered | None]] | None = None


def get(name: str) -> Strategy:
    """The strategy called ``name`` (its module is imported on first use)."""
    return importlib.import_module(_MODULES[name]).STRATEGY
