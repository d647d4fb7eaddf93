"""Field types every block of ``nonstop.yml`` shares: durations, ``HOST:PORT`` addresses, commands.

Also the base of every block (``_Model``: unknown settings refused, values frozen).
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict

from nonstop.durations import parse_duration


def _duration(v: Any) -> float:
    return parse_duration(v)


Duration = Annotated[float, BeforeValidator(_duration)]
"""Seconds; accepts ``200ms``, ``30s``, ``10m``, ``1h`` or a number."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _addr(value: str, field: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"expected HOST:PORT (like 127.0.0.1:8080); got {value!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


Command = Union[str, list[str]]


def split_command(cmd: Command, *, shell: bool) -> list[str]:
    """argv for a configured command: a list is taken as is; a string is split like a shell would (``shlex``) but never run through one unless ``shell`` is true."""
    if isinstance(cmd, list):
        return list(cmd)
    if shell:
        return ["/bin/sh", "-c", cmd]
    return shlex.split(cmd)
