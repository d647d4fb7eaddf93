"""Preflight units: what kind of artifact a command takes, and a deploy's checks against a real store and
real files (no agent: the whole-stack cases are in tests/e2e/test_bad_input.py)."""

from __future__ import annotations

import asyncio
import hashlib
import sys

import pytest

from nonstop import config
from nonstop.agent import preflight
from nonstop.agent.preflight.commands import artifact_kind, uses_artifact
from nonstop.agent.preflight.statedir import MIN_FREE
from nonstop.agent.releases import Releases
from nonstop.agent.store import Store
from nonstop.configfile import ConfigProblems

PY = sys.executable


@pytest.mark.parametrize("command, shell, kind", [
    ("java -jar {artifact} --server.port={port}", False, "file"),
    (["java", "-Xmx512m", "-jar", "{artifact}", "--server.port={port}"], False, "file"),
    ("{artifact} --port {port}", False, "file"),
    ("{artifact}/bin/start --port {port}", False, "folder"),
    ("python {artifact} --port {port}", False, None),  # a folder with __main__.py runs too
    ("node {artifact} --port={port}", False, None),
    ("java -cp {artifact} Main {port}", False, None),  # a jar or a folder of classes
    ("app --port {port}", False, None),
    ("exec java -jar {artifact} --port {port}", True, "file"),
    ("cd {artifact}/app && ./run {port}", True, "folder"),
    ("{artifact} --port {port}", True, "file"),
])
def test_what_a_command_can_take(command, shell, kind):
    run = config.RunConfig(command=command, shell=shell)
    got = artifact_kind(run)
    assert (got[0] if got else None) == kind


def test_an_artifact_used_only_in_env_counts():
    assert uses_artifact(config.RunConfig(command="app {port}", env={"APP_JAR": "{artifact}"}))
    assert not uses_artifact(config.RunConfig(command="app {port}"))


@pytest.fixture
def deploy(tmp_path):
    """``deploy(run_command, **request)`` → the problems of that deploy, against a real store and state dir."""
    stores = []

    def check(command, build=None, live=None, router=None, **req):
        data = {"app": "a", "run": {"command": command}}
        if build:
            data["build"] = build
        if router:
            data["router"] = router
        cfg = config.from_dict(data, source=str(tmp_path / "nonstop.yml"))
        store = Store(cfg.state_path / "nonstop.db")
        stores.append(store)
        releases = Releases(cfg.state_path, store)
        for version, artifact in (live or {}).items():
            releases.create(version, artifact, None, tmp_path)
        live_rel = store.get_release(next(iter(live))) if live else None
        return asyncio.run(preflight.deploy(cfg, releases, preflight.DeployRequest(**req), live_rel)), store

    yield check
    for s in stores:
        s.close()


def test_deploy_strategy_recreate_is_refused_where_the_router_cannot_hold_requests(deploy, tmp_path):
    problems, _ = deploy(f"{PY} -m http.server {{port}}", router={"type": "nginx"}, version="v1", strategy="recreate")
    assert [p.field for p in problems] == ["--strategy"] and "router nginx cannot" in problems[0].message
    problems, _ = deploy(f"{PY} -m http.server {{port}}", version="v1", strategy="recreate")
    assert problems == []  # the embedded proxy holds them


def test_a_folder_artifact_where_the_command_can_take_one(deploy, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "__main__.py").write_text("print('hi')\n")
    problems, _ = deploy([PY, "{artifact}", "--port", "{port}"], version="v1", artifact=str(app))
    assert problems == []


def test_a_folder_for_java_jar_and_a_file_for_a_path_inside_are_refused(deploy, tmp_path):
    folder = tmp_path / "build"
    folder.mkdir()
    jar = tmp_path / "app.jar"
    jar.write_bytes(b"PK")
    problems, store = deploy(f"{PY} -jar {{artifact}} {{port}}", version="v1", artifact=str(folder))
    assert [(p.field, "java -jar {artifact} needs a jar file" in p.message) for p in problems] == [("--artifact", True)]
    problems, _ = deploy("{artifact}/bin/start {port}", version="v1", artifact=str(jar))
    assert [p.field for p in problems] == ["--artifact"] and "needs a folder" in problems[0].message
    assert store.list_releases() == []


def test_an_artifact_is_needed_unless_the_build_or_the_stored_release_brings_one(deploy, tmp_path):
    jar = tmp_path / "app.jar"
    jar.write_bytes(b"PK")
    cmd = f"{PY} {{artifact}} {{port}}"
    problems, _ = deploy(cmd, version="v2")
    assert [p.field for p in problems] == ["--artifact"] and problems[0].file == str(tmp_path / "nonstop.yml")
    assert deploy(cmd, build={"artifact": "app.jar"}, version="v2")[0] == []
    # v1 is stored with its artifact: deploying it again needs none (it is not live here)
    problems, store = deploy(cmd, live={"v1": jar}, version="v1")
    digest = "sha256:" + hashlib.sha256(b"PK").hexdigest()[:12]
    assert [p.message for p in problems] == [f"release v1 is live already, with this artifact ({digest}): nothing to deploy"]


def test_a_program_gone_since_up_is_named(deploy):
    problems, _ = deploy("/nowhere/app --port {port}", version="v1")
    assert [(p.field, p.message) for p in problems] == [("run.command", "'/nowhere/app' does not exist: no instance could start")]


def test_refuse_lists_every_problem_with_exit_2(deploy, tmp_path):
    problems, _ = deploy(f"{PY} {{artifact}} {{port}}", version="../x", artifact=str(tmp_path / "nope"), strategy="big-bang")
    with pytest.raises(ConfigProblems) as ei:
        preflight.refuse(problems)
    e = ei.value
    assert e.exit_code == 2 and e.message.startswith("3 problems:\n")
    assert [p["field"] for p in e.detail["problems"]] == ["--strategy", "--version", "--artifact"]


def test_the_room_a_deploy_needs_is_its_copy_plus_a_margin(deploy, tmp_path, monkeypatch):
    """The free space is faked here (the arithmetic); a really full file system: tests/e2e/test_bad_input.py."""
    jar = tmp_path / "app.jar"
    jar.write_bytes(b"x" * 5000)
    monkeypatch.setattr("nonstop.agent.preflight.statedir.free_bytes", lambda folder: MIN_FREE + 4999)
    problems, _ = deploy(f"{PY} {{artifact}} {{port}}", version="v1", artifact=str(jar))
    assert [p.field for p in problems] == ["state_dir"]
    assert "has 16.0 MiB free; this deploy needs about 16.0 MiB (the copy of" in problems[0].message
    monkeypatch.setattr("nonstop.agent.preflight.statedir.free_bytes", lambda folder: MIN_FREE + 5000)
    assert deploy(f"{PY} {{artifact}} {{port}}", version="v1", artifact=str(jar))[0] == []
