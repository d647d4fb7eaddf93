"""Store: SQLite state of the agent (releases, deployments, events, instances, meta)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading

import pytest

import nonstop
from nonstop.agent.lifecycle import (
    DEPLOYMENT_FINISHED,
    DEPLOYMENT_TRANSITIONS,
    INSTANCE_TRANSITIONS,
    LifecycleError,
    check_transition,
)
from nonstop.agent.room import RESERVE_BYTES, Reserve
from nonstop.agent.store import MIGRATIONS, SCHEMA_VERSION, InstanceRecord, StateDirFull, Store, StoreError
from nonstop.errors import DeploymentInProgress, NonstopError, UsageError
from tests.tmpfs import fill, small_tmpfs


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "nonstop.db")
    yield s
    s.close()


# -- schema ----------------------------------------------------------------------


def test_fresh_db_is_wal_and_at_current_schema(tmp_path):
    s = Store(tmp_path / "state" / "nonstop.db")  # parent folder created
    assert s.schema_version == SCHEMA_VERSION
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()
    # reopening does not re-run migrations
    s2 = Store(tmp_path / "state" / "nonstop.db")
    assert s2.schema_version == SCHEMA_VERSION
    s2.close()


def test_newer_schema_is_refused(tmp_path):
    p = tmp_path / "nonstop.db"
    db = sqlite3.connect(p)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(p)


def test_not_a_database_is_a_store_error(tmp_path):
    p = tmp_path / "nonstop.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as e:
        Store(p)
    assert isinstance(e.value, NonstopError)


# -- releases --------------------------------------------------------------------


def test_release_ids_are_version_then_suffixed(store):
    a = store.add_release("v1", "/x/a.jar")
    b = store.add_release("v1", "/x/b.jar", build_log="/logs/build-v1-2.log")
    c = store.add_release("v1", None)
    assert (a.id, b.id, c.id) == ("v1", "v1-2", "v1-3")
    assert b.version == "v1" and b.build_log == "/logs/build-v1-2.log" and c.artifact is None
    assert store.release_id("v1") == "v1-4"
    assert store.get_release("v1-2") == b
    assert [r.id for r in store.list_releases()] == ["v1-3", "v1-2", "v1"]  # newest first


def test_release_id_free_again_after_delete_and_not_taken_by_a_deployment(store):
    # the deployer records the deployment under the asked-for version before the build
    store.create_deployment("v1", "recreate", None)
    assert store.add_release("v1", None).id == "v1"
    assert store.delete_release("v1") is True
    assert store.delete_release("v1") is False
    assert store.add_release("v1", None).id == "v1"


def test_explicit_release_id(store):
    assert store.add_release("v1", None, id="v1-7").id == "v1-7"
    with pytest.raises(UsageError, match="taken"):
        store.add_release("v1", None, id="v1-7")


@pytest.mark.parametrize("bad", ["", "-v1", ".hidden", "a/b", "../x", "v 1", "a" * 64, "v1\n", "é"])
def test_invalid_versions_are_refused(store, bad):
    with pytest.raises(UsageError, match="invalid version"):
        store.add_release(bad, None)
    assert store.list_releases() == []


def test_mark_release(store):
    store.add_release("v1", None)
    assert store.mark_release("v1", "bad").status == "bad"
    assert store.get_release("v1").status == "bad"
    with pytest.raises(UsageError):
        store.mark_release("v1", "weird")
    with pytest.raises(UsageError, match="unknown release"):
        store.mark_release("nope", "ok")
    assert store.get_release("nope") is None


# -- deployments -----------------------------------------------------------------


def test_deployment_lifecycle_and_data_merge(store):
    d = store.create_deployment("v2", "blue-green", "v1")
    assert (d.state, d.step, d.from_release, d.finished_at, d.data) == ("pending", 0, "v1", None, {})
    assert store.active_deployment() == d
    d = store.update_deployment(d.id, state="progressing", step=1, data={"color": "green", "ports": [8082]})
    d = store.update_deployment(d.id, step=2, data={"switched": True})
    assert d.data == {"color": "green", "ports": [8082], "switched": True}
    d = store.update_deployment(d.id, state="promoted")
    assert d.finished and d.finished_at is not None and d.outcome == "promoted"
    assert store.active_deployment() is None
    assert store.list_deployments() == [d]


def test_finished_outcome_and_reason_given_explicitly(store):
    d = store.create_deployment("v2", "recreate", "v1")
    d = store.update_deployment(d.id, state="failed", outcome="health", reason="never became healthy", finished_at=5.0)
    assert (d.outcome, d.reason, d.finished_at) == ("health", "never became healthy", 5.0)


def test_illegal_deployment_transition_changes_nothing(store):
    d = store.create_deployment("v2", "canary", "v1")
    store.update_deployment(d.id, state="progressing")
    store.update_deployment(d.id, state="rolled_back")
    with pytest.raises(LifecycleError, match="rolled_back to progressing"):
        store.update_deployment(d.id, state="progressing", step=9)
    assert store.get_deployment(d.id).step == 0
    with pytest.raises(LifecycleError):
        store.update_deployment(d.id, state="nonsense")
    with pytest.raises(TypeError):
        store.update_deployment(d.id, colour="red")
    with pytest.raises(UsageError):
        store.update_deployment(999, step=1)


def test_second_active_deployment_is_refused_naming_the_first(store):
    d = store.create_deployment("v2", "canary", "v1")
    store.update_deployment(d.id, state="progressing", step=2)
    with pytest.raises(DeploymentInProgress) as e:
        store.create_deployment("v3", "blue-green", "v1")
    msg = e.value.message
    assert "v2" in msg and "canary" in msg and "step 2" in msg and "UTC" in msg
    assert e.value.detail["release"] == "v2" and e.value.detail["step"] == 2
    assert e.value.exit_code == 4
    store.update_deployment(d.id, state="paused")
    with pytest.raises(DeploymentInProgress):
        store.create_deployment("v3", "blue-green", "v1")
    store.update_deployment(d.id, state="aborted")
    assert store.create_deployment("v3", "blue-green", "v1").release == "v3"


def test_database_itself_refuses_two_active_deployments(store):
    store.create_deployment("v2", "canary", "v1")
    # a writer that skips the check (another process's race) hits the unique index
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute(
            "INSERT INTO deployments (release, strategy, state, step, started_at) VALUES ('v3', 'x', 'progressing', 0, 0)"
        )


def test_two_processes_race_for_one_deployment(tmp_path):
    db = tmp_path / "nonstop.db"
    Store(db).close()
    code = (
        "import sys; from nonstop.agent.store import Store; from nonstop.errors import DeploymentInProgress\n"
        "s = Store(sys.argv[1])\n"
        "try:\n    s.create_deployment(sys.argv[2], 'recreate', None); print('won')\n"
        "except DeploymentInProgress:\n    print('lost')\n"
    )
    root = os.path.dirname(os.path.dirname(nonstop.__file__))
    env = {**os.environ, "PYTHONPATH": root}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(db), f"v{i}"], stdout=subprocess.PIPE, text=True, env=env)
        for i in range(3)
    ]
    outs = sorted(p.communicate(timeout=20)[0].strip() for p in procs)
    assert outs == ["lost", "lost", "won"]


def test_threads_share_one_store(store):
    errors = []

    def worker(n):
        try:
            for i in range(20):
                store.add_event(None, "tick", f"{n}-{i}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert len(store.events()) == 80


# -- events ----------------------------------------------------------------------


def test_events_filter_and_follow(store):
    d1 = store.create_deployment("v1", "recreate", None)
    e1 = store.add_event(d1.id, "step", "starting v1", {"port": 8081})
    e2 = store.add_event(None, "agent", "agent started")
    e3 = store.add_event(d1.id, "result", "done")
    assert e1.data == {"port": 8081} and e2.deployment_id is None
    assert [e.id for e in store.events()] == [e1.id, e2.id, e3.id]
    assert [e.message for e in store.events(d1.id)] == ["starting v1", "done"]
    assert [e.id for e in store.events(after_id=e1.id)] == [e2.id, e3.id]
    assert [e.id for e in store.events(d1.id, after_id=e1.id)] == [e3.id]
    assert len(store.events(limit=2)) == 2
    assert store.events(d1.id)[0].data == {"port": 8081}


# -- instances -------------------------------------------------------------------


def _inst(id="v1-1", release="v1", port=8081, state="starting", **kw):
    return InstanceRecord(
        id=id, release=release, port=port, pid=1234, pid_create_time=1.5, state=state, started_at=2.0, **kw
    )


def test_instances_put_get_list_delete(store):
    a = store.put_instance(_inst(slot="blue", data={"color": "blue"}))
    b = store.put_instance(_inst("v2-1", "v2", 8082))
    assert store.get_instance("v1-1") == a
    assert store.instances() == [a, b]
    assert store.instances(release="v2") == [b]
    a2 = _inst(state="healthy", restarts=1, slot="blue")
    store.put_instance(a2)  # replace
    assert store.get_instance("v1-1") == a2
    assert store.delete_instance("v1-1") is True
    assert store.delete_instance("v1-1") is False
    assert store.get_instance("v1-1") is None
    with pytest.raises(UsageError):
        store.put_instance(_inst(state="zombie"))


def test_update_instance_checks_transitions(store):
    store.put_instance(_inst(data={"a": 1}))
    r = store.update_instance("v1-1", state="healthy", data={"b": 2})
    assert r.state == "healthy" and r.data == {"a": 1, "b": 2}
    store.update_instance("v1-1", state="unhealthy")
    store.update_instance("v1-1", state="healthy")
    store.update_instance("v1-1", state="draining")
    with pytest.raises(LifecycleError, match="draining to healthy"):
        store.update_instance("v1-1", state="healthy")
    store.update_instance("v1-1", state="stopped")
    r = store.update_instance("v1-1", state="starting", restarts=1, pid=99)
    assert (r.state, r.restarts, r.pid) == ("starting", 1, 99)


# -- meta ------------------------------------------------------------------------


def test_meta_json_values(store):
    assert store.get_meta("live_release") is None
    assert store.get_meta("live_release", "none") == "none"
    store.set_meta("live_release", "v2")
    store.set_meta("previous_release", "v1")
    store.set_meta("routes", {"revision": 3, "w": [10, 90]})
    assert store.get_meta("live_release") == "v2"
    assert store.get_meta("routes") == {"revision": 3, "w": [10, 90]}
    store.set_meta("live_release", "v3")
    assert store.get_meta("live_release") == "v3"
    store.delete_meta("live_release")
    assert store.get_meta("live_release", 0) == 0


def test_state_survives_reopen(tmp_path):
    p = tmp_path / "nonstop.db"
    with Store(p) as s:
        s.add_release("v1", "/a.jar")
        s.set_meta("live_release", "v1")
        s.create_deployment("v1", "recreate", None)
    with Store(p) as s:
        assert s.get_release("v1").artifact == "/a.jar"
        assert s.get_meta("live_release") == "v1"
        assert s.active_deployment().release == "v1"


# -- lifecycle tables ------------------------------------------------------------


def test_finished_states_are_final():
    for s in DEPLOYMENT_FINISHED:
        assert DEPLOYMENT_TRANSITIONS[s] == frozenset()
        with pytest.raises(LifecycleError, match="final"):
            check_transition("deployment", s, "progressing")


@pytest.mark.parametrize(
    "kind,old,new,ok",
    [
        ("deployment", "pending", "progressing", True),
        ("deployment", "progressing", "paused", True),
        ("deployment", "paused", "progressing", True),
        ("deployment", "paused", "promoted", True),
        ("deployment", "pending", "promoted", False),
        ("deployment", "progressing", "pending", False),
        ("instance", "starting", "healthy", True),
        ("instance", "starting", "failed", True),
        ("instance", "healthy", "unhealthy", True),
        ("instance", "unhealthy", "healthy", True),
        ("instance", "healthy", "draining", True),
        ("instance", "draining", "stopped", True),
        ("instance", "healthy", "starting", False),
        ("instance", "draining", "healthy", False),
        ("instance", "starting", "unhealthy", False),
        ("instance", "healthy", "healthy", True),
    ],
)
def test_transition_table(kind, old, new, ok):
    if ok:
        check_transition(kind, old, new)
    else:
        with pytest.raises(LifecycleError):
            check_transition(kind, old, new)


def test_any_instance_state_can_stop():
    for s in INSTANCE_TRANSITIONS:
        check_transition("instance", s, "stopped")


# -- versions and digests ------------------------------------------------------------


def test_a_version_is_found_by_id_then_as_the_newest_of_that_version(store):
    store.add_release("v1", "/a", digest="sha256:aa")
    store.add_release("v1", "/b", digest="sha256:bb")  # v1-2, as stores before unique versions hold them
    assert store.find_release("v1").digest == "sha256:aa"
    store.delete_release("v1")
    assert store.find_release("v1").id == "v1-2"
    assert store.find_release("v9") is None


def test_a_schema_1_store_moves_to_digests_keeping_its_releases(tmp_path):
    db = tmp_path / "nonstop.db"
    con = sqlite3.connect(db)
    con.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    con.execute("INSERT INTO releases (id, version, artifact, created_at) VALUES ('v1', 'v1', '/x/app.jar', 1.0)")
    con.commit()
    con.close()
    with Store(db) as s:
        assert s.schema_version == SCHEMA_VERSION
        rel = s.get_release("v1")
        assert rel.artifact == "/x/app.jar" and rel.digest is None


# -- a full state dir ------------------------------------------------------------------


def test_a_full_state_dir_is_named_with_its_free_space_and_the_database_stays_whole(tmp_path):
    """A real tmpfs of 2 MiB, filled to the last byte: SQLite cannot grow its WAL."""
    with small_tmpfs(tmp_path / "state", "2m") as state:
        s = Store(state / "nonstop.db")
        s.add_release("v1", None)
        dep = s.create_deployment("v1", "blue-green", None)
        s.update_deployment(dep.id, state="progressing")
        filler = fill(state)
        with pytest.raises(StateDirFull) as ei:
            for i in range(10_000):  # the first page the WAL lacks room for
                s.add_event(dep.id, "step", "x" * 2000)
        e = ei.value
        assert isinstance(e, NonstopError) and isinstance(e.__cause__, sqlite3.OperationalError)
        assert e.detail["reserve_released"] == 0  # 2 MiB: too small to have kept one
        assert f"the state dir is full: {state} has " in e.message and " free" in e.message
        assert e.detail["path"] == str(state) and e.detail["free_bytes"] < 64 * 1024
        written = len(s.events(dep.id, limit=100_000))
        with pytest.raises(StateDirFull):
            s.update_deployment(dep.id, state="promoted")
        # nothing half-written: the failed writes are not there, everything before them is
        assert s.get_deployment(dep.id).state == "progressing" and len(s.events(dep.id, limit=100_000)) == written
        filler.unlink()
        s.update_deployment(dep.id, state="promoted")
        s.close()
        con = sqlite3.connect(state / "nonstop.db")
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT state FROM deployments").fetchall() == [("promoted",)]
        assert con.execute("SELECT id FROM releases").fetchall() == [("v1",)]
        con.close()


def test_the_reserve_lets_an_operation_record_its_end_on_a_full_disk(tmp_path, monkeypatch):
    """16 MiB tmpfs: the store keeps a 1 MiB reserve; the first write that finds the disk full gives it back."""
    monkeypatch.setattr(Reserve, "recheck", 0.0)
    with small_tmpfs(tmp_path / "state", "16m") as state:
        s = Store(state / "nonstop.db")
        reserve = state / "nonstop.db-reserve"
        assert reserve.stat().st_size == RESERVE_BYTES and reserve.stat().st_blocks * 512 >= RESERVE_BYTES
        dep = s.create_deployment("v1", "rollback", None)
        s.update_deployment(dep.id, state="progressing")
        filler = fill(state)
        with pytest.raises(StateDirFull) as ei:
            for _ in range(10_000):
                s.add_event(dep.id, "step", "x" * 2000)
        e = ei.value
        assert e.detail["reserve_released"] == RESERVE_BYTES and "gave back its 1.0 MiB reserve" in e.message
        assert e.detail["free_bytes"] < 64 * 1024  # measured before the reserve was given back
        assert not reserve.exists()
        # how it ended can be written now
        s.add_event(dep.id, "result", "the state dir is full")
        s.update_deployment(dep.id, state="failed", reason=e.message)
        assert s.get_deployment(dep.id).state == "failed"
        assert not reserve.exists()  # no room to make it again yet
        filler.unlink()
        s.add_event(None, "note", "room again")
        assert reserve.exists()
        s.close()
    # readers that must add nothing keep none
    with Store(tmp_path / "ro.db", reserve=False):
        pass
    assert not (tmp_path / "ro.db-reserve").exists()
