"""The click pieces every verb shares: the context decorator and ``--json``."""

from __future__ import annotations

import click

from nonstop.cli.context import Ctx

pass_ctx = click.make_pass_decorator(Ctx)


def json_option(f):
    """``--json``: print the result as JSON instead of text."""

    def set_json(ctx: click.Context, _param, value: bool) -> bool:
        if value:
            ctx.ensure_object(Ctx).json = True
        return value

    return click.option("--json", "as_json", is_flag=True, expose_value=False, is_eager=True, callback=set_json, help="print the result as JSON")(f)
