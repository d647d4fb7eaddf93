"""What every verb needs: where the agent is, the output mode, and (for ``up``) the validated config."""

from __future__ import annotations

import json as jsonlib
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from nonstop.cli.client import AgentClient
from nonstop import configfile
from nonstop.cli.locate import state_dir


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

    def print_json(self, data: Any) -> None:
        click.echo(jsonlib.dumps(data, indent=2, default=str))

    def say(self, text: str) -> None:
        """A one-line human result, without loading rich (fast paths)."""
        click.echo(text)


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(f):
    """``--json``: print the result as JSON instead of text."""

    def set_json(ctx: click.Context, _param, value: bool) -> bool:
        if value:
            ctx.ensure_object(Ctx).json = True
        return value

    return click.option("--json", "as_json", is_flag=True, expose_value=False, is_eager=True, callback=set_json, help="print the result as JSON")(f)
