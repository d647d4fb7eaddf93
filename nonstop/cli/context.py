"""What every verb needs: where the agent is, the output mode, (for ``up``) the validated config,
and how an error is reported. No click here: the quick path (``quick.py``) uses it too."""

from __future__ import annotations

import json as jsonlib
import os
import sys
from functools import cached_property
from pathlib import Path

from nonstop import configfile
from nonstop.cli.client import AgentClient
from nonstop.cli.locate import state_dir
from nonstop.errors import NonstopError


class Ctx:
    """What one invocation of ``nonstop`` knows: the config file, the state dir, the agent's client, the output
    mode and consoles; each found or made when first asked for."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.json = False

    @cached_property
    def config_file(self) -> Path:
        return configfile.find(self.config_path)

    @cached_property
    def state(self) -> Path:
        """The state dir, found without validating the config (``locate.state_dir(strict=False)``): the agent
        runs on the config it validated, so a file broken mid-edit never stands between an operator and the
        agent (status, down, rollback…), nor the state dir's own records (history, logs)."""
        return state_dir(self.config_file, strict=False)

    @cached_property
    def cfg(self):
        """The fully validated config (pydantic; `up` and `check` need it)."""
        from nonstop import config as configmod

        return configmod.load(self.config_file)

    @cached_property
    def runtime(self) -> str:
        """``run.runtime`` as written, read leniently: the views that differ by runtime (``logs``, ``history``
        without an agent, ``down``'s words) need no valid config."""
        try:
            raw = configfile.read(self.config_file)
        except NonstopError:
            return "process"
        run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
        return str(run.get("runtime") or "process")

    @cached_property
    def client(self) -> AgentClient:
        return AgentClient(self.state / "agent.sock")

    @cached_property
    def console(self):
        return _console(sys.stdout, stderr=False)

    @cached_property
    def err(self):
        return _console(sys.stderr, stderr=True)

    def print_json(self, data: object) -> None:
        _out(jsonlib.dumps(data, indent=2, default=str))

    def say(self, text: str) -> None:
        """A one-line human result, without loading rich (fast paths)."""
        _out(text)


def _console(stream, *, stderr: bool):
    """A rich console; into a pipe or a file, lines are never wrapped nor cut (a terminal's width means nothing
    there, and ``grep`` should find a whole line)."""
    from rich.console import Console

    no_color = bool(os.environ.get("NO_COLOR"))
    if stream.isatty():
        return Console(stderr=stderr, no_color=no_color, highlight=False)
    return Console(stderr=stderr, no_color=no_color, highlight=False, width=1 << 16, soft_wrap=True)


def _out(text: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def report(e: NonstopError, *, as_json: bool) -> int:
    """Print an error the way every verb does (JSON on stdout with ``--json``, else a message and its
    details on stderr) and return its exit code."""
    if as_json:
        _out(jsonlib.dumps({**e.to_dict(), "exit_code": e.exit_code}))
        return e.exit_code
    _out(f"nonstop: {e.message}", err=True)
    for k in ("checks", "log_tail", "analysis"):
        v = e.detail.get(k)
        if v:
            _out(f"{k.replace('_', ' ')}:", err=True)
            _out("  " + ("\n  ".join(v) if isinstance(v, list) else str(v).replace("\n", "\n  ")), err=True)
    return e.exit_code
