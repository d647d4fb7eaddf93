"""``python -m nonstop.agent --config nonstop.yml``: the agent process (normally started by ``nonstop up``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from nonstop import config as configmod
from nonstop.errors import NonstopError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nonstop-agent")
    p.add_argument("--config", required=True)
    p.add_argument("--down-on-signal", action="store_true", help="SIGTERM/SIGINT also stop instances and proxy (foreground `up`)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        cfg = configmod.load(args.config)
    except NonstopError as e:
        print(f"nonstop-agent: {e.message}", file=sys.stderr)
        return e.exit_code
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    from nonstop.agent.daemon import Reexec, serve

    try:
        result = runner(serve(cfg, down_on_signal=args.down_on_signal))
    except NonstopError as e:
        print(f"nonstop-agent: {e.message}", file=sys.stderr)
        return e.exit_code
    if isinstance(result, Reexec):  # SIGHUP: again, from the code installed now (an upgrade in place)
        result.exec(sys.argv[1:] if argv is None else argv)
    return result


if __name__ == "__main__":
    sys.exit(main())
