"""The agent's own duties, against real processes: adoption, builds, smoke tests, crash loops, logs, supervision of the proxy."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

from nonstop.testing.load import LoadClient
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import wait_for

LOAD = dict(rate=60, keepalive=3, new=2, post=1, slow=0, timeout=15)


def stack_with(stack_factory, tmp_path, **kw):
    kw.setdefault("run", {})
    kw["run"] = {"command": RUN_COMMAND, **kw["run"]}
    return stack_factory(**kw)


def test_agent_restart_re_adopts_instances_and_traffic_never_stops(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.3")
    st = stack_with(stack_factory, tmp_path)
    st.deploy("v1", "--artifact", str(good))
    before = {i["id"]: i["pid"] for i in st.status()["instances"]}
    proxy_pid = st.pid("proxy")
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(30, timeout=20)
        agent = psutil.Process(st.pid("agent"))
        agent.terminate()  # SIGTERM: the agent exits, instances and proxy stay
        agent.wait(20)
        load.wait_served(load.served + 60, timeout=20)
        st.cli("up", "--detach", "--timeout", "60", check=True)
        load.wait_served(load.served + 30, timeout=20)
    assert load.result.failed == 0, load.result.format()
    s = st.status()
    assert {i["id"]: i["pid"] for i in s["instances"]} == before, "instances were restarted instead of adopted"
    assert st.pid("proxy") == proxy_pid
    assert s["live_release"] == "v1"


def test_failed_build_changes_nothing(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.3")
    st = stack_with(stack_factory, tmp_path)
    st.deploy("v1", "--artifact", str(good))
    st.write_config(build={"commands": [[sys.executable, "-c", "import sys; print('compiling...'); sys.exit('error: cannot find symbol')"]],
                           "artifact": "out/app.py"})
    res = st.deploy("v2", expect=1)
    assert "build" in res["reason"].lower()
    assert "cannot find symbol" in str(res["detail"]) or "cannot find symbol" in res["reason"]
    s = st.status()
    assert s["live_release"] == "v1" and [i["release"] for i in s["instances"]] == ["v1"]
    releases = [r["id"] for r in st.cli("history", "--json", check=True).json["releases"]]
    assert releases == ["v1"]
    assert not (st.state / "releases" / "v2").exists()


def test_build_commands_run_and_their_artifact_is_deployed(stack_factory, tmp_path):
    src = make_artifact(tmp_path / "src", "app", "--boot-seconds", "0.2")
    st = stack_with(stack_factory, tmp_path)
    out = tmp_path / "out"
    st.write_config(build={
        "workdir": str(tmp_path),
        "commands": [["mkdir", "-p", str(out)], ["cp", str(src), str(out / "app.py")]],
        "artifact": str(out / "app.py"),
    })
    res = st.deploy("v1")
    assert res["ok"], res
    assert (st.state / "releases" / "v1" / "app.py").exists()
    # the release is a copy: a later build never touches what runs
    (out / "app.py").write_text("raise SystemExit('broken build output')\n")
    assert "runpy" in (st.state / "releases" / "v1" / "app.py").read_text()


def test_keep_releases_prunes_old_ones_but_never_live_or_previous(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    st = stack_with(stack_factory, tmp_path, keep_releases=2, strategy={"type": "blue-green", "keep_previous": "0s"})
    for v in ("v1", "v2", "v3", "v4"):
        st.deploy(v, "--artifact", str(good))
    kept = sorted(p.name for p in (st.state / "releases").iterdir() if not p.name.startswith("."))
    assert kept == ["v3", "v4"]
    r = st.cli("rollback", "--json")
    assert r.code == 0 and st.status()["live_release"] == "v3"


def test_smoke_test_failure_aborts_before_the_switch(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    smoke = tmp_path / "smoke.py"
    smoke.write_text(
        "import os, sys, urllib.request\n"
        "body = urllib.request.urlopen(sys.argv[1] + '/version').read().decode()\n"
        "print('smoke got', body, 'artifact', sys.argv[2])\n"
        "if not (os.path.isfile(sys.argv[2]) and '/releases/' in sys.argv[2]):\n"
        "    sys.exit('no stored artifact given')\n"
        "sys.exit(0 if 'v2' not in body else 'v2 fails the smoke test')\n"
    )
    st = stack_with(stack_factory, tmp_path, strategy={"type": "blue-green",
                                                       "smoke": [sys.executable, str(smoke), "{url}", "{artifact}"]})
    st.deploy("v1", "--artifact", str(good))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(30, timeout=20)
        res = st.deploy("v2", "--artifact", str(good), expect=1)
        load.wait_served(load.served + 30, timeout=20)
    assert "smoke" in res["reason"]
    assert "v2 fails the smoke test" in res["detail"]["smoke_output"]
    assert load.result.failed == 0 and set(load.result.by_version()) == {"v1"}
    assert st.status()["live_release"] == "v1"


def test_crash_loop_is_reported(stack_factory, tmp_path):
    flaky = make_artifact(tmp_path / "a", "flaky", "--boot-seconds", "0.1", "--die-after-seconds", "1.2")
    st = stack_with(stack_factory, tmp_path, health={"interval": "100ms", "healthy_threshold": 1})
    st.deploy("v1", "--artifact", str(flaky))
    wait_for(lambda: _events(st, "crash_loop"), timeout=90, interval=0.5, what="a crash_loop event")
    inst = st.status()["instances"][0]
    assert inst["crash_loop"] and inst["restarts"] >= 5


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _refused(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def _events(st, type_):
    import json
    import sqlite3

    con = sqlite3.connect(st.state / "nonstop.db")
    try:
        return [json.loads(d or "{}") for (d,) in con.execute("SELECT data FROM events WHERE type = ?", (type_,))]
    finally:
        con.close()


def test_logs_show_the_instance_output(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    st = stack_with(stack_factory, tmp_path)
    st.deploy("v1", "--artifact", str(good))
    r = st.cli("logs")
    assert r.code == 0 and "listening on" in r.out and "v1-" in r.out
    r = st.cli("logs", "nope")
    assert r.code == 2 and "unknown release" in r.err


def test_the_proxy_killed_is_restarted_with_its_routes(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    st = stack_with(stack_factory, tmp_path)
    st.deploy("v1", "--artifact", str(good))
    old = st.pid("proxy")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: st.pid("proxy") not in (None, old) and psutil.pid_exists(st.pid("proxy")), timeout=20, what="a new proxy")
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(50, timeout=20)
    assert load.result.failed == 0, load.result.format()
    assert set(load.result.by_version()) == {"v1"}


def test_down_then_up_brings_the_live_release_back(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    st = stack_with(stack_factory, tmp_path)
    st.deploy("v1", "--artifact", str(good))
    pids = [i["pid"] for i in st.status()["instances"]] + [st.pid("proxy"), st.pid("agent")]
    r = st.cli("down", "--json")
    assert r.code == 0
    time.sleep(0.5)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert st.cli("status").code == 3
    st.cli("up", "--detach", "--timeout", "60", check=True)
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(30, timeout=20)
    assert load.result.failed == 0 and set(load.result.by_version()) == {"v1"}


def test_control_sockets_and_token_are_private(stack_factory, tmp_path):
    st = stack_with(stack_factory, tmp_path)
    for name in ("agent.sock", "proxy.sock", "token"):
        mode = (st.state / name).stat().st_mode & 0o777
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_up_in_the_foreground_stops_everything_on_ctrl_c(stack_factory, tmp_path):
    import subprocess

    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    st = stack_with(stack_factory, tmp_path, up=False)
    fg = subprocess.Popen([sys.executable, "-m", "nonstop", "-c", str(st.cfg_path), "up"], cwd=st.dir,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: st.cli("status").code == 0, timeout=30, what="the foreground agent")
        st.deploy("v1", "--artifact", str(good))
        pids = [i["pid"] for i in st.status()["instances"]] + [st.pid("proxy")]
        fg.send_signal(signal.SIGINT)
        assert fg.wait(30) == 0
        time.sleep(0.3)
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    finally:
        if fg.poll() is None:
            fg.kill()


def test_an_instance_that_died_while_the_agent_was_away_is_restarted(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "a", "good", "--boot-seconds", "0.2")
    st = stack_with(stack_factory, tmp_path, n_ports=4, run={"instances": 2})
    st.deploy("v1", "--artifact", str(good))
    before = st.status()["instances"]
    os.kill(st.pid("agent"), signal.SIGKILL)
    victim = before[0]
    os.kill(victim["pid"], signal.SIGKILL)
    # dead before the load starts (on a busy machine a killed process can take a while to exit,
    # and a request it accepted meanwhile is lost with it, as it would be in production)
    wait_for(lambda: not _alive(victim["pid"]), timeout=10, interval=0.01, what="the victim to exit")
    # and its sockets closed (a thread group's leader shows as a zombie while its other threads exit)
    wait_for(lambda: _refused(victim["port"]), timeout=10, interval=0.01, what="the victim's port to refuse")
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(40, timeout=20)  # the proxy retries on the sibling: no agent needed
        st.cli("up", "--detach", "--timeout", "60", check=True)
        s = wait_for(
            lambda: (lambda s: s if sum(1 for i in s["instances"] if i["routed"] and i["alive"]) == 2 else None)(st.status()),
            timeout=30, what="both instances routed again",
        )
        load.wait_served(load.served + 40, timeout=20)
    assert load.result.failed == 0, load.result.format()
    again = next(i for i in s["instances"] if i["id"] == victim["id"])
    assert again["pid"] != victim["pid"]
