"""Upgrading nonstop itself without a gap (DESIGN §3 `up`): the previous tagged release, then this one.

The previous release (git tag ``v0.1.0``) is installed in a virtualenv of its own and runs the stack:
its agent, its proxy, a deployed release. Under load, this version's ``nonstop up`` notices an agent of
another version, stops it (its proxy and instances keep serving), starts its own agent, which adopts the
instances and replaces the proxy by a socket hand-over. Asserted: zero failed requests; ``status`` shows
the running versions; the state dir the old version wrote (database, routes.json) is read and carried on:
the old release deploys over and rolls back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import nonstop
from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import warm
from tests.e2e.artifacts import RUN_COMMAND, make_artifact

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = "v0.1.0"
# the commit the tag names: a clean checkout of main carries the history but not always the tags
PREVIOUS_COMMIT = "3bdb39a8876fa8024edd8fdeec66fb0f7ec04464"
LOAD = dict(rate=80, keepalive=3, new=2, post=2, slow=2, slow_ms=1000, timeout=20)


def _archive(tar: Path) -> subprocess.CompletedProcess:
    for ref in (PREVIOUS, PREVIOUS_COMMIT):
        got = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(tar), ref],
                             capture_output=True, text=True)
        if got.returncode == 0:
            break
    return got


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> Path:
    """The ``nonstop`` command of the previous tagged release, in its own virtualenv."""
    d = tmp_path_factory.mktemp("previous")
    tar = d / "src.tar"
    got = _archive(tar)
    if got.returncode != 0:  # a shallow or tag-less clone: ask its origin for the tag, once
        subprocess.run(["git", "-C", str(ROOT), "fetch", "--quiet", "--no-tags", "origin",
                        f"refs/tags/{PREVIOUS}:refs/tags/{PREVIOUS}"], capture_output=True, text=True, timeout=60)
        got = _archive(tar)
    shallow = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"],
                             capture_output=True, text=True).stdout.strip()
    assert got.returncode == 0, (f"the previous release ({PREVIOUS}, commit {PREVIOUS_COMMIT}) is not in this "
                                 f"checkout (shallow: {shallow}; git fetch --tags): {got.stderr}")
    with tarfile.open(tar) as t:
        t.extractall(d / "src", filter="data")
    subprocess.run([sys.executable, "-m", "venv", str(d / "venv")], check=True)
    env = {**os.environ, "NONSTOP_NO_EXTENSIONS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    got = subprocess.run([str(d / "venv" / "bin" / "pip"), "install", "-q", str(d / "src")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    exe = d / "venv" / "bin" / "nonstop"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True, env=env)
    assert "0.1.0" in out.stdout, out.stdout
    return exe


def old_cli(exe: Path, st, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(exe), "-c", str(st.cfg_path), *args], cwd=st.dir, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_up_replaces_an_older_agent_and_proxy_under_load(stack_factory, previous, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = stack_factory(up=False, run={"command": RUN_COMMAND})
    r = old_cli(previous, st, "up", "--detach", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    r = old_cli(previous, st, "deploy", "--version", "v1", "--artifact", str(good), "--json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    before = st.status()
    assert before["agent"].get("version") is None  # 0.1.0 did not tell its version
    old_agent, old_proxy = before["agent"]["pid"], st.pid("proxy")
    instances = {i["id"]: i["pid"] for i in before["instances"]}

    with LoadClient(st.url, **LOAD) as load:
        warm(load, 100, stack=st)
        up = st.cli("up", "--detach", "--timeout", "60")
        assert up.code == 0, up.out + up.err
        warm(load, 100, stack=st)
        after = st.status()
        # the live release went on in the very same instances; a new proxy took the socket over
        assert {i["id"]: i["pid"] for i in after["instances"]} == instances
        assert after["agent"]["pid"] != old_agent and st.pid("proxy") != old_proxy
        assert after["versions"] == {"agent": nonstop.__version__, "proxy": nonstop.__version__}
        # what the old version wrote is carried on: deploy over its release, then back to it
        st.deploy("v2", "--artifact", str(good))
        warm(load, 60, stack=st)
        assert st.cli("rollback", "--json").code == 0
        warm(load, 60, stack=st)
    result = load.result
    print(f"\nupgrade 0.1.0 → {nonstop.__version__}: {result.total} requests, {result.failed} failed")
    assert result.failed == 0, result.format()
    assert set(result.by_version()) == {"v1", "v2"}
    assert st.status()["live_release"] == "v1"
    assert "upgrading nonstop" in up.err + up.out
    # the control API as the previous version's CLI speaks it: status, a deploy, a rollback
    r = old_cli(previous, st, "status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["live_release"] == "v1", r.stdout + r.stderr
    r = old_cli(previous, st, "deploy", "--version", "v3", "--artifact", str(good), "--json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = old_cli(previous, st, "rollback", "--json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert st.status()["live_release"] == "v1"


def test_sighup_restarts_the_agent_in_place_under_load(stack_factory, tmp_path):
    """``systemctl reload`` (SIGHUP): the agent re-executes the installed code with the same pid, keeping
    the listening sockets (passed to itself as systemd passes them); the proxy and instances keep serving."""
    import signal

    from tests.e2e.helpers import wait_for

    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = stack_factory(run={"command": RUN_COMMAND})
    st.deploy("v1", "--artifact", str(good))
    before = st.status()
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 100, stack=st)
        os.kill(before["agent"]["pid"], signal.SIGHUP)
        def restarted() -> bool:
            r = st.cli("status", "--json")  # one call: the agent may be between its two lives at any moment
            return r.code == 0 and r.json["agent"]["started_at"] != before["agent"]["started_at"]

        wait_for(restarted, timeout=30, interval=0.2, what="the agent started again")
        warm(load, 100, stack=st)
        st.deploy("v2", "--artifact", str(good))  # and it works as before
        warm(load, 60, stack=st)
    after = st.status()
    assert after["agent"]["pid"] == before["agent"]["pid"]
    assert after["live_release"] == "v2"
    assert load.result.failed == 0, load.result.format()


def _cli_as(version: str, st, *args: str) -> subprocess.CompletedProcess:
    """This checkout's CLI, told it is nonstop ``version`` (what an older or newer installation would say)."""
    code = ("import sys, nonstop, nonstop.cli.lifecycle_cmds as lc; "
            f"nonstop.__version__ = lc.__version__ = {version!r}; "
            "from nonstop.cli import main; sys.argv = ['nonstop', *sys.argv[1:]]; main()")
    return subprocess.run([sys.executable, "-c", code, "-c", str(st.cfg_path), *args], cwd=st.dir,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})


def test_up_of_an_older_nonstop_is_refused_by_a_newer_agent_and_changes_nothing(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = stack_factory(run={"command": RUN_COMMAND})
    st.deploy("v1", "--artifact", str(good))
    before = st.status()
    r = _cli_as("0.1.9", st, "up", "--detach")
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"the running agent is nonstop {nonstop.__version__}, newer than this one (0.1.9)" in r.stderr, r.stderr
    after = st.status()
    assert after["agent"]["pid"] == before["agent"]["pid"] and after["agent"]["started_at"] == before["agent"]["started_at"]
    assert st.pid("proxy") == before["router"]["detail"]["pid"]


def test_up_that_restarts_the_agent_in_place_says_so_when_it_comes_back_as_another_version(stack_factory, tmp_path):
    """``up`` of a nonstop ≥ 0.2 that is not the running one SIGHUPs the agent, which starts again from the
    code installed where it runs. When that is not the version ``up`` is (two installations), ``up`` says
    which version came back instead of claiming an upgrade; the stack keeps serving either way."""
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = stack_factory(run={"command": RUN_COMMAND})
    st.deploy("v1", "--artifact", str(good))
    before = st.status()
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 60, stack=st)
        r = _cli_as("0.2.99", st, "up", "--detach")
        warm(load, 60, stack=st)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"started again as nonstop {nonstop.__version__}, not 0.2.99" in r.stderr, r.stderr
    after = st.status()
    assert after["agent"]["pid"] == before["agent"]["pid"] and after["agent"]["started_at"] != before["agent"]["started_at"]
    assert after["live_release"] == "v1"
    assert load.result.failed == 0, load.result.format()
