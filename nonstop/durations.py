"""Durations as users write them in config and on the command line: ``200ms``, ``30s``, ``10m``, ``1h``, ``30d``, ``1.5s`` or a bare number of seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: str | int | float) -> float:
    """Return seconds as a float; raise ValueError with a readable message."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 200ms, 30s, 10m; got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative; got {value!r}")
        return float(value)
    m = _RE.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like 200ms, 30s, 10m; got {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s".replace(".0s", "s")
    return f"{seconds / 60:.1f}m".replace(".0m", "m")
