"""What the deployment verbs do, without click: ``follow`` a deployment's event stream, ``rollback``,
``steer`` a rollout. The click commands (``deploy_cmds``) and the quick path (``quick``) both call these."""

from __future__ import annotations

from nonstop.cli.context import Ctx
from nonstop.errors import DeploymentFailed
from nonstop.protocol import RollbackRequest, SteerRequest


def follow(c: Ctx, path: str, body: dict) -> None:
    """Stream a deployment's events; exit 0 when it went live, 1 otherwise."""
    events = []
    result = None
    progress = None
    stream = c.client.stream(path, body)
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
        # 1: failed, traffic on the previous release; the agent names another code when the cause was another
        # (a cluster's Lease taken by another machine in between: 4)
        raise SystemExit(int(result.get("exit_code") or 1))


def _progress(c: Ctx):
    if c.err.is_terminal:
        from nonstop.cli.watch import DeployView  # lines scroll; a live panel shows step, weight, analysis

        return DeployView(c.err)
    from nonstop.cli.render import Progress

    return Progress(c.err)


def rollback(c: Ctx, to: str | None) -> None:
    follow(c, "/rollback", RollbackRequest(to).to_json())


def steer(c: Ctx, action: str) -> None:
    """promote, promote_full, abort, pause or resume the running deployment."""
    res = c.client.post("/steer", SteerRequest(action).to_json())
    if c.json:
        c.print_json(res)
    else:
        c.say(f"✓ {action.replace('_', ' ')} sent to deployment #{res['deployment']}")
