"""``nonstop service install`` / ``uninstall`` and the units they write, checked by ``systemd-analyze verify``."""

from __future__ import annotations

import configparser
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nonstop import config as configmod
from nonstop import service as svc
from nonstop.service import MARKER

ME = pwd.getpwuid(os.getuid()).pw_name

BASE = """\
app: shop
listen: {listen}
run:
  command: java -jar app.jar --server.port={{port}}
  ports: 8081-8082
"""
TLS = """\
tls:
  listen: "{tls}"
  acme: {{email: ops@example.com, domains: [shop.example.com]}}
  redirect_http: true
"""


def write_config(d: Path, *, listen: str = "0.0.0.0:80", tls: str | None = "[::]:443", extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    text = BASE.format(listen=listen) + (TLS.format(tls=tls) if tls else "") + extra
    (d / "nonstop.yml").write_text(text)
    return d / "nonstop.yml"


def run(cwd: Path, *args: str):
    r = subprocess.run([sys.executable, "-m", "nonstop", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                       env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    return r.returncode, r.stdout, r.stderr


def verify(*files: Path) -> subprocess.CompletedProcess:
    """systemd's own parser on the units, without systemd as PID 1 (no man pages, no generators)."""
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze (Debian's systemd package) is needed"
    return subprocess.run([exe, "verify", "--man=no", "--generators=no", *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def units_of(path: Path) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    p.optionxform = str
    p.read(path)
    return p


def test_written_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    write_config(tmp_path / "app")
    units = tmp_path / "units"
    units.mkdir()
    code, out, err = run(tmp_path / "app", "service", "install", "--unit-dir", str(units), "--user", ME)
    assert code == 0, err
    files = sorted(units.iterdir())
    assert [f.name for f in files] == ["nonstop-shop-https.socket", "nonstop-shop.service", "nonstop-shop.socket"]
    assert all(f.read_text().startswith(MARKER + "\n") for f in files)
    v = verify(*files)
    assert v.returncode == 0 and v.stderr == "", v.stderr
    assert "systemctl daemon-reload" in out and "systemctl enable nonstop-shop.socket nonstop-shop-https.socket " \
        "nonstop-shop.service" in out  # no systemd here: the commands are printed, not run


def test_the_service_runs_the_agent_in_the_foreground(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "app", tls=None)
    units = tmp_path / "units"
    units.mkdir()
    assert run(tmp_path / "app", "service", "install", "--unit-dir", str(units))[0] == 0
    s = units_of(units / "nonstop-shop.service")["Service"]
    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    assert s["ExecStart"] == f"{venv_bin}/nonstop --config {cfg_path} up"  # `up` without --detach
    assert s["User"] == ME and s["Restart"] == "on-failure" and s["KillMode"] == "process"
    assert s["WorkingDirectory"] == str(tmp_path / "app")
    assert s["Sockets"] == "nonstop-shop.socket"
    assert s["TimeoutStopSec"] == "90s"  # drain_timeout 30 + stop_timeout 30 + 30
    u = units_of(units / "nonstop-shop.service")["Unit"]
    assert "network-online.target" in u["After"] and u["Wants"] == "network-online.target"
    assert u["Requires"] == "nonstop-shop.socket"
    assert not (units / "nonstop-shop-https.socket").exists()


def test_socket_units_own_listen_and_tls_listen(tmp_path: Path) -> None:
    cfg = configmod.load(write_config(tmp_path, listen=":80", tls="10.1.2.3:443"))
    spec = svc.spec_for(cfg, user="app", group="app", uid=1000, exec_argv=["/opt/ns/bin/nonstop", "up"])
    units = svc.render(spec)
    http = configparser.ConfigParser(interpolation=None)
    http.read_string(units["nonstop-shop.socket"])
    https = configparser.ConfigParser(interpolation=None)
    https.read_string(units["nonstop-shop-https.socket"])
    assert http["Socket"]["ListenStream"] == "0.0.0.0:80" and http["Socket"]["FileDescriptorName"] == "http"
    assert https["Socket"]["ListenStream"] == "10.1.2.3:443" and https["Socket"]["FileDescriptorName"] == "https"
    for u in (http, https):
        assert u["Socket"]["Service"] == "nonstop-shop.service" and u["Install"]["WantedBy"] == "sockets.target"
    assert "AmbientCapabilities" not in units["nonstop-shop.service"]  # systemd binds 80/443, not nonstop


def test_nginx_binds_for_itself_so_no_socket_unit_but_the_capability(tmp_path: Path) -> None:
    cfg = configmod.load(write_config(tmp_path, tls=None, extra="router: {type: nginx}\n"))
    units = svc.render(svc.spec_for(cfg, user="app", group="app", uid=1000, exec_argv=["/x/nonstop", "up"]))
    assert list(units) == ["nonstop-shop.service"]
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in units["nonstop-shop.service"]
    assert "Sockets=" not in units["nonstop-shop.service"]
    as_root = svc.render(svc.spec_for(cfg, user="root", group="root", uid=0, exec_argv=["/x/nonstop", "up"]))
    assert "AmbientCapabilities" not in as_root["nonstop-shop.service"]


def test_awkward_paths_survive_systemds_parser(tmp_path: Path) -> None:
    """A space, a % and a $ in the config's path: quoted and escaped so systemd reads them back."""
    d = tmp_path / "my app 100% $HOME"
    cfg = configmod.load(write_config(d))
    exe = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "nonstop")
    units = svc.render(svc.spec_for(cfg, user=ME, group=ME, uid=os.getuid(), exec_argv=[exe, "--config", str(cfg.source), "up"]))
    out = tmp_path / "units"
    out.mkdir()
    for name, text in units.items():
        (out / name).write_text(text)
    assert 'ExecStart=' + exe + ' --config "' + str(d).replace("%", "%%").replace("$", "$$") + '/nonstop.yml" up' \
        in units["nonstop-shop.service"]
    v = verify(*sorted(out.iterdir()))
    assert v.returncode == 0 and v.stderr == "", v.stderr


def test_install_and_uninstall_round_trip(tmp_path: Path) -> None:
    app = tmp_path / "app"
    write_config(app)
    units = tmp_path / "units"
    units.mkdir()
    (units / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    assert run(app, "service", "install", "--unit-dir", str(units))[0] == 0
    code, out, err = run(app, "service", "install", "--unit-dir", str(units), "--json")  # again: same files
    assert code == 0, err
    body = json.loads(out)
    assert sorted(Path(p).name for p in body["units"]) == ["nonstop-shop-https.socket", "nonstop-shop.service",
                                                           "nonstop-shop.socket"]
    assert body["ran"] is False and body["user"] == ME
    # tls removed from the config: its socket unit goes on the next install
    write_config(app, tls=None)
    code, out, err = run(app, "service", "install", "--unit-dir", str(units))
    assert code == 0 and "removed" in out and not (units / "nonstop-shop-https.socket").exists()
    code, out, err = run(app, "service", "uninstall", "--unit-dir", str(units))
    assert code == 0, err
    assert sorted(p.name for p in units.iterdir()) == ["other.service"]  # only ours went
    assert "systemctl disable --now nonstop-shop.service nonstop-shop.socket" in out
    code, out, _ = run(app, "service", "uninstall", "--unit-dir", str(units))
    assert code == 0 and "no units of shop" in out


def test_print_writes_nothing(tmp_path: Path) -> None:
    write_config(tmp_path)
    code, out, err = run(tmp_path, "service", "install", "--print", "--unit-dir", str(tmp_path / "absent"))
    assert code == 0, err
    assert "# --- nonstop-shop.service" in out and "ListenStream=[::]:443" in out
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("case, words", [
    ("no_unit_dir", "no systemd unit directory at"),
    ("unknown_user", "--user: no such user on this machine: 'no-such-user-here'"),
    ("foreign_unit", "exists and was not written by nonstop"),
    ("config_error", "run.command"),
    ("host_name", "listen: systemd binds IP addresses, not names"),
])
def test_refusals_exit_2_and_change_nothing(tmp_path: Path, case: str, words: str) -> None:
    app = tmp_path / "app"
    write_config(app, listen="localhost:8080" if case == "host_name" else "0.0.0.0:80")
    units = tmp_path / "units"
    units.mkdir()
    args = ["service", "install", "--unit-dir", str(units)]
    if case == "no_unit_dir":
        args[-1] = str(tmp_path / "nope")
    elif case == "unknown_user":
        args += ["--user", "no-such-user-here"]
    elif case == "foreign_unit":
        (units / "nonstop-shop.socket").write_text("[Socket]\nListenStream=80\n")
    elif case == "config_error":
        (app / "nonstop.yml").write_text("app: shop\nrun:\n  command: java -jar app.jar\n")
    code, out, err = run(app, *args)
    assert code == 2, (out, err)
    assert words in err and "Traceback" not in err
    left = sorted(p.name for p in units.iterdir())
    assert left == (["nonstop-shop.socket"] if case == "foreign_unit" else [])
    if case == "foreign_unit":
        assert (units / "nonstop-shop.socket").read_text() == "[Socket]\nListenStream=80\n"
        code, _, err = run(app, "service", "uninstall", "--unit-dir", str(units))
        assert code == 2 and "not written by nonstop" in err


def test_systemctl_steps_where_systemd_runs(tmp_path: Path, monkeypatch) -> None:
    """systemd cannot be PID 1 here: a stand-in ``systemctl`` on PATH records what would be run."""
    from nonstop.cli import service_cmds
    from nonstop.cli.app import cli

    app = tmp_path / "app"
    cfg = write_config(app)
    units = tmp_path / "etc-systemd-system"
    units.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "systemctl.log"
    (bindir / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setattr(service_cmds, "DEFAULT_UNIT_DIR", str(units))
    monkeypatch.setattr(service_cmds, "systemd_running", lambda: True)
    r = CliRunner().invoke(cli, ["-c", str(cfg), "service", "install", "--unit-dir", str(units), "--now"])
    assert r.exit_code == 0, r.output
    assert "enabled: nonstop-shop.socket nonstop-shop-https.socket nonstop-shop.service (started)" in r.output
    r = CliRunner().invoke(cli, ["-c", str(cfg), "service", "uninstall", "--unit-dir", str(units)])
    assert r.exit_code == 0, r.output
    assert log.read_text().splitlines() == [
        "daemon-reload",
        "enable --now nonstop-shop.socket nonstop-shop-https.socket nonstop-shop.service",
        "disable --now nonstop-shop.service nonstop-shop.socket nonstop-shop-https.socket",  # before the files go
        "daemon-reload",
    ]
    assert list(units.iterdir()) == []
