"""``nonstop init``, ``up``, ``down``: write a config; start and stop the agent and proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from nonstop import __version__
from nonstop.cli.context import Ctx
from nonstop.cli.options import json_option, pass_ctx
from nonstop.errors import AgentUnreachable, ConfigError, NonstopError

DASHBOARD_PORT = 9900


@click.command()
@click.option("--app", default=None, help="app name (default: this folder's name)")
@click.option("--force", is_flag=True, help="overwrite an existing nonstop.yml")
@json_option
@pass_ctx
def init(c: Ctx, app: str | None, force: bool) -> None:
    """Write a commented nonstop.yml in this folder."""
    from nonstop import config as configmod

    path = Path(c.config_path or configmod.CONFIG_NAME)
    if path.exists() and not force:
        raise ConfigError("already exists (use --force to overwrite)", file=str(path))
    name = app or "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in Path.cwd().name).strip("-.") or "app"
    port = _free_dashboard_port()
    path.write_text(configmod.TEMPLATE.format(app=name, dashboard_port=port))
    if c.json:
        c.print_json({"wrote": str(path), "app": name, "dashboard": f"127.0.0.1:{port}"})
    else:
        click.echo(f"wrote {path} (dashboard on 127.0.0.1:{port})")


def _free_dashboard_port() -> int:
    """9900, or the next port free on loopback: a second app on this machine gets its own dashboard."""
    from nonstop.agent.preflight.ports import bind_error

    for port in range(DASHBOARD_PORT, DASHBOARD_PORT + 100):
        if bind_error("127.0.0.1", port) is None:
            return port
    return DASHBOARD_PORT  # all taken: `nonstop check` / `up` name it


@click.command()
@click.option("-d", "--detach", is_flag=True, help="return once the proxy accepts connections; the agent runs in the background")
@click.option("--timeout", default=None, type=float, help="seconds to wait for the agent with --detach (default: health.startup_timeout + 30)")
@json_option
@pass_ctx
def up(c: Ctx, detach: bool, timeout: float | None) -> None:
    """Start the proxy and the agent (and the last live release, if any)."""
    cfg = c.cfg
    if c.client.alive():
        running = c.client.get("/ping").get("version")
        if running == __version__:
            _report_up(c, c.client.get("/status"), already=True)
            return
        if _replace_agent(c, running):  # an agent of another nonstop version: this one takes over, gapless
            _report_up(c, c.client.get("/status"), already=False)
            return
    from nonstop.agent import preflight

    # Every reason it could not work (ports taken, a missing program, a config the router refuses), at once
    # and before anything starts: exit 2. The agent checks again itself (when started another way).
    preflight.refuse(asyncio.run(preflight.startup(cfg)))
    argv = [sys.executable, "-m", "nonstop.agent", "--config", str(Path(cfg.source))]
    if not detach:
        # Foreground: the agent replaces this process; Ctrl-C stops everything (like `docker compose up`).
        os.execv(sys.executable, argv + ["--down-on-signal"])
    logs = cfg.state_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "agent.log", "ab") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    limit = timeout if timeout is not None else cfg.health.startup_timeout + 30
    deadline = time.monotonic() + limit
    with c.err.status("starting the agent and the proxy…"):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (logs / "agent.log").read_text(errors="replace")[-1500:]
                if proc.returncode == ConfigError.exit_code:  # it refused its config, or what it names
                    raise ConfigError(f"the agent refused to start:\n{tail}", file=str(cfg.source))
                if proc.returncode == AgentUnreachable.exit_code:  # what it needs does not answer (a cluster's API server)
                    raise AgentUnreachable(f"the agent could not start:\n{tail}")
                raise NonstopError(f"the agent exited at start (code {proc.returncode}):\n{tail}")
            if c.client.alive():
                break
            time.sleep(0.1)
        else:
            raise AgentUnreachable(f"the agent did not answer within {limit:g}s (log: {logs / 'agent.log'})")
    _report_up(c, c.client.get("/status"), already=False)


def _replace_agent(c: Ctx, running: str | None) -> bool:
    """Stop an agent of an older nonstop so that this version's starts in its place (the package was
    upgraded). Its proxy and instances keep serving; the new agent adopts them and replaces the proxy by
    a socket hand-over. Refused while a deployment runs (exit 4) or when the running agent is newer."""
    from nonstop import version_tuple
    from nonstop.errors import DeploymentInProgress, UsageError

    shown = running or "a version from before 0.2.0"
    if version_tuple(running) > version_tuple(__version__):
        raise UsageError(f"the running agent is nonstop {shown}, newer than this one ({__version__}): "
                         "run the newer nonstop, or `nonstop down` first")
    st = c.client.get("/status")
    dep = st.get("deployment")
    if dep and dep.get("state") in ("pending", "progressing", "paused"):
        raise DeploymentInProgress(
            f"deployment #{dep['id']} of {dep['release']} ({dep['strategy']}) is in progress under nonstop {shown}: "
            "upgrade when it has finished")
    pid = (st.get("agent") or {}).get("pid")
    c.say(f"upgrading nonstop {shown} → {__version__}: the proxy and the instances keep serving")
    if version_tuple(running) >= (0, 2):
        # it starts again in place from the code installed now (SIGHUP, as `systemctl reload` does)
        started = (st.get("agent") or {}).get("started_at")
        os.kill(int(pid), signal.SIGHUP)
        deadline = time.monotonic() + 60
        now_running = None
        while time.monotonic() < deadline:
            try:
                ping = c.client.get("/ping") if c.client.alive() else {}
            except NonstopError:
                ping = {}
            if ping.get("started_at") not in (None, started):  # the agent has started again
                now_running = ping.get("version")
                break
            time.sleep(0.1)
        if now_running != __version__:
            raise NonstopError(f"the agent (pid {pid}) started again as nonstop {now_running or '?'}, not {__version__}: "
                               "it runs from another installation than this command")
        return True  # upgraded in place: nothing left to start
    try:
        os.kill(int(pid), signal.SIGTERM)  # a 0.1 agent stopped by signal leaves the proxy and instances running
    except (ProcessLookupError, TypeError, ValueError):
        pass
    deadline = time.monotonic() + 30
    while c.client.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if c.client.alive():
        raise AgentUnreachable(f"the nonstop {shown} agent (pid {pid}) did not stop within 30s")
    return False  # stopped: `up` starts this version's agent


def _report_up(c: Ctx, st: dict, *, already: bool) -> None:
    if c.json:
        c.print_json({"running": True, "already": already, **st})
        return
    live = st.get("live_release") or "no release yet (run `nonstop deploy`)"
    word = "already running" if already else "up"
    if st.get("runtime") == "kubernetes":
        k = st.get("cluster") or {}
        where = f"cluster {k.get('context')} ({k.get('server')}), namespace {k.get('namespace')}"
        c.console.print(f"[green]✓[/] nonstop {word}: {st['app']} on {where}  live: {live}  (agent pid {st['agent']['pid']})",
                        markup=True, highlight=False)
        return
    c.console.print(f"[green]✓[/] nonstop {word}: {st['app']} on http://{st['listen']}  live: {live}  (agent pid {st['agent']['pid']})")


@click.command()
@json_option
@pass_ctx
def down(c: Ctx) -> None:
    """Drain and stop the instances, the proxy and the agent (from the state dir when the agent is not running)."""
    from nonstop.agent.preflight.statedir import agent_pid

    pid = agent_pid(c.state)
    try:
        with c.err.status("draining and stopping…"):
            c.client.post("/down")
            deadline = time.monotonic() + 30
            while pid and time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.05)
    except AgentUnreachable:
        return _down_offline(c, pid)
    if c.json:
        c.print_json({"running": False, "agent": True})
    elif c.runtime == "kubernetes":
        c.console.print("[green]✓[/] nonstop down: the agent stopped; the app keeps running in the cluster")
    else:
        c.console.print("[green]✓[/] nonstop down: instances, proxy and agent stopped")


def _down_offline(c: Ctx, pid: int | None) -> None:
    """No agent answers: stop what it left running (a crash), or say nothing runs."""
    from nonstop.cli import offline

    if pid is not None:  # there, but not answering its socket: stop it first (its SIGTERM leaves the rest running)
        import psutil

        try:
            p = psutil.Process(pid)
            p.terminate()
            p.wait(15)
        except (psutil.Error, psutil.TimeoutExpired):
            pass
    with c.err.status("the agent is not running: stopping what it left…"):
        stopped = asyncio.run(offline.down(c.state, offline.DownSettings.read(c.config_file)))
    nothing = not stopped["router"] and not stopped["instances"] and pid is None
    if c.json:
        c.print_json({"running": False, "agent": False, "was_running": not nothing, "stopped": stopped})
    elif nothing:
        c.say("nonstop is not running (nothing to stop)")
    else:
        parts = [f"the router (pid {', '.join(map(str, stopped['router']))})"] if stopped["router"] else []
        if stopped["instances"]:
            parts.append(f"{len(stopped['instances'])} instance(s): {', '.join(stopped['instances'])}")
        what = " and ".join(parts) or "the agent"
        c.console.print(f"[green]✓[/] nonstop down: the agent was not answering; stopped {what}")


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


COMMANDS = [init, up, down]
