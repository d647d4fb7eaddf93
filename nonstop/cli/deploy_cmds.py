"""``nonstop deploy``, ``rollback``, and the steering verbs ``promote / abort / pause / resume``."""

from __future__ import annotations

import click

from nonstop.cli.context import Ctx
from nonstop.cli.options import json_option, pass_ctx
from nonstop.cli.actions import follow, rollback as do_rollback, steer
from nonstop.names import STRATEGIES
from nonstop.protocol import DeployRequest


@click.command()
@click.option("--version", "version", default=None, help="version name of the release (default: a timestamp + git sha)")
@click.option("--artifact", type=click.Path(), default=None, help="the file or folder to deploy (copied into releases/<id>/)")
@click.option("--image", "image", default=None, metavar="IMAGE", help="containers, kubernetes: deploy this prebuilt image (instead of run.image)")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None, help="override strategy.type")
@click.option("--detach", is_flag=True, help="return once the deployment has started")
@json_option
@pass_ctx
def deploy(c: Ctx, version: str | None, artifact: str | None, image: str | None, strategy: str | None, detach: bool) -> None:
    """Build (if configured), store the release and roll it out with the configured strategy."""
    import os

    req = DeployRequest(version, os.path.abspath(artifact) if artifact else None, strategy, image, follow=not detach)
    if detach:
        res = c.client.post("/deploy", req.to_json())
        c.print_json(res) if c.json else c.say(f"deployment #{res['deployment']} started")
        return
    follow(c, "/deploy", req.to_json())


@click.command()
@click.option("--to", "to", default=None, metavar="RELEASE", help="a kept release (default: the previous good one)")
@json_option
@pass_ctx
def rollback(c: Ctx, to: str | None) -> None:
    """Go back to the previous release (instant while it is warm)."""
    do_rollback(c, to)


def _steer(action: str, help_text: str):
    @click.command(name=action, help=help_text)
    @json_option
    @pass_ctx
    def cmd(c: Ctx, **kw) -> None:
        steer(c, "promote_full" if kw.get("full") else action)

    if action == "promote":
        cmd = click.option("--full", is_flag=True, help="skip the remaining steps: 100% now")(cmd)
    return cmd


promote = _steer("promote", "Move a paused canary (or blue-green) to its next step.")
abort = _steer("abort", "Stop the running deployment: all traffic back to the stable release.")
pause = _steer("pause", "Hold the running rollout at its current step.")
resume = _steer("resume", "Go on with a paused rollout.")

COMMANDS = [deploy, rollback, promote, abort, pause, resume]
