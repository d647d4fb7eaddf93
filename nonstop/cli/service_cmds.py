"""``nonstop service install`` / ``uninstall``: the app's systemd units (``nonstop.service`` renders them).

Where systemd runs (``/run/systemd/system``) and the units go to its own
directory, ``install`` also runs ``systemctl daemon-reload`` and ``enable``
(``--now``: and starts them), ``uninstall`` runs ``disable --now`` before it
removes the files. Anywhere else (``--unit-dir``, a container, a build
machine) the files are written and the commands are printed for later.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import click

from nonstop.cli.context import Ctx
from nonstop.cli.options import json_option, pass_ctx
from nonstop.errors import UsageError
from nonstop.files import write_atomic

DEFAULT_UNIT_DIR = "/etc/systemd/system"


def systemd_running() -> bool:
    """Whether systemd is this machine's init (sd_booted(3))."""
    return os.path.isdir("/run/systemd/system")


@click.group()
def service() -> None:
    """systemd units that keep nonstop running across reboots and own the listening sockets."""


@service.command()
@click.option("--user", "user", default=None, metavar="USER",
              help="run the agent as USER (default: $SUDO_USER, else you)")
@click.option("--unit-dir", default=DEFAULT_UNIT_DIR, show_default=True, metavar="DIR", help="where to write the units")
@click.option("--print", "print_only", is_flag=True, help="print the units; write nothing")
@click.option("--now", "start_now", is_flag=True, help="also start them (systemctl enable --now)")
@click.option("--force", is_flag=True, help="overwrite units of the same name that nonstop did not write")
@json_option
@pass_ctx
def install(c: Ctx, user: str | None, unit_dir: str, print_only: bool, start_now: bool, force: bool) -> None:
    """Write (and enable) the systemd units of this app."""
    from nonstop import service as svc

    cfg = c.cfg
    account = _account(user)
    spec = svc.spec_for(cfg, user=account.pw_name, group=grp.getgrgid(account.pw_gid).gr_name,
                        uid=account.pw_uid, exec_argv=_exec_argv(cfg.source))
    units = svc.render(spec)
    if print_only:
        if c.json:
            c.print_json({"units": units})
        else:
            for name, text in units.items():
                click.echo(f"# --- {name}\n{text}")
        return
    d = _unit_dir(unit_dir)
    stale = [n for n in svc.unit_names(cfg.app) if n not in units and (d / n).exists()]
    for name in [*units, *stale]:
        _check_ours(d / name, force=force and name in units)
    for name, text in units.items():
        _write(d / name, text)
    for name in stale:  # an https socket left from an install when tls was configured
        _remove(d / name)
    order = [s.unit for s in spec.sockets] + [spec.service]
    steps = [["systemctl", "daemon-reload"], ["systemctl", "enable", *(["--now"] if start_now else []), *order]]
    ran = _maybe_run(steps, unit_dir)
    written = [str(d / n) for n in units]
    if c.json:
        c.print_json({"units": written, "removed": [str(d / n) for n in stale], "user": account.pw_name,
                      "systemctl": steps, "ran": ran})
        return
    for p in written:
        click.echo(f"wrote {p}")
    owner = _owner(cfg.state_path)
    if owner is not None and owner != account.pw_uid:
        click.echo(f"note: {cfg.state_path} belongs to uid {owner}, the service runs as {account.pw_name}: "
                   f"chown -R {account.pw_name} {cfg.state_path}")
    for n in stale:
        click.echo(f"removed {d / n}")
    if ran:
        click.echo("enabled: " + " ".join(order) + (" (started)" if start_now else ""))
    if not ran or not start_now:
        _say_next(steps if not ran else [], start=[] if start_now else ["systemctl", "start", *order])


@service.command()
@click.option("--unit-dir", default=DEFAULT_UNIT_DIR, show_default=True, metavar="DIR", help="where the units are")
@json_option
@pass_ctx
def uninstall(c: Ctx, unit_dir: str) -> None:
    """Stop, disable and remove the systemd units of this app (instances stop: like `nonstop down`)."""
    from nonstop import service as svc

    app = _app_name(c.config_file)
    d = _unit_dir(unit_dir)
    present = [n for n in svc.unit_names(app) if (d / n).exists()]
    for name in present:
        _check_ours(d / name, force=False)
    ran = _maybe_run([["systemctl", "disable", "--now", *present]], unit_dir) if present else False
    for name in present:
        _remove(d / name)
    reload = [["systemctl", "daemon-reload"]]
    ran = (_maybe_run(reload, unit_dir) or ran) if present else False
    if c.json:
        c.print_json({"removed": [str(d / n) for n in present], "ran": ran})
        return
    if not present:
        click.echo(f"no units of {app} in {d}")
        return
    for n in present:
        click.echo(f"removed {d / n}")
    if not ran:
        _say_next([["systemctl", "disable", "--now", *present], *reload], start=[])


# -- helpers ---------------------------------------------------------------------------


def _account(user: str | None) -> pwd.struct_passwd:
    name = user or os.environ.get("SUDO_USER") or None
    try:
        return pwd.getpwnam(name) if name else pwd.getpwuid(os.getuid())
    except KeyError:
        raise UsageError(f"--user: no such user on this machine: {name!r}") from None


def _app_name(path: Path) -> str:
    """The ``app`` of the config, read without validating the rest (uninstall works on a config mid-edit)."""
    import re

    from nonstop import configfile
    from nonstop.errors import ConfigError

    app = configfile.read(path).get("app")
    if not isinstance(app, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", app):
        raise ConfigError("expected the app's name (letters, digits, _ . -)", file=str(path), field="app")
    return app


def _exec_argv(config: str | None) -> list[str]:
    """The agent in the foreground through the CLI of this very installation (a venv's, by absolute path)."""
    # not resolved: a venv's python is a symlink, and through its target the venv is gone
    python = os.path.abspath(sys.executable)
    script = os.path.join(os.path.dirname(python), "nonstop")
    head = [script] if os.access(script, os.X_OK) else [python, "-m", "nonstop.cli"]
    return [*head, "--config", str(config), "up"]


def _owner(path: Path) -> int | None:
    try:
        return path.stat().st_uid
    except OSError:
        return None


def _unit_dir(path: str) -> Path:
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"no systemd unit directory at {d} (is systemd this machine's init? pass --unit-dir DIR)")
    return d


def _check_ours(path: Path, *, force: bool) -> None:
    from nonstop.service import MARKER

    if force or not path.exists():
        return
    try:
        first = path.read_text(errors="replace").split("\n", 1)[0]
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if first != MARKER:
        raise UsageError(f"{path} exists and was not written by nonstop: move it away (or pass --force to install)")


def _write(path: Path, text: str) -> None:
    try:
        write_atomic(path, text, 0o644)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror} (units in {path.parent} are installed as root: "
                         "sudo nonstop service install)") from None


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise UsageError(f"cannot remove {path}: {e.strerror} (sudo nonstop service uninstall)") from None


def _maybe_run(steps: list[list[str]], unit_dir: str) -> bool:
    """Run ``steps`` when they would reach the systemd that reads ``unit_dir``; ``False`` when not run."""
    if os.path.realpath(unit_dir) != os.path.realpath(DEFAULT_UNIT_DIR) or not systemd_running():
        return False
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return False
    for argv in steps:
        done = subprocess.run([systemctl, *argv[1:]], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise UsageError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")
    return True


def _say_next(steps: list[list[str]], *, start: list[str]) -> None:
    lines = [" ".join(s) for s in steps] + ([" ".join(start)] if start else [])
    if lines:
        click.echo("next:\n  " + "\n  ".join(lines))


COMMANDS = [service]
