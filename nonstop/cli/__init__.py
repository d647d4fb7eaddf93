"""``nonstop`` — the command line: a thin client of the agent.

``main`` first offers the command line to ``quick`` (the incident verbs —
rollback, abort, promote, pause, resume — in their plain forms, run without
loading click: every millisecond of a rollback counts); anything else goes to
the click command tree in ``app``. Exit codes: 0 ok, 1 failed (traffic on the
previous release), 2 usage/config error, 3 agent not reachable, 4 another
deployment in progress.
"""

from __future__ import annotations

import sys


def main() -> None:
    from nonstop.cli import quick

    code = quick.run(sys.argv[1:])
    if code is not None:
        raise SystemExit(code)
    from nonstop.cli.app import cli

    cli(prog_name="nonstop")


def __getattr__(name: str):
    if name in ("cli", "pass_ctx"):  # the click tree, loaded when asked for
        from nonstop.cli import app

        return getattr(app, name)
    raise AttributeError(f"module 'nonstop.cli' has no attribute {name!r}")


__all__ = ["main", "cli", "pass_ctx"]
