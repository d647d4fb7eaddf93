"""Output: tables whole in a pipe and folded (never cut) on a terminal, ``--json`` on every verb with a result,
``logs`` and ``history`` from the state dir, ``nonstop proxy``'s usage errors."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from rich.console import Console

from nonstop.agent.store import Store
from nonstop.cli import render

LONG_RELEASE = "v1-a-release-name-longer-than-a-column-of-any-table-2026-12-01"
LONG_REASON = ("web@8082 did not become healthy: health check GET /actuator/health answered 503 "
               "{\"status\":\"DOWN\",\"components\":{\"db\":{\"status\":\"DOWN\",\"details\":{\"error\":"
               "\"org.postgresql.util.PSQLException: Connection to localhost:5432 refused\"}}}}\nlast line of the tail")


def run(cwd, *args, env=None):
    e = {"NO_COLOR": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    r = subprocess.run([sys.executable, "-m", "nonstop", *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=e)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def state(tmp_path):
    """A state dir as an agent left it: two releases, a failed deployment with a long reason, instance logs."""
    (tmp_path / "nonstop.yml").write_text("app: shop\nrun: {command: app {port}}\n")
    sd = tmp_path / ".nonstop"
    with Store(sd / "nonstop.db") as s:
        s.add_release(LONG_RELEASE, None)
        s.set_meta("live_release", LONG_RELEASE)
        d = s.create_deployment(LONG_RELEASE, "blue-green", None)
        s.update_deployment(d.id, state="progressing")
        s.update_deployment(d.id, state="promoted", data={"seconds": 3.2})
        s.add_release("v2", None)
        d = s.create_deployment("v2", "blue-green", LONG_RELEASE)
        s.update_deployment(d.id, state="failed", reason=LONG_REASON, data={"seconds": 12.0})
    (sd / "logs").mkdir()
    (sd / "logs" / f"{LONG_RELEASE}-8081.log").write_text("".join(f"line {i}\n" for i in range(10)))
    (sd / "logs" / "v2-8082.log").write_text("booting\nfailed\n")
    return tmp_path


@pytest.mark.parametrize("columns", [None, "80", "250"])
def test_piped_history_prints_every_row_whole_on_one_line(state, columns):
    code, out, err = run(state, "history", env={"COLUMNS": columns} if columns else None)
    assert code == 0, err
    lines = out.splitlines()
    failed = next(line for line in lines if " failed " in line)
    assert LONG_REASON.replace("\n", " ⏎ ") in failed  # not cut at 60 characters, nor at the width
    assert any(line.startswith(LONG_RELEASE + " (live)") for line in lines)
    assert "…" not in out and all(line == line.rstrip() for line in lines)
    assert lines[-1] == f"(the agent is not running: read from {state / '.nonstop'})"


def _status(instance_id: str) -> dict:
    return {"app": "shop", "listen": "127.0.0.1:8080", "router": {"type": "embedded"}, "live_release": LONG_RELEASE,
            "routes": [{"release": LONG_RELEASE, "weight": 100, "targets": ["127.0.0.1:8081"]}],
            "instances": [{"id": instance_id, "release": LONG_RELEASE, "pid": 4242, "state": "healthy", "alive": True,
                           "routed": True, "uptime": 12.0, "restarts": 0, "crash_loop": False, "warm_until": None}],
            "deployment": None}


def test_a_terminal_folds_long_cells_and_never_cuts_an_instance_s_port():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=60, no_color=True)
    render.status(console, _status(f"{LONG_RELEASE}@8081"))
    out = buf.getvalue()
    assert "…" not in out
    joined = "".join(line.split()[0] if line.split() else "" for line in out.splitlines())
    assert f"{LONG_RELEASE}@8081" in joined  # the id, folded over lines, whole


def test_piped_status_keeps_whole_lines():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=1 << 16, soft_wrap=True, no_color=True)
    render.status(console, _status(f"{LONG_RELEASE}@8081"))
    row = next(line for line in buf.getvalue().splitlines() if line.startswith(LONG_RELEASE + "@8081"))
    assert row.split() == [f"{LONG_RELEASE}@8081", LONG_RELEASE, "4242", "healthy", "yes", "12.0s", "0"]


def test_status_of_containers_shows_each_instance_s_container_instead_of_a_pid():
    st = _status("v1@8081")
    st["instances"][0].update(pid=None, container="4fb619decfb8")
    buf = io.StringIO()
    render.status(Console(file=buf, force_terminal=False, width=200, no_color=True), st)
    lines = buf.getvalue().splitlines()
    assert next(line for line in lines if line.startswith("instance")).split()[2] == "container"
    assert next(line for line in lines if line.startswith("v1@8081")).split()[2] == "4fb619decfb8"


def test_logs_read_the_state_dir_with_or_without_json(state):
    code, out, err = run(state, "logs", "-n", "2")
    assert code == 0, err
    assert out == f"==> {LONG_RELEASE}-8081.log <==\nline 8\nline 9\n"
    code, out, err = run(state, "logs", "v2", "--json")
    assert code == 0 and json.loads(out) == {"release": "v2", "files": [
        {"name": "v2-8082.log", "path": str(state / ".nonstop" / "logs" / "v2-8082.log"), "lines": ["booting", "failed"]}]}
    code, out, err = run(state, "logs", "v9")
    assert code == 2 and "unknown release 'v9'" in err


def test_every_command_that_prints_a_result_takes_json():
    from nonstop.cli.app import cli

    import click

    without = set()
    for name in cli.list_commands(None):
        cmd = cli.get_command(None, name)
        # a group (`nonstop service`) prints nothing itself: its verbs do
        verbs = [(f"{name} {v}", cmd.get_command(None, v)) for v in cmd.list_commands(None)] if isinstance(cmd, click.Group) else [(name, cmd)]
        for shown, verb in verbs:
            if not any("--json" in p.opts for p in verb.params):
                without.add(shown)
    # the proxy prints nothing but its `ready` line: it is a server, not a query
    assert without == {"proxy"}


@pytest.mark.parametrize("args, words", [
    (["--upstream", "nope"], "Invalid value for '--upstream': expected HOST:PORT"),
    (["--upstream", "127.0.0.1:0"], "Invalid value for '--upstream'"),
    (["--listen", "8080"], "Invalid value for '--listen': expected HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "Invalid value for '--listen'"),
])
def test_the_proxy_alone_refuses_bad_addresses_with_exit_2(tmp_path, args, words):
    code, out, err = run(tmp_path, "proxy", *args)
    assert code == 2 and words in err, err


def test_the_proxy_alone_on_a_port_in_use_is_exit_2(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        addr = "127.0.0.1:%d" % squatter.getsockname()[1]
        t0 = time.monotonic()
        code, out, err = run(tmp_path, "proxy", "--listen", addr, "--upstream", "127.0.0.1:9")
    assert code == 2 and f"Invalid value for '--listen': cannot listen on {addr}: Address already in use" in err, err
    assert time.monotonic() - t0 < 20
