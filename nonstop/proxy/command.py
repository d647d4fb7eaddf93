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

from nonstop.durations import parse_duration
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


@click.command("proxy")
@click.option("--listen", type=_Address(any_port=True), default="127.0.0.1:8080", show_default=True,
              help="HOST:PORT to serve (port 0: any free port)")
@click.option("--upstream", "upstreams", type=_Address(any_port=False), multiple=True, metavar="HOST:PORT",
              help="static table: one release 'static'")
@click.option("--admin-socket", type=click.Path(dir_okay=False), help="Unix socket of the admin API (mode 0600)")
@click.option("--routes-file", type=click.Path(dir_okay=False), help="routes.json: saved on every change, restored on start")
@click.option("--pid-file", type=click.Path(dir_okay=False))
@click.option("--hold-timeout", type=DURATION, default="10s", show_default=True)
@click.option("--connect-timeout", type=DURATION, default="2s", show_default=True)
@click.option("--read-timeout", type=DURATION, default="60s", show_default=True, help="upstream response head / body gaps")
@click.option("--idle-timeout", type=DURATION, default="75s", show_default=True, help="idle client keep-alive connection")
@click.option("--header-timeout", type=DURATION, default="10s", show_default=True, help="client request head (408)")
@click.option("--max-body", type=int, default=None, help="request body limit in bytes (413)")
@click.option("--max-header-bytes", type=int, default=32 * 1024, show_default=True, help="request head limit (431)")
@click.option("--shutdown-timeout", type=DURATION, default="30s", show_default=True)
@click.option("--idle-grace", type=DURATION, default="1s", show_default=True,
              help="on stop, idle keep-alive connections get this long to send one more request")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="worker processes sharing the listening socket (a supervisor answers the admin API for all)")
@click.option("--worker", is_flag=True, hidden=True, help="internal: run as one worker of a supervisor")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="CIDR",
              help="a peer whose X-Forwarded-For/-Proto/-Host are believed (repeat for more)")
@click.option("--takeover", is_flag=True, help="take the listening socket from the proxy on --admin-socket, then retire it")
@click.option("--log-level", default="info", show_default=True)
def proxy(upstreams, log_level, **kw) -> None:
    """Run the embedded reverse proxy until SIGTERM (then drain and exit 0)."""
    from nonstop.proxy.server import run

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    kw["trusted_proxies"] = list(kw.get("trusted_proxies") or ())
    cfg = ProxyConfig(upstreams=list(upstreams), **kw)

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
