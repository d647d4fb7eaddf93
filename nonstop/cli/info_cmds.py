"""``nonstop status``, ``history``, ``logs``: read-only views."""

from __future__ import annotations

import click

from nonstop.cli.context import Ctx
from nonstop.cli.options import json_option, pass_ctx


@click.command()
@json_option
@pass_ctx
def status(c: Ctx) -> None:
    """Live release, traffic split, instances and their health, deployment in progress."""
    st = c.client.get("/status")
    if c.json:
        return c.print_json(st)
    from nonstop.cli import render

    render.status(c.console, st)


@click.command()
@click.option("-n", "--limit", default=20, show_default=True, help="deployments to show")
@json_option
@pass_ctx
def history(c: Ctx, limit: int) -> None:
    """Releases and deployments with outcome and timings."""
    h = c.client.get("/history", limit=limit)
    if c.json:
        return c.print_json(h)
    from nonstop.cli import render

    render.history(c.console, h)


@click.command()
@click.argument("release", required=False)
@click.option("-n", "--lines", default=100, show_default=True)
@pass_ctx
def logs(c: Ctx, release: str | None, lines: int) -> None:
    """Instance logs of RELEASE (default: the live one); `agent` or `proxy` for theirs."""
    click.echo(c.client.text("/logs", release=release, lines=lines), nl=False)


COMMANDS = [status, history, logs]
