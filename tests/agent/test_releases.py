"""Releases: build, immutable artifact copies under releases/<id>/, pruning."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest

from nonstop.agent.releases import BuildFailed, Releases, VersionTaken, artifact_digest, default_version
from nonstop.agent.store import StateDirFull, Store
from nonstop.config import BuildConfig
from nonstop.errors import DeploymentFailed, UsageError
from tests.tmpfs import small_tmpfs

PY = sys.executable


@pytest.fixture
def env(tmp_path):
    state = tmp_path / "state"
    store = Store(state / "nonstop.db")
    rel = Releases(state, store)
    app = tmp_path / "app"
    app.mkdir()
    yield rel, store, app
    store.close()


def left_in(releases: Releases) -> list[str]:
    return sorted(os.listdir(releases.dir)) if releases.dir.exists() else []


def writable(path) -> bool:
    return bool(os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def py(code: str) -> list[str]:
    return [PY, "-c", code]


# -- artifacts -------------------------------------------------------------------


def test_create_with_artifact_file(env):
    releases, store, app = env
    jar = app / "app.jar"
    jar.write_bytes(b"jar v1")
    said = []
    rel = releases.create("v1", jar, None, app, said.append)
    assert rel.id == "v1" and rel.version == "v1" and rel.status == "ok" and rel.build_log is None
    path = releases.artifact_path(rel)
    assert path == releases.dir / "v1" / "app.jar" == releases.artifact_path("v1")
    assert rel.artifact == str(path)
    assert path.read_bytes() == b"jar v1"
    assert store.get_release("v1") == rel
    assert left_in(releases) == ["v1"]  # no temp folder left behind
    assert any("release v1 stored" in m for m in said)


def test_relative_artifact_is_taken_from_base_dir(env):
    releases, _, app = env
    (app / "dist").mkdir()
    (app / "dist" / "a.jar").write_bytes(b"x")
    rel = releases.create("v1", "dist/a.jar", None, app)
    assert releases.artifact_path(rel).read_bytes() == b"x"


def test_create_with_artifact_dir_copies_it_whole(env):
    releases, _, app = env
    d = app / "dist"
    (d / "lib").mkdir(parents=True)
    (d / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(d / "run.sh", 0o755)
    (d / "lib" / "dep.jar").write_bytes(b"dep")
    rel = releases.create("v1", d, None, app)
    root = releases.artifact_path(rel)
    assert root == releases.dir / "v1" / "dist"
    assert (root / "lib" / "dep.jar").read_bytes() == b"dep"
    assert os.access(root / "run.sh", os.X_OK)
    assert subprocess.run([str(root / "run.sh")], capture_output=True, text=True).stdout == "hi\n"


def test_release_is_immutable(env):
    releases, _, app = env
    jar = app / "app.jar"
    jar.write_bytes(b"build 1")
    r1 = releases.create("v1", jar, None, app)
    jar.write_bytes(b"build 2 overwrote the jar")  # the next build rewrites the same path
    r2 = releases.create("v2", jar, None, app)
    assert releases.artifact_path(r1).read_bytes() == b"build 1"
    assert releases.artifact_path(r2).read_bytes() == b"build 2 overwrote the jar"
    for p in (releases.artifact_path(r1), releases.dir / "v1"):
        assert not writable(p), oct(os.stat(p).st_mode)
    if os.geteuid() != 0:  # root ignores modes
        with pytest.raises(PermissionError):
            releases.artifact_path(r1).write_bytes(b"nope")


def test_command_only_release_has_no_artifact(env):
    releases, store, app = env
    rel = releases.create("v1", None, None, app)
    assert rel.artifact is None and releases.artifact_path(rel) is None
    assert (releases.dir / "v1").is_dir()
    assert store.get_release("v1") == rel


def test_missing_artifact_and_bad_version_change_nothing(env):
    releases, store, app = env
    with pytest.raises(UsageError, match="no such file"):
        releases.create("v1", app / "nope.jar", None, app)
    with pytest.raises(UsageError, match="invalid version"):
        releases.create("../evil", None, None, app)
    assert store.list_releases() == [] and left_in(releases) == []


def test_generated_versions_move_on_past_a_taken_id(env, monkeypatch):
    releases, store, app = env
    monkeypatch.setattr("nonstop.agent.releases.default_version", lambda workdir, now=None: "20260101-000000")
    ids = [releases.create(None, None, None, app).id for _ in range(3)]
    assert ids == ["20260101-000000", "20260101-000000-2", "20260101-000000-3"]
    assert left_in(releases) == ids
    # a folder without a row (crash between rename and insert) is cleaned and reused
    store.delete_release("20260101-000000-3")
    assert releases.create(None, None, None, app).id == "20260101-000000-3"


def test_a_named_version_clashing_with_a_release_stored_meanwhile_is_refused(env):
    releases, store, app = env
    # another process inserted the row (and its folder) after this create looked
    (releases.dir / "v9").mkdir(parents=True)
    store.add_release("v9", None, id="v9")
    with pytest.raises(VersionTaken, match="meanwhile"):
        releases._place(releases.dir / "nope", "v9", "v9", None, None, None, suffix=False)
    assert [r.id for r in store.list_releases()] == ["v9"]


# -- a version names one artifact -------------------------------------------------


def test_the_same_version_and_artifact_is_the_same_release(env):
    releases, store, app = env
    jar = app / "app.jar"
    jar.write_bytes(b"jar v1")
    r1 = releases.create("v1", jar, None, app)
    assert r1.digest == "sha256:" + hashlib.sha256(b"jar v1").hexdigest()
    again = releases.create("v1", jar, None, app)
    assert again == r1 and [r.id for r in store.list_releases()] == ["v1"] and left_in(releases) == ["v1"]
    # no artifact given: the release as stored
    assert releases.create("v1", None, None, app) == r1
    # a copy elsewhere with the same bytes is the same artifact
    (app / "copy.jar").write_bytes(b"jar v1")
    assert releases.create("v1", app / "copy.jar", None, app) == r1


def test_the_same_version_with_another_artifact_is_refused_naming_both_digests(env):
    releases, store, app = env
    jar = app / "app.jar"
    jar.write_bytes(b"jar v1")
    releases.create("v1", jar, None, app)
    jar.write_bytes(b"jar v1, rebuilt")
    with pytest.raises(VersionTaken) as ei:
        releases.create("v1", jar, None, app)
    e = ei.value
    assert e.exit_code == 2 and e.detail["field"] == "--version"
    have = "sha256:" + hashlib.sha256(b"jar v1").hexdigest()
    given = "sha256:" + hashlib.sha256(b"jar v1, rebuilt").hexdigest()
    assert e.detail["digest"] == have and e.detail["given"] == given
    assert have[:19] in e.message and given[:19] in e.message and str(jar) in e.message
    assert [r.id for r in store.list_releases()] == ["v1"] and left_in(releases) == ["v1"]


def test_the_same_version_with_a_build_is_refused(env):
    releases, store, app = env
    releases.create("v1", None, None, app)
    build = BuildConfig(commands=[py("open('built', 'w').write('x')")])
    with pytest.raises(VersionTaken, match="a build would make a new artifact.*rollback --to v1"):
        releases.create("v1", None, build, app)
    assert not (app / "built").exists(), "the build ran"


def test_a_folders_digest_covers_names_contents_links_and_the_executable_bit(tmp_path):
    d = tmp_path / "dist"
    (d / "lib").mkdir(parents=True)
    (d / "run.sh").write_text("#!/bin/sh\n")
    (d / "lib" / "a.jar").write_bytes(b"a")
    os.symlink("lib/a.jar", d / "current.jar")
    base = artifact_digest(d)
    copy = tmp_path / "elsewhere" / "other-name"
    shutil.copytree(d, copy, symlinks=True)
    assert artifact_digest(copy) == base  # its own name is not part of it
    changes = [
        lambda p: (p / "lib" / "a.jar").write_bytes(b"b"),
        lambda p: os.rename(p / "lib" / "a.jar", p / "lib" / "b.jar"),
        lambda p: os.chmod(p / "run.sh", 0o755),
        lambda p: (os.unlink(p / "current.jar"), os.symlink("run.sh", p / "current.jar")),
        lambda p: (p / "empty").mkdir(),
    ]
    for i, change in enumerate(changes):
        c = tmp_path / f"c{i}"
        shutil.copytree(d, c, symlinks=True)
        change(c)
        assert artifact_digest(c) != base, i


def test_a_release_stored_before_digests_gets_one_from_its_copy(env):
    releases, store, app = env
    jar = app / "app.jar"
    jar.write_bytes(b"old")
    rel = releases.create("v1", jar, None, app)
    store.set_digest("v1", None)  # as a store migrated from schema 1 has it
    assert releases.create("v1", jar, None, app).id == "v1"
    assert store.get_release("v1").digest == rel.digest


def test_a_full_state_dir_leaves_no_half_copied_release(tmp_path):
    """A real tmpfs of 1 MiB and a 2 MiB artifact: the copy runs out of room."""
    with small_tmpfs(tmp_path / "state", "1m") as state:
        store = Store(state / "nonstop.db")
        releases = Releases(state, store)
        jar = tmp_path / "app.jar"
        jar.write_bytes(os.urandom(2 << 20))
        with pytest.raises(StateDirFull) as ei:
            releases.create("v1", jar, None, tmp_path)
        e = ei.value
        assert f"the state dir is full: {state} has " in e.message and " free" in e.message and str(jar) in e.message
        assert e.detail["free_bytes"] is not None and e.detail["free_bytes"] < (1 << 20)
        assert store.list_releases() == [] and left_in(releases) == []
        store.close()


def test_default_version_is_a_timestamp_plus_git_sha(env, tmp_path):
    releases, _, app = env
    v = releases.create(None, None, None, app).version
    assert re.fullmatch(r"\d{8}-\d{6}", v), v
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    g = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*g, "init", "-q"], check=True)
    (repo / "f").write_text("x")
    subprocess.run([*g, "add", "f"], check=True)
    subprocess.run([*g, "commit", "-qm", "x"], check=True)
    sha = subprocess.run([*g, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert default_version(repo, now=0) == f"19700101-000000-{sha}"
    rel = releases.create(None, None, BuildConfig(workdir=str(repo)), tmp_path)
    assert rel.version.endswith("-" + sha)


# -- builds ----------------------------------------------------------------------


def test_build_runs_in_workdir_logs_output_and_copies_the_built_artifact(env):
    releases, store, app = env
    build = BuildConfig(
        workdir="app",
        commands=[
            py("import sys; print('compiling'); print('warning: x', file=sys.stderr)"),
            py("import os; os.makedirs('build/libs', exist_ok=True); open('build/libs/app-1.jar', 'w').write('built')"),
        ],
        artifact="build/libs/*.jar",
    )
    said = []
    rel = releases.create("v1", None, build, app.parent, said.append)
    assert releases.artifact_path(rel) == releases.dir / "v1" / "app-1.jar"
    assert releases.artifact_path(rel).read_text() == "built"
    log = (releases.logs_dir / "build-v1.log").read_text()
    assert rel.build_log == str(releases.logs_dir / "build-v1.log")
    assert "compiling" in log and "warning: x" in log
    assert sum(l.startswith("=== nonstop ") for l in log.splitlines()) == 2
    assert any(m.startswith("build: ") for m in said)


def test_artifact_argument_wins_over_build_artifact(env):
    releases, _, app = env
    (app / "given.jar").write_text("given")
    build = BuildConfig(commands=[py("pass")], artifact="does-not-matter.jar")
    rel = releases.create("v1", app / "given.jar", build, app)
    assert releases.artifact_path(rel).read_text() == "given"


def test_failing_build_leaves_nothing_but_its_log(env):
    releases, store, app = env
    build = BuildConfig(
        commands=[py("print('step one ok')"), py("import sys; print('BUILD FAILED: tests'); sys.exit(3)"), py("print('never')")],
        artifact="app.jar",
    )
    with pytest.raises(BuildFailed) as e:
        releases.create("v1", None, build, app)
    assert isinstance(e.value, DeploymentFailed)
    assert "exit code 3" in e.value.message and "BUILD FAILED: tests" in e.value.message
    assert "BUILD FAILED: tests" in e.value.detail["log_tail"]
    assert store.list_releases() == [] and left_in(releases) == []
    log = (releases.logs_dir / "build-v1.log").read_text()
    assert "step one ok" in log and "never" not in log.replace("print('never')", "")


def test_build_timeout_kills_it(env):
    releases, store, app = env
    build = BuildConfig(commands=[py("import time; print('slow', flush=True); time.sleep(30)")], timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(BuildFailed, match="timed out after 0.3s"):
        releases.create("v1", None, build, app)
    assert time.monotonic() - t0 < 3
    assert store.list_releases() == [] and left_in(releases) == []


def test_build_problems_are_build_failures(env):
    releases, store, app = env
    with pytest.raises(BuildFailed, match="no-such-tool-nonstop.*no such executable"):
        releases.create("v1", None, BuildConfig(commands=["no-such-tool-nonstop --x"]), app)
    with pytest.raises(BuildFailed, match="does not exist after the build"):
        releases.create("v1", None, BuildConfig(commands=[py("pass")], artifact="out.jar"), app)
    with pytest.raises(BuildFailed, match="exactly one"):
        releases.create("v1", None, BuildConfig(commands=[py("pass")], artifact="*.nothing"), app)
    with pytest.raises(BuildFailed, match="workdir"):
        releases.create("v1", None, BuildConfig(workdir="missing", commands=[py("pass")]), app)
    assert store.list_releases() == [] and left_in(releases) == []


def test_shell_build(env):
    releases, _, app = env
    build = BuildConfig(commands=["echo one && echo two > out.txt"], shell=True, artifact="out.txt")
    rel = releases.create("v1", None, build, app)
    assert releases.artifact_path(rel).read_text() == "two\n"
    assert "one" in (releases.logs_dir / "build-v1.log").read_text()


def test_build_commands_name_the_release_and_keep_every_other_brace(env):
    """``docker build -t app:{version} .``: {version}, {release} and {state_dir} are filled in; braces of the
    command's own (a Go template, find's {}) are passed as written, as they were before placeholders."""
    releases, _, app = env
    build = BuildConfig(
        commands=[
            py("import sys; open('out.txt', 'w').write(' '.join(sys.argv[1:]))") + ["app:{version}", "{release}",
                                                                                  "{state_dir}", "{{.Id}}", "{}", "{port}"],
            "echo image app:{version} built > built.txt",
        ],
        shell=False,
        artifact="out.txt",
    )
    said = []
    rel = releases.create("v7", None, build, app, said.append)
    args = releases.artifact_path(rel).read_text().split()
    assert args == ["app:v7", "v7", str(releases.state_dir), "{{.Id}}", "{}", "{port}"]
    assert "build: echo image app:v7 built > built.txt" in said  # the command as run, in the log too
    assert "app:v7" in (releases.logs_dir / "build-v7.log").read_text()
    shelled = BuildConfig(commands=["echo {version} '{{.Id}}' > out.txt"], shell=True, artifact="out.txt")
    rel = releases.create("v 8".replace(" ", "-"), None, shelled, app)
    assert releases.artifact_path(rel).read_text() == "v-8 {{.Id}}\n"


# -- prune -----------------------------------------------------------------------


def test_prune_keeps_newest_and_protected(env):
    releases, store, app = env
    jar = app / "app.jar"
    jar.write_text("x")
    ids = [releases.create(f"v{i}", jar, None, app).id for i in range(1, 7)]  # v1 (oldest) … v6
    removed = releases.prune(2, protect={"v1", "v3"})
    assert sorted(removed) == ["v2", "v4"]
    assert [r.id for r in store.list_releases()] == ["v6", "v5", "v3", "v1"]
    assert left_in(releases) == ["v1", "v3", "v5", "v6"]  # read-only folders were removed
    assert releases.prune(2, protect={"v1", "v3"}) == []
    assert ids == ["v1", "v2", "v3", "v4", "v5", "v6"]
