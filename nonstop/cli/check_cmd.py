"""``nonstop check``: the config, and everything it names, ready for ``up`` and ``deploy`` — without changing anything.

The same checks ``up`` runs before it starts anything (``nonstop.agent.preflight``):
the config valid (every problem, with its line), the command's program, the
ports free (or held by this app's own proxy and instances), the router's
binary and its config test on the config nonstop would generate, the
dashboard's address. Exit 0, or 2 listing every problem with field and file.
"""

from __future__ import annotations

import asyncio

import click

from nonstop.cli.context import Ctx
from nonstop.cli.options import json_option, pass_ctx
from nonstop.configfile import ConfigProblems


@click.command()
@json_option
@pass_ctx
def check(c: Ctx) -> None:
    """Validate nonstop.yml and what it names (programs, ports, router config) without changing anything."""
    from nonstop.agent import preflight

    cfg = c.cfg  # a config that does not load: every problem in it, exit 2
    found = asyncio.run(preflight.startup(cfg))
    if not found.ok:
        e = ConfigProblems(found.problems)
        e.detail["checked"] = found.checked
        raise e
    if c.json:
        c.print_json({"ok": True, "file": cfg.source, "checked": found.checked, "problems": []})
    else:
        c.say(f"✓ {c.config_file}: valid, and ready: {', '.join(found.checked)}")


COMMANDS = [check]
