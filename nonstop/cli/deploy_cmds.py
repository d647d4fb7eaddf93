"""``nonstop deploy``, ``rollback``, and the steering verbs ``promote / abort / pause / resume``."""

from __future__ import annotations

import click

from nonstop.cli.context import Ctx, json_option, pass_ctx
from nonstop.errors import DeploymentFailed


def _follow(c: Ctx, path: str, body: dict, client=None) -> None:
    """Stream a deployment's events; exit 0 when it went live, 1 otherwise."""
    events = []
    result = None
    progress = None
    stream = (client or c.client).stream(path, body)
    try:
        for ev in stream:  # the request goes out first; the terminal view (rich) loads after it
            if progress is None and not c.json:
                progress = _progress(c)
            events.append(ev)
            if progress:
                progress.event(ev)
            if ev.get("type") == "result":
                result = ev
    except KeyboardInterrupt:
        if progress:
            progress.close()
        c.err.print("interrupted: the deployment goes on in the agent (see `nonstop status`, `nonstop abort`)")
        raise SystemExit(130)
    finally:
        if progress:
            progress.close()
    if result is None:
        raise DeploymentFailed("the agent closed the stream before the deployment ended (see `nonstop status`)")
    if c.json:
        c.print_json({"ok": result.get("ok"), "deployment": result.get("deployment"), "state": result.get("state"),
                      "release": result.get("release"), "reason": result.get("reason"), "seconds": result.get("seconds"),
                      "detail": result.get("detail", {}), "events": events})
    if not result.get("ok"):
        raise SystemExit(1)


def _progress(c: Ctx):
    if c.err.is_terminal:
        from nonstop.cli.watch import DeployView  # lines scroll; a live panel shows step, weight, analysis

        return DeployView(c.err)
    from nonstop.cli.render import Progress

    return Progress(c.err)


@click.command()
@click.option("--version", "version", default=None, help="version name of the release (default: a timestamp + git sha)")
@click.option("--artifact", type=click.Path(), default=None, help="the file or folder to deploy (copied into releases/<id>/)")
@click.option("--strategy", type=click.Choice(["recreate", "blue-green", "canary", "rolling"]), default=None, help="override strategy.type")
@click.option("--detach", is_flag=True, help="return once the deployment has started")
@json_option
@pass_ctx
def deploy(c: Ctx, version: str | None, artifact: str | None, strategy: str | None, detach: bool) -> None:
    """Build (if configured), store the release and roll it out with the configured strategy."""
    import os

    body = {"version": version, "artifact": os.path.abspath(artifact) if artifact else None, "strategy": strategy}
    if detach:
        res = c.client.post("/deploy", {**body, "follow": False})
        c.print_json(res) if c.json else c.say(f"deployment #{res['deployment']} started")
        return
    _follow(c, "/deploy", body)


@click.command()
@click.option("--to", "to", default=None, metavar="RELEASE", help="a kept release (default: the previous good one)")
@json_option
@pass_ctx
def rollback(c: Ctx, to: str | None) -> None:
    """Go back to the previous release (instant while it is warm)."""
    _follow(c, "/rollback", {"to": to}, client=c.incident_client)


def _steer(action: str, help_text: str):
    @click.command(name=action, help=help_text)
    @json_option
    @pass_ctx
    def cmd(c: Ctx, **kw) -> None:
        act = "promote_full" if kw.get("full") else action
        res = c.incident_client.post("/steer", {"action": act})
        if c.json:
            c.print_json(res)
        else:
            c.say(f"✓ {act.replace('_', ' ')} sent to deployment #{res['deployment']}")

    if action == "promote":
        cmd = click.option("--full", is_flag=True, help="skip the remaining steps: 100% now")(cmd)
    return cmd


promote = _steer("promote", "Move a paused canary (or blue-green) to its next step.")
abort = _steer("abort", "Stop the running deployment: all traffic back to the stable release.")
pause = _steer("pause", "Hold the running rollout at its current step.")
resume = _steer("resume", "Go on with a paused rollout.")

COMMANDS = [deploy, rollback, promote, abort, pause, resume]
