"""``nonstop check`` (and ``up``'s preflight) through the real CLI: every problem with field, file and line,
the real nginx and HAProxy testing the config nonstop would generate, and nothing changed by checking."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nonstop.agent.store import InstanceRecord, Store
from tests.e2e.helpers import stack_ports, wait_for

APP = [sys.executable, "-m", "nonstop.testing.app", "--port", "{port}"]


def run(cwd, *args, env=None):
    e = {**os.environ, "NO_COLOR": "1", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "nonstop", *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=e)
    return r.returncode, r.stdout, r.stderr


def write(tmp_path: Path, **over) -> Path:
    listen, p1, p2 = stack_ports(3)
    cfg = {"app": "shop", "listen": f"127.0.0.1:{listen}",
           "run": {"command": APP, "ports": f"{p1},{p2}"}, "dashboard": {"enabled": False}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    p = tmp_path / "nonstop.yml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_a_ready_config_passes_and_checking_changes_nothing(tmp_path):
    write(tmp_path)
    before = tree(tmp_path)
    code, out, err = run(tmp_path, "check")
    assert code == 0, err
    assert "valid, and ready" in out and "run.command" in out and "listen" in out
    assert tree(tmp_path) == before  # no state dir, no file touched
    code, out, err = run(tmp_path, "check", "--json")
    body = json.loads(out)
    assert code == 0 and body["ok"] and body["problems"] == [] and "run.ports" in body["checked"]


def test_three_errors_are_all_named_with_field_and_line(tmp_path):
    (tmp_path / "nonstop.yml").write_text(
        "app: shop\n"
        "run:\n"
        "  command: app --port {port}\n"
        "  ports: eighty\n"
        "health:\n"
        "  interval: soon\n"
        "strategy:\n"
        "  type: canary\n"
        "  steps: [{weight: 101}]\n"
    )
    code, out, err = run(tmp_path, "check")
    assert code == 2
    f = tmp_path / "nonstop.yml"
    assert err.startswith("nonstop: 3 problems:\n"), err
    for line, field in ((4, "run.ports"), (6, "health.interval"), (9, "strategy.steps[0].weight")):
        assert f"{f}:{line}: {field}: " in err, (field, err)
    assert "more problem" not in err
    code, out, err = run(tmp_path, "up", "--json")
    body = json.loads(out)
    assert code == 2 and [(p["field"], p["line"]) for p in body["problems"]] == [
        ("run.ports", 4), ("health.interval", 6), ("strategy.steps[0].weight", 9)]


def test_a_key_written_twice_is_named_with_both_lines(tmp_path):
    (tmp_path / "nonstop.yml").write_text("app: shop\nrun:\n  command: a {port}\n  ports: 8081-8082\n  ports: 9001-9002\n")
    code, out, err = run(tmp_path, "check")
    assert code == 2
    assert f"{tmp_path / 'nonstop.yml'}:5: run.ports: written twice (lines 4 and 5)" in err, err


def test_a_missing_program_a_missing_workdir_and_a_port_in_use(tmp_path):
    p = write(tmp_path, run={"command": ["./bin/start", "--port", "{port}"]})
    cfg = yaml.safe_load(p.read_text())
    port = int(cfg["listen"].rpartition(":")[2])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        code, out, err = run(tmp_path, "check", "--json")
    body = json.loads(out)
    assert code == 2 and body["exit_code"] == 2
    by_field = {x["field"]: x for x in body["problems"]}
    assert set(by_field) == {"run.command", "listen"}, body
    assert "'./bin/start' does not exist (in " + str(tmp_path) in by_field["run.command"]["message"]
    assert f"in use by another program (pid {os.getpid()}" in by_field["listen"]["message"]
    assert all(x["file"] == str(p.resolve()) and x["line"] for x in body["problems"])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "start").write_text("#!/bin/sh\n")
    code, out, err = run(tmp_path, "check")
    assert code == 2 and "is not executable" in err
    p.write_text(p.read_text().replace("command:", "workdir: nowhere\n  command:"))
    code, out, err = run(tmp_path, "check")
    assert code == 2 and "run.workdir" in err and "nowhere is not a folder" in err


def test_ports_held_by_this_apps_own_proxy_and_instances_are_not_in_use(tmp_path):
    """An agent restarting finds its proxy and instances still serving: their ports are its own."""
    p = write(tmp_path)
    cfg = yaml.safe_load(p.read_text())
    listen = cfg["listen"]
    port = int(cfg["run"]["ports"].split(",")[0])
    state = tmp_path / ".nonstop"
    state.mkdir()
    proxy = subprocess.Popen([sys.executable, "-m", "nonstop.proxy", "--listen", listen, "--pid-file", str(state / "proxy.pid")],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    app = subprocess.Popen([sys.executable, "-m", "nonstop.testing.app", "--port", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert proxy.stdout.readline().startswith("ready")
        wait_for(lambda: _listening(port), what="the app")
        code, out, err = run(tmp_path, "check", "--json")
        fields = {x["field"] for x in json.loads(out).get("problems", [])}
        assert fields == {"run.ports"}, out  # the proxy's pid file names it ours; the app is nobody's yet
        import psutil

        with Store(state / "nonstop.db") as store:  # the instance as the agent records it
            store.put_instance(InstanceRecord("v1@%d" % port, "v1", port, app.pid, psutil.Process(app.pid).create_time(),
                                              "healthy", time.time()))
        code, out, err = run(tmp_path, "check")
        assert code == 0, err
    finally:
        for proc in (proxy, app):
            proc.terminate()
            proc.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("router", ["nginx", "haproxy"])
def test_the_router_tests_the_config_nonstop_would_run(tmp_path, router):
    if shutil.which(router) is None and not Path(f"/usr/sbin/{router}").exists():
        pytest.fail(f"{router} is not installed: run scripts/setup.sh --test")
    env = {"PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    p = write(tmp_path, router={"type": router})
    code, out, err = run(tmp_path, "check", env=env)
    assert code == 0 and f"router {router}" in out, err
    # a listen address the router refuses: its own test says so (and the port check too)
    p.write_text(p.read_text().replace("listen: 127.0.0.1:", "listen: no-such-host.invalid:"))
    code, out, err = run(tmp_path, "check", "--json", env=env)
    probs = {x["field"]: x["message"] for x in json.loads(out)["problems"]}
    assert code == 2 and "router" in probs and "listen" in probs, out
    word = "nginx -t" if router == "nginx" else "haproxy -c"
    assert probs["router"].startswith(f"{word} refuses the config nonstop would run") and "no-such-host.invalid" in probs["router"]
    assert "nonstop-check-" not in probs["router"]  # the throwaway folder means nothing to the user
    assert not (tmp_path / ".nonstop").exists()
    p.write_text(p.read_text().replace(f"type: {router}", f"type: {router}\n  binary: /nowhere/{router}"))
    code, out, err = run(tmp_path, "check", env=env)
    assert code == 2 and f"router.binary: '/nowhere/{router}' does not exist" in err, err


def test_a_container_engine_that_is_not_running_is_named_by_check_and_up(tmp_path):
    """run.runtime docker with DOCKER_HOST naming a socket nobody serves: check and up are exit 2 naming
    the engine and the socket, and up starts nothing (no state dir, no agent)."""
    gone = tmp_path / "no-dockerd.sock"
    write(tmp_path, run={"runtime": "docker", "command": None, "image": "shop:{version}", "container_port": 8080})
    env = {"DOCKER_HOST": f"unix://{gone}"}
    for args in (("check",), ("up", "--detach")):
        code, out, err = run(tmp_path, *args, env=env)
        assert code == 2, (args, out, err)
        text = out + err
        assert "docker engine not reachable" in text and str(gone) in text, (args, text)
        assert "Traceback" not in text
        assert "run.runtime" in text and str(tmp_path / "nonstop.yml") in text, (args, text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nonstop.yml"]  # no state dir: nothing started
