"""What every verb needs: the config (loaded once, lazily), the agent client, the output mode."""

from __future__ import annotations

import json as jsonlib
import os
from functools import cached_property
from typing import Any

import click
from rich.console import Console

from nonstop import config as configmod
from nonstop.cli.client import AgentClient


class Ctx:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self.json = False

    @cached_property
    def cfg(self) -> configmod.Config:
        return configmod.load(self.config_path)

    @cached_property
    def client(self) -> AgentClient:
        return AgentClient(self.cfg.state_path / "agent.sock")

    @cached_property
    def console(self) -> Console:
        return Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False)

    @cached_property
    def err(self) -> Console:
        return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)

    def print_json(self, data: Any) -> None:
        click.echo(jsonlib.dumps(data, indent=2, default=str))


pass_ctx = click.make_pass_decorator(Ctx)


def json_option(f):
    """``--json``: print the result as JSON instead of text."""

    def set_json(ctx: click.Context, _param, value: bool) -> bool:
        if value:
            ctx.ensure_object(Ctx).json = True
        return value

    return click.option("--json", "as_json", is_flag=True, expose_value=False, is_eager=True, callback=set_json, help="print the result as JSON")(f)
