"""Bad input and offline commands against the real stack: exit 2 naming the field and the file, nothing changed.

Every refusal here is checked three ways: the exit code, the message (field
and file named), and that nothing changed — the live and the warm previous
instances still run with the same pids, history, releases and their folders
as they were. The shared stack (``warm``) has v2 live and v1 warm beside it,
the state an instant rollback needs and a careless deploy would lose.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import stack_ports, wait_for
from tests.tmpfs import fill, small_tmpfs

# The artifact is the program itself (like a self-contained binary): only a file can be that.
EXEC_COMMAND = ["{artifact}", "--port", "{port}", "--version", "{version}"]


def executable_artifact(dir: Path, name: str, *extra: str) -> Path:
    p = make_artifact(dir, name, *extra)
    p.write_text(f"#!{sys.executable}\n" + p.read_text())
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return p


def snapshot(st) -> dict:
    """What a refused command must leave as it was."""
    h = st.cli("history", "--json", check=True).json
    s = st.status()
    releases_dir = st.state / "releases"
    return {
        "releases": [(r["id"], r["status"], r["live"]) for r in h["releases"]],
        "deployments": [(d["id"], d["release"], d["state"]) for d in h["deployments"]],
        "live": s["live_release"],
        "instances": sorted((i["id"], i["pid"], i["state"], i["routed"], i["alive"]) for i in s["instances"]),
        "folders": sorted(p.name for p in releases_dir.iterdir()) if releases_dir.exists() else [],
    }


@pytest.fixture(scope="module")
def warm(module_stack_factory, tmp_path_factory):
    """v2 live, v1 warm beside it (blue-green, keep_previous 10m); the artifact is the program."""
    arts = tmp_path_factory.mktemp("artifacts")
    st = module_stack_factory(run={"command": EXEC_COMMAND})
    st.v1 = executable_artifact(arts, "v1", "--boot-seconds", "0.2")
    st.v2 = executable_artifact(arts, "v2", "--boot-seconds", "0.2")
    st.other = executable_artifact(arts, "other", "--boot-seconds", "0.3")
    st.deploy("v1", "--artifact", str(st.v1))
    st.deploy("v2", "--artifact", str(st.v2))
    s = st.status()
    assert s["live_release"] == "v2" and {i["release"] for i in s["instances"]} == {"v1", "v2"}
    return st


def test_a_deploy_without_the_artifact_its_command_needs_is_refused_before_the_warm_color_is_touched(warm):
    before = snapshot(warm)
    r = warm.cli("deploy", "--version", "v3")
    assert r.code == 2, r.err
    assert "--artifact" in r.err and str(warm.cfg_path) in r.err and "{artifact}" in r.err
    assert snapshot(warm) == before  # v1 still warm: an instant rollback is still there


def test_a_folder_where_the_command_runs_a_file_is_refused(warm, tmp_path):
    folder = tmp_path / "build"
    folder.mkdir()
    (folder / "app.py").write_text("print('hi')\n")
    before = snapshot(warm)
    r = warm.cli("deploy", "--version", "v3", "--artifact", str(folder))
    assert r.code == 2, r.err
    assert "--artifact" in r.err and f"{folder} is a folder" in r.err and "runs {artifact} as the program" in r.err
    assert snapshot(warm) == before


@pytest.mark.parametrize("bad", ["v 1", "a/b", "../x", ""])
def test_an_invalid_version_is_refused_and_history_is_unchanged(warm, bad):
    before = snapshot(warm)
    r = warm.cli("deploy", "--version", bad, "--artifact", str(warm.v1), "--json")
    assert r.code == 2, r.out + r.err
    body = r.json
    assert body["exit_code"] == 2 and body["field"] == "--version" and "invalid version" in body["message"]
    assert snapshot(warm) == before  # no failed row, no "(building)"


def test_every_problem_of_a_deploy_is_named_at_once(warm, tmp_path):
    before = snapshot(warm)
    r = warm.cli("deploy", "--version", "../x", "--artifact", str(tmp_path / "missing.jar"), "--strategy", "canary", "--json")
    assert r.code == 2
    fields = [p["field"] for p in r.json["problems"]]
    assert fields == ["--strategy", "--version", "--artifact"], r.json
    assert snapshot(warm) == before


def test_a_version_that_names_another_artifact_is_refused_naming_both_digests(warm):
    import hashlib

    before = snapshot(warm)
    r = warm.cli("deploy", "--version", "v1", "--artifact", str(warm.other))
    assert r.code == 2, r.err
    have = hashlib.sha256((warm.state / "releases" / "v1" / "v1.py").read_bytes()).hexdigest()[:12]
    given = hashlib.sha256(warm.other.read_bytes()).hexdigest()[:12]
    assert "--version" in r.err and f"sha256:{have}" in r.err and f"sha256:{given}" in r.err
    assert snapshot(warm) == before  # no v1-2


def test_the_live_version_again_is_refused_as_nothing_to_deploy(warm):
    before = snapshot(warm)
    r = warm.cli("deploy", "--version", "v2", "--artifact", str(warm.v2))
    assert r.code == 2 and "live already" in r.err, r.err
    assert snapshot(warm) == before


def test_a_rollback_to_an_unknown_release_is_refused_naming_the_kept_ones(warm):
    before = snapshot(warm)
    r = warm.cli("rollback", "--to", "v9")
    assert r.code == 2, r.out + r.err
    assert "unknown release 'v9'" in r.err and "v1" in r.err and "v2" in r.err, r.err
    assert snapshot(warm) == before  # no rollback row, the warm v1 still warm


def test_the_same_version_and_artifact_deploys_that_release_again(warm):
    """Runs last on the shared stack: it changes what is live (v1 again, from its stored copy)."""
    before = snapshot(warm)
    res = warm.deploy("v1", "--artifact", str(warm.v1))
    assert res["ok"] and res["release"] == "v1", res
    after = snapshot(warm)
    assert after["live"] == "v1"
    assert [r[0] for r in after["releases"]] == [r[0] for r in before["releases"]]  # no v1-2
    assert after["folders"] == before["folders"] == ["v1", "v2"]
    assert after["deployments"][0][1:] == ("v1", "promoted")


# -- up refuses what cannot work, before anything starts -------------------------------------


def _nothing_started(st) -> None:
    for name in ("agent", "proxy"):
        pid = st.pid(name)
        assert pid is None or not psutil.pid_exists(pid), f"{name} started (pid {pid})"


def test_up_refuses_a_listen_port_in_use_a_missing_program_and_a_taken_dashboard(stack_factory):
    st = stack_factory(up=False)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", st.listen))
        squatter.listen(1)
        r = st.cli("up", "--detach", "--timeout", "30")
        assert r.code == 2, r.err
        assert "listen" in r.err and str(st.cfg_path) in r.err and "in use by another program" in r.err
        assert f"pid {os.getpid()}" in r.err  # who holds it
        _nothing_started(st)

    st.write_config(run={"command": ["no-such-program-here", "--port", "{port}"]})
    r = st.cli("up", "--detach", "--timeout", "30")
    assert r.code == 2 and "run.command" in r.err and "'no-such-program-here' is not on PATH" in r.err, r.err
    assert f"{st.cfg_path}:" in r.err  # file and line
    assert st.cli("check").code == 2
    _nothing_started(st)


def test_two_apps_with_one_dashboard_port_the_second_up_is_refused(stack_factory):
    (dash,) = stack_ports(1)
    first = stack_factory(dashboard={"enabled": True, "listen": f"127.0.0.1:{dash}"})
    second = stack_factory(up=False, dashboard={"enabled": True, "listen": f"127.0.0.1:{dash}"})
    r = second.cli("up", "--detach", "--timeout", "30")
    assert r.code == 2, r.err
    assert "dashboard.listen" in r.err and str(second.cfg_path) in r.err
    assert f"pid {first.pid('agent')}" in r.err  # it is the other app's agent
    _nothing_started(second)
    assert first.status()["dashboard"] == f"http://127.0.0.1:{dash}/"


# -- without the agent -------------------------------------------------------------------------------


def test_history_logs_and_down_work_from_the_state_dir_after_a_crash_and_after_down(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    st = stack_factory(run={"command": RUN_COMMAND})
    st.deploy("v1", "--artifact", str(good))
    live = st.cli("history", "--json", check=True).json
    proxy = st.pid("proxy")
    instances = [i["pid"] for i in st.status()["instances"]]
    ids = [i["id"] for i in st.status()["instances"]]

    os.kill(st.pid("agent"), signal.SIGKILL)  # a crash: proxy and instances go on
    wait_for(lambda: not psutil.pid_exists(st.pid("agent")) or psutil.Process(st.pid("agent")).status() == "zombie",
             what="the agent to die")
    h = st.cli("history", "--json")
    assert h.code == 0 and h.json["offline"] == str(st.state)
    assert {k: v for k, v in h.json.items() if k != "offline"} == live
    r = st.cli("logs", "--json")
    assert r.code == 0 and r.json["release"] == "v1" and any("listening" in line for f in r.json["files"] for line in f["lines"])
    assert st.cli("status").code == 3

    # up again: the port is in use by this app's own proxy, which is adopted, not refused
    st.cli("up", "--detach", "--timeout", "60", check=True)
    assert st.pid("proxy") == proxy and [i["pid"] for i in st.status()["instances"]] == instances

    os.kill(st.pid("agent"), signal.SIGKILL)
    r = st.cli("down", "--json")
    assert r.code == 0 and r.json["was_running"] and r.json["stopped"]["router"] == [proxy], r.out + r.err
    assert r.json["stopped"]["instances"] == ids
    for pid in [proxy, *instances]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", pid

    r = st.cli("down")
    assert r.code == 0 and "not running" in r.out
    h = st.cli("history", "--json")
    assert h.code == 0 and [d["release"] for d in h.json["deployments"]] == ["v1"]
    r = st.cli("logs")
    assert r.code == 0 and "==> v1-" in r.out


def test_status_and_down_work_while_nonstop_yml_is_broken(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    st = stack_factory(run={"command": RUN_COMMAND})
    st.deploy("v1", "--artifact", str(good))
    pids = [st.pid("proxy"), st.pid("agent"), *(i["pid"] for i in st.status()["instances"])]
    r = st.cli("check")
    assert r.code == 0, r.err  # the ports in use are this app's own (its proxy, its instance)
    st.cfg_path.write_text(st.cfg_path.read_text() + "\nrun: [unclosed\n")
    assert st.cli("status").code == 0
    r = st.cli("deploy", "--version", "v2", "--artifact", str(good))
    assert r.code == 2 and str(st.cfg_path) in r.err and "line" in r.err, r.err  # the agent re-reads it
    r = st.cli("down")
    assert r.code == 0, r.err
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids),
             what="everything stopped")


# -- a full state dir --------------------------------------------------------------------------------


def test_a_full_state_dir_refuses_the_deploy_naming_path_and_free_space_and_keeps_the_database(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    with small_tmpfs(tmp_path / "state", "64m") as state:
        st = stack_factory(state_dir=str(state), run={"command": RUN_COMMAND})
        try:
            st.deploy("v1", "--artifact", str(good))
            st.deploy("v2", "--artifact", str(good))
            before = snapshot(st)
            filler = fill(state)  # to the last byte
            r = st.cli("deploy", "--version", "v3", "--artifact", str(good), "--json")
            assert r.code == 2, r.out + r.err
            msg = r.json["message"]
            assert r.json["field"] == "state_dir" and f"the state dir is full: {state} has " in msg
            assert f"{state} has 0 bytes free; this deploy needs about 16.0 MiB" in msg, msg
            assert snapshot(st) == before
            # a verb without a preflight (rollback) meets the full disk in the store: said the same way, refused
            # whole (no deployment left running), no traceback; the store's reserve is given back for what follows
            r = st.cli("rollback", "--json")
            assert r.code == 1 and f"the state dir is full: {state} has 0 bytes free" in r.json["message"], r.out + r.err
            assert r.json["reserve_released"] == 1 << 20
            assert "Traceback" not in (state / "logs" / "agent.log").read_text()
            assert snapshot(st) == before
            con = sqlite3.connect(state / "nonstop.db")
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            con.close()
            filler.unlink()  # room again: deploys work
            assert st.deploy("v3", "--artifact", str(good))["ok"]
        finally:
            st.cli("down", timeout=60)
