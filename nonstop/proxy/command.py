"""``nonstop proxy``: the embedded proxy alone, in the foreground (docs/internals.md, "The proxy process").

The click command lives here, inside the data plane, so that
``python -m nonstop.proxy`` works without importing ``nonstop.cli``;
``nonstop/cli/proxy_cmd.py`` re-exports it for the ``nonstop`` CLI.
"""

from __future__ import annotations

import errno
import logging
import sys

import click

from dataclasses import MISSING

from nonstop.durations import format_duration, parse_duration
from nonstop.errors import NonstopError
from nonstop.proxy.config import ProxyConfig
from nonstop.proxy.routes import parse_addr


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = _Duration()


class _Address(click.ParamType):
    """HOST:PORT, checked before anything starts: a bad one is a usage error (exit 2), not a crash."""

    name = "host:port"

    def __init__(self, *, any_port: bool) -> None:
        self.any_port = any_port  # --listen may say port 0: any free port

    def convert(self, value, param, ctx):
        text = str(value)
        try:
            if self.any_port and text.endswith(":0") and text[:-2]:
                parse_addr(text[:-2] + ":1")
            else:
                parse_addr(text)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        return text


# A listening address the kernel refuses is a bad --listen too (exit 2), said as click says it.
_BIND_ERRNOS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)


def _option(f):
    """The click option of one ProxyConfig field (config.py declares each setting once)."""
    meta = f.metadata
    kind = meta["kind"]
    kw: dict = {"help": meta["help"] or None, "hidden": meta["hidden"]}
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    if kind == "bool":
        return click.option(meta["flag"], f.name, is_flag=True, **kw)
    if kind in ("list", "upstream"):
        typ = _Address(any_port=False) if kind == "upstream" else click.STRING
        return click.option(meta["flag"], f.name, type=typ, multiple=True, metavar="HOST:PORT" if kind == "upstream" else None, **kw)
    typ = {
        "address0": _Address(any_port=True),
        "duration": DURATION,
        "int": int,
        "count": click.IntRange(1, 64),
        "path": click.Path(dir_okay=False),
        "dir": click.Path(file_okay=False),
        "str": click.STRING,
    }[kind]
    shown = default is not None
    if kind == "duration" and default is not None:
        default = format_duration(default)
    return click.option(meta["flag"], f.name, type=typ, default=default, show_default=shown, **kw)


def _with_options(cmd):
    for f in reversed(ProxyConfig.cli_fields()):
        cmd = _option(f)(cmd)
    return cmd


@click.command("proxy")
@_with_options
@click.option("--log-level", default="info", show_default=True)
def proxy(log_level, **kw) -> None:
    """Run the embedded reverse proxy until SIGTERM (then drain and exit 0)."""
    from nonstop.proxy.server import run

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    cfg = ProxyConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()})
    try:
        cfg.certificates()
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--tls-key'") from None

    def ready(server) -> None:
        # one line on stdout that tools (and tests) wait for
        print(f"ready listen={server.listen_addr} pid={__import__('os').getpid()}", flush=True)

    try:
        run(cfg, ready)
    except NonstopError as e:
        cause = e.__cause__
        if isinstance(cause, OSError) and cause.errno in _BIND_ERRNOS and not kw.get("takeover"):
            raise click.BadParameter(e.message, param_hint="'--listen'") from None
        click.echo(f"nonstop proxy: {e.message}", err=True)
        sys.exit(e.exit_code)
