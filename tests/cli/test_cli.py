"""The CLI's exit codes and messages for the cases that need no running agent."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from nonstop import config


def run(cwd, *args):
    r = subprocess.run([sys.executable, "-m", "nonstop", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                       env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
    return r.returncode, r.stdout, r.stderr


def test_init_writes_a_config_that_loads(tmp_path):
    code, out, err = run(tmp_path, "init", "--app", "shop")
    assert code == 0, err
    cfg = config.load(tmp_path / "nonstop.yml")
    assert cfg.app == "shop" and cfg.health.path == "/actuator/health"
    # never overwrites without --force
    code, out, err = run(tmp_path, "init")
    assert code == 2 and "already exists" in err


def test_init_gives_a_second_app_on_this_machine_a_free_dashboard_port(tmp_path):
    from nonstop.agent.preflight.ports import bind_error

    first = next(p for p in range(9900, 10000) if bind_error("127.0.0.1", p) is None)
    with socket.socket() as taken:  # the first app's dashboard
        taken.bind(("127.0.0.1", first))
        taken.listen(1)
        code, out, err = run(tmp_path, "init", "--app", "second", "--json")
    assert code == 0, err
    port = config.load(tmp_path / "nonstop.yml").dashboard.listen.rpartition(":")[2]
    assert int(port) > first and json.loads(out)["dashboard"] == f"127.0.0.1:{port}"
    assert bind_error("127.0.0.1", int(port)) is None


def test_config_error_exits_2_naming_field_and_file(tmp_path):
    (tmp_path / "nonstop.yml").write_text("app: shop\nrun:\n  command: java -jar app.jar\n")
    code, out, err = run(tmp_path, "up", "--detach")
    assert code == 2
    assert "nonstop.yml" in err and "run.command" in err and "{port}" in err
    assert "Traceback" not in err


def test_config_error_as_json(tmp_path):
    (tmp_path / "nonstop.yml").write_text("app: shop\nrun:\n  command: x {port}\nhealth: {interval: soon}\n")
    code, out, err = run(tmp_path, "up", "--json")
    assert code == 2
    body = json.loads(out)
    assert body["field"] == "health.interval" and body["exit_code"] == 2


def test_a_broken_config_is_exit_2_for_the_verbs_that_need_it_and_no_obstacle_for_the_others(tmp_path):
    (tmp_path / "nonstop.yml").write_text("app: shop\nrun: [unclosed\n")
    for verb in (["up"], ["check"]):
        code, out, err = run(tmp_path, *verb)
        assert code == 2 and "nonstop.yml" in err and "line" in err, (verb, err)
    # the agent runs on the config it validated (and re-reads it at deploy): reach it, or say it is not running
    for verb in (["status"], ["deploy"]):
        code, out, err = run(tmp_path, *verb)
        assert code == 3 and "no socket at " + str(tmp_path / ".nonstop") in err, (verb, err)
    code, out, err = run(tmp_path, "down")
    assert code == 0 and "not running" in out, err
    code, out, err = run(tmp_path, "history", "--json")
    assert code == 0 and json.loads(out) == {"releases": [], "deployments": [], "offline": str(tmp_path / ".nonstop")}


def test_the_incident_verbs_reach_the_agent_past_a_config_broken_mid_edit(tmp_path):
    # the running agent has the config it validated; only the state dir is needed to reach it
    (tmp_path / "nonstop.yml").write_text("app: shop\nrun: [unclosed\n")
    for verb in (["rollback"], ["abort"], ["promote"], ["pause"], ["resume"]):
        code, out, err = run(tmp_path, *verb)
        assert code == 3 and "no socket at " + str(tmp_path / ".nonstop") in err, (verb, err)
    # but a file that may name another state dir must be read: broken, it is exit 2
    (tmp_path / "nonstop.yml").write_text("app: shop\nstate_dir: /x\nrun: [unclosed\n")
    code, out, err = run(tmp_path, "rollback")
    assert code == 2 and "nonstop.yml" in err and "line" in err, err


def test_agent_not_running_exits_3_for_the_verbs_that_need_it(tmp_path):
    run(tmp_path, "init", "--app", "shop")
    for verb in (["status"], ["deploy", "--version", "v1"], ["rollback"], ["promote"]):
        code, out, err = run(tmp_path, *verb)
        assert code == 3, (verb, code, err)
        assert "nonstop up" in err


def test_down_when_not_up_is_exit_0(tmp_path):
    run(tmp_path, "init", "--app", "shop")
    code, out, err = run(tmp_path, "down")
    assert code == 0 and out.strip() == "nonstop is not running (nothing to stop)", err
    code, out, err = run(tmp_path, "down", "--json")
    assert code == 0 and json.loads(out) == {"running": False, "agent": False, "was_running": False,
                                             "stopped": {"router": [], "instances": []}}
    assert not (tmp_path / ".nonstop").exists()  # and nothing was created


def test_usage_error_exits_2(tmp_path):
    code, out, err = run(tmp_path, "deploy", "--strategy", "big-bang")
    assert code == 2
