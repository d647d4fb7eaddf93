"""``nonstop status``, ``history``, ``logs``: read-only views.

``status`` asks the agent (exit 3 when it is not running). ``history`` asks
the agent and, when it does not answer, reads the state dir; ``logs`` reads
the log files in the state dir either way (``offline``). With runtime
kubernetes the history and the logs are the cluster's: asked of the agent,
and of the cluster itself when no agent runs (``cluster_view``).
"""

from __future__ import annotations

import click

from nonstop.cli.context import Ctx
from nonstop.cli.options import json_option, pass_ctx
from nonstop.errors import AgentUnreachable


@click.command()
@json_option
@pass_ctx
def status(c: Ctx) -> None:
    """Live release, traffic split, instances and their health, deployment in progress (kubernetes: the cluster's
    picture; exit 3 when the cluster does not answer)."""
    st = c.client.get("/status")
    cluster_down = st.get("runtime") == "kubernetes" and not (st.get("cluster") or {}).get("reachable", True)
    if c.json:
        c.print_json(st)
    else:
        from nonstop.cli import render

        (render.kube_status if st.get("runtime") == "kubernetes" else render.status)(c.console, st)
    if cluster_down:  # the agent answers, the cluster does not: shown above, and exit 3 for scripts
        raise SystemExit(AgentUnreachable.exit_code)


@click.command()
@click.option("-n", "--limit", default=20, show_default=True, help="deployments to show")
@json_option
@pass_ctx
def history(c: Ctx, limit: int) -> None:
    """Releases and deployments with outcome and timings (from the state dir when the agent is not running)."""
    try:
        h = c.client.get("/history", limit=limit)
    except AgentUnreachable:
        if c.runtime == "kubernetes":
            h = cluster_view(c, "history", limit=limit)
        else:
            from nonstop.cli import offline

            h = offline.history(c.state, limit)
    if c.json:
        return c.print_json(h)
    from nonstop.cli import render

    render.history(c.console, h)


@click.command()
@click.argument("release", required=False)
@click.option("-n", "--lines", default=100, show_default=True, help="lines from the end of each log")
@json_option
@pass_ctx
def logs(c: Ctx, release: str | None, lines: int) -> None:
    """Instance logs of RELEASE (default: the one that last went live); `agent` or `proxy` for theirs.

    Read from the state dir's logs/ folder: the agent need not run (kubernetes: the pods' logs, from the cluster)."""
    from nonstop.cli import offline

    if c.runtime == "kubernetes" and release not in ("agent", "proxy"):
        try:  # the pods' logs, through the agent; from the cluster directly when none runs
            found = c.client.get("/logs", release=release, lines=lines)
        except AgentUnreachable:
            found = cluster_view(c, "logs", release=release, lines=lines)
    else:
        found = offline.logs(c.state, release, lines)
    if c.json:
        return c.print_json(found)
    click.echo(offline.logs_text(found), nl=False)


def cluster_view(c: Ctx, what: str, **kw) -> dict:
    """``history`` or ``logs`` read from the cluster by this process (no agent runs): the same answer the agent
    gives, since both live in the cluster (``ClusterUnreachable``, exit 3, when it does not answer)."""
    from nonstop.agent.kubernetes import state as st
    from nonstop.agent.kubernetes.client import connect
    from nonstop.agent.kubernetes.logs import pod_logs
    from nonstop.agent.kubernetes.views import history_json

    cfg = c.cfg
    client = connect(cfg)
    try:
        if what == "logs":
            return pod_logs(client, cfg, kw["release"], kw["lines"])
        return {**history_json(st.read(client, cfg)[0], kw["limit"]), "offline": f"the cluster (context {client.context})"}
    finally:
        client.close()


COMMANDS = [status, history, logs]
