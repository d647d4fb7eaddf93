"""``nonstop init``, ``up``, ``down``: write a config; start and stop the agent and proxy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

from nonstop.cli.context import Ctx
from nonstop.cli.options import json_option, pass_ctx
from nonstop.errors import AgentUnreachable, ConfigError, NonstopError


@click.command()
@click.option("--app", default=None, help="app name (default: this folder's name)")
@click.option("--force", is_flag=True, help="overwrite an existing nonstop.yml")
@pass_ctx
def init(c: Ctx, app: str | None, force: bool) -> None:
    """Write a commented nonstop.yml in this folder."""
    from nonstop import config as configmod

    path = Path(c.config_path or configmod.CONFIG_NAME)
    if path.exists() and not force:
        raise ConfigError("already exists (use --force to overwrite)", file=str(path))
    name = app or "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in Path.cwd().name).strip("-.") or "app"
    path.write_text(configmod.TEMPLATE.format(app=name))
    click.echo(f"wrote {path}")


@click.command()
@click.option("-d", "--detach", is_flag=True, help="return once the proxy accepts connections; the agent runs in the background")
@click.option("--timeout", default=None, type=float, help="seconds to wait for the agent with --detach (default: health.startup_timeout + 30)")
@json_option
@pass_ctx
def up(c: Ctx, detach: bool, timeout: float | None) -> None:
    """Start the proxy and the agent (and the last live release, if any)."""
    cfg = c.cfg
    if c.client.alive():
        st = c.client.get("/status")
        _report_up(c, st, already=True)
        return
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
                raise NonstopError(f"the agent exited at start (code {proc.returncode}):\n{tail}")
            if c.client.alive():
                break
            time.sleep(0.1)
        else:
            raise AgentUnreachable(f"the agent did not answer within {limit:g}s (log: {logs / 'agent.log'})")
    _report_up(c, c.client.get("/status"), already=False)


def _report_up(c: Ctx, st: dict, *, already: bool) -> None:
    if c.json:
        c.print_json({"running": True, "already": already, **st})
        return
    live = st.get("live_release") or "no release yet (run `nonstop deploy`)"
    word = "already running" if already else "up"
    c.console.print(f"[green]✓[/] nonstop {word}: {st['app']} on http://{st['listen']}  live: {live}  (agent pid {st['agent']['pid']})")


@click.command()
@json_option
@pass_ctx
def down(c: Ctx) -> None:
    """Drain and stop the instances, the proxy and the agent."""
    pid_file = c.state / "agent.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    with c.err.status("draining and stopping…"):
        c.client.post("/down")
        deadline = time.monotonic() + 30
        while pid and time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
    if c.json:
        c.print_json({"running": False})
    else:
        c.console.print("[green]✓[/] nonstop down: instances, proxy and agent stopped")


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


COMMANDS = [init, up, down]
