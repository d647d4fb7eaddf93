"""The incident verbs without click: ``rollback``, ``abort``, ``promote``, ``pause``, ``resume``.

When something is on fire, ``nonstop rollback`` should not spend most of its
time importing a command-line framework: click costs more than the rollback
itself (the route swap takes ~6 ms in the agent). So ``main`` first hands the
arguments to :func:`parse`, which recognises only these verbs in their plain
forms::

    nonstop [-c FILE | --config FILE | --config=FILE] rollback [--to RELEASE | --to=RELEASE] [--json]
    nonstop [-c FILE ...] abort | pause | resume [--json]
    nonstop [-c FILE ...] promote [--full] [--json]

and runs them through the same functions as the click commands
(``actions``), with the same output and exit codes. Anything else — help,
a typo, an option it does not know — returns None, and click answers as
always. ``NONSTOP_NO_QUICK=1`` turns this path off.
"""

from __future__ import annotations

import os
from collections import namedtuple

VERBS = ("rollback", "abort", "promote", "pause", "resume")


# a namedtuple, not typing.NamedTuple: importing typing would cost ~10 ms of the command
Invocation = namedtuple("Invocation", "config verb to full json", defaults=(None, False, False))


def _value(v: str) -> bool:
    return bool(v) and not v.startswith("-")  # "-x" might be an option to click: let click decide


def parse(argv: list[str]) -> Invocation | None:
    """The invocation when ``argv`` is one of the plain forms above, else None."""
    config, i = None, 0
    if argv[:1] in (["-c"], ["--config"]):
        if len(argv) < 2 or not _value(argv[1]):
            return None
        config, i = argv[1], 2
    elif argv and argv[0].startswith("--config="):
        config, i = argv[0][len("--config="):], 1
        if not config:
            return None
    if i >= len(argv) or argv[i] not in VERBS:
        return None
    verb, rest = argv[i], argv[i + 1:]
    to, full, as_json = None, False, False
    k = 0
    while k < len(rest):
        a = rest[k]
        if a == "--json" and not as_json:
            as_json = True
        elif verb == "rollback" and a == "--to" and to is None and k + 1 < len(rest) and _value(rest[k + 1]):
            to = rest[k + 1]
            k += 1
        elif verb == "rollback" and a.startswith("--to=") and to is None and a != "--to=":
            to = a[len("--to="):]
        elif verb == "promote" and a == "--full" and not full:
            full = True
        else:
            return None
        k += 1
    return Invocation(config, verb, to, full, as_json)


def run(argv: list[str]) -> int | None:
    """Run a plain incident verb and return its exit code; None when click should handle ``argv``."""
    if os.environ.get("NONSTOP_NO_QUICK"):
        return None
    inv = parse(argv)
    if inv is None:
        return None
    from nonstop.cli import actions
    from nonstop.cli.context import Ctx, report
    from nonstop.errors import NonstopError

    c = Ctx(inv.config)
    c.json = inv.json
    try:
        if inv.verb == "rollback":
            actions.rollback(c, inv.to)
        else:
            actions.steer(c, "promote_full" if inv.full else inv.verb)
    except NonstopError as e:
        return report(e, as_json=inv.json)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        return 130
    return 0
