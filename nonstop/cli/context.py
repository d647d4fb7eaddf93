"""What every verb needs: where the agent is, the output mode, (for ``up``) the validated config,
and how an error is reported. No click here: the quick path (``quick.py``) uses it too."""

from __future__ import annotations

import json as jsonlib
import os
import sys
from functools import cached_property
from pathlib import Path

from nonstop.cli.client import AgentClient
from nonstop import configfile
from nonstop.cli.locate import state_dir
from nonstop.errors import NonstopError


class Ctx:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.json = False

    @cached_property
    def config_file(self) -> Path:
        return configfile.find(self.config_path)

    @cached_property
    def state(self) -> Path:
        return state_dir(self.config_file)

    @cached_property
    def cfg(self):
        """The fully validated config (pydantic; only `up` needs it)."""
        from nonstop import config as configmod

        return configmod.load(self.config_file)

    @cached_property
    def client(self) -> AgentClient:
        return AgentClient(self.state / "agent.sock")

    @cached_property
    def incident_client(self) -> AgentClient:
        """For rollback / abort / promote / pause / resume: found without parsing the config
        when it cannot name a state dir (``locate.state_dir(strict=False)``)."""
        return AgentClient(state_dir(self.config_file, strict=False) / "agent.sock")

    @cached_property
    def console(self):
        from rich.console import Console

        return Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)

    @cached_property
    def err(self):
        from rich.console import Console

        return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)

    def print_json(self, data: object) -> None:
        _out(jsonlib.dumps(data, indent=2, default=str))

    def say(self, text: str) -> None:
        """A one-line human result, without loading rich (fast paths)."""
        _out(text)


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
