"""The click command tree of ``nonstop``: the group, its error handling, the verbs registered.

Each verb lives in a small module and sends one typed request; only this
package picks exit codes (from ``NonstopError.exit_code``, see
``context.report``): 0 ok, 1 failed (traffic on the previous release), 2
usage/config error, 3 agent not reachable, 4 another deployment in progress.
"""

from __future__ import annotations

import click

from nonstop import __version__
from nonstop.cli.context import Ctx, report
from nonstop.cli.options import pass_ctx
from nonstop.errors import NonstopError


class _Group(click.Group):
    # `nonstop proxy` imports the proxy (tens of ms): loaded only when asked for, so the
    # verbs that must be quick (rollback above all) never pay for it
    _LAZY = {"proxy": ("nonstop.cli.proxy_cmd", "proxy")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._LAZY})

    def get_command(self, ctx: click.Context, name: str):
        if name in self._LAZY and name not in self.commands:
            module, attr = self._LAZY[name]
            self.add_command(getattr(__import__(module, fromlist=[attr]), attr))
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NonstopError as e:
            out = ctx.find_object(Ctx)
            ctx.exit(report(e, as_json=out is not None and out.json))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", metavar="FILE", help="nonstop.yml (default: found in this folder or above, or $NONSTOP_CONFIG)")
@click.version_option(__version__, prog_name="nonstop")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Deploy new versions of a web app without a single failed request."""
    ctx.obj = Ctx(config_path)


def _register() -> None:
    from nonstop.cli import check_cmd, deploy_cmds, info_cmds, kube_cmds, lifecycle_cmds, service_cmds

    for mod in (lifecycle_cmds, deploy_cmds, info_cmds, check_cmd, kube_cmds, service_cmds):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


__all__ = ["cli", "pass_ctx"]
