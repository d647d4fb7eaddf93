"""Deployment strategies. Each module has ``async run(run)`` and may have ``async undo(run)``.

A strategy only sequences steps through the ``Run`` it is given
(``nonstop.agent.deployer.Run``): start instances, switch the split, drain,
stop. Decisions that need no I/O (the canary step machine, the analysis
verdict) live in pure modules beside them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {
    "recreate": "nonstop.agent.strategies.recreate",
    "blue-green": "nonstop.agent.strategies.bluegreen",
    "canary": "nonstop.agent.strategies.canary",
    "rolling": "nonstop.agent.strategies.rolling",
}


def get_strategy(name: str) -> ModuleType:
    return importlib.import_module(_MODULES[name])
