"""The agent's state in SQLite: releases, deployments, events, instances, meta.

One file (``<state_dir>/nonstop.db``), WAL mode so readers (the CLI, the
dashboard) never block the agent's writes. Timestamps are float epoch
seconds; free-form ``data`` columns hold JSON objects. The schema carries a
version (``PRAGMA user_version``) and is moved forward by the ordered
``MIGRATIONS`` on open; a database written by a newer nonstop is refused.

Only one deployment may be active (state pending, progressing or paused): a
partial unique index makes SQLite itself refuse a second one, so two agent
processes racing on the same file cannot both start one.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from nonstop.agent.lifecycle import (
    DEPLOYMENT_ACTIVE,
    DEPLOYMENT_FINISHED,
    INSTANCE_STATES,
    check_transition,
)
from nonstop.agent.room import Reserve, StateDirFull, free_bytes, is_disk_full
from nonstop.errors import DeploymentInProgress, NonstopError, UsageError

__all__ = [
    "Release",
    "Deployment",
    "Event",
    "InstanceRecord",
    "Store",
    "StoreError",
    "StateDirFull",
    "RELEASE_STATUSES",
    "VERSION_RE",
    "validate_version",
]

VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
RELEASE_STATUSES = frozenset({"ok", "bad"})


class StoreError(NonstopError):
    """The state database cannot be opened or used (newer schema, corrupt file)."""


def validate_version(version: str) -> str:
    """Return ``version`` if it is a safe release name (it becomes a folder name), else raise ``UsageError``."""
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise UsageError(
            f"invalid version {version!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            detail={"field": "version"},
        )
    return version


# -- records -----------------------------------------------------------------


@dataclass
class Release:
    """One stored release: an immutable artifact copy (or none, for command-only apps)."""

    id: str
    version: str
    artifact: str | None
    created_at: float
    status: str = "ok"  # 'ok' | 'bad' (rolled back as bad: `rollback` skips it)
    build_log: str | None = None  # path of the build log, when a build ran
    digest: str | None = None  # "sha256:…" of the artifact (a file, or a folder's files); None: no artifact


@dataclass
class Deployment:
    """One deployment: which release, how, where it got to and how it ended."""

    id: int
    release: str
    strategy: str
    from_release: str | None
    state: str
    step: int
    started_at: float
    finished_at: float | None = None
    outcome: str | None = None
    reason: str | None = None
    data: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in DEPLOYMENT_FINISHED


@dataclass
class Event:
    """One line of a deployment's (or the agent's) timeline."""

    id: int
    deployment_id: int | None
    ts: float
    type: str
    message: str
    data: dict = field(default_factory=dict)


@dataclass
class InstanceRecord:
    """What the agent must remember of a running instance to re-adopt it after a restart."""

    id: str
    release: str
    port: int
    pid: int | None
    pid_create_time: float | None
    state: str
    started_at: float
    slot: str | None = None  # "blue"/"green", "canary"/"stable", … as the strategy names it
    restarts: int = 0
    data: dict = field(default_factory=dict)


# -- schema --------------------------------------------------------------------

# Each entry moves the schema from version i to i+1. Append only; never edit one
# that has shipped.
MIGRATIONS: list[str] = [
    # 1: first schema
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE releases (
        id         TEXT PRIMARY KEY,
        version    TEXT NOT NULL,
        artifact   TEXT,
        created_at REAL NOT NULL,
        status     TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'bad')),
        build_log  TEXT
    );
    CREATE TABLE deployments (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        release      TEXT NOT NULL,
        strategy     TEXT NOT NULL,
        from_release TEXT,
        state        TEXT NOT NULL,
        step         INTEGER NOT NULL DEFAULT 0,
        started_at   REAL NOT NULL,
        finished_at  REAL,
        outcome      TEXT,
        reason       TEXT,
        data         TEXT NOT NULL DEFAULT '{}'
    );
    -- At most one active deployment, enforced by SQLite across processes.
    CREATE UNIQUE INDEX deployments_one_active ON deployments ((0))
        WHERE state IN ('pending', 'progressing', 'paused');
    CREATE TABLE events (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment_id INTEGER,
        ts            REAL NOT NULL,
        type          TEXT NOT NULL,
        message       TEXT NOT NULL,
        data          TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_by_deployment ON events (deployment_id, id);
    CREATE TABLE instances (
        id              TEXT PRIMARY KEY,
        release         TEXT NOT NULL,
        port            INTEGER NOT NULL,
        pid             INTEGER,
        pid_create_time REAL,
        state           TEXT NOT NULL,
        started_at      REAL NOT NULL,
        slot            TEXT,
        restarts        INTEGER NOT NULL DEFAULT 0,
        data            TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: a version names one artifact: its digest, to tell a redeploy from a different build under the same name
    """
    ALTER TABLE releases ADD COLUMN digest TEXT;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

_DEPLOYMENT_FIELDS = frozenset(
    {"release", "strategy", "from_release", "state", "step", "started_at", "finished_at", "outcome", "reason", "data"}
)
_INSTANCE_FIELDS = frozenset(
    {"release", "port", "pid", "pid_create_time", "state", "started_at", "slot", "restarts", "data"}
)


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def _loads(s: str | None) -> Any:
    return json.loads(s) if s else {}


def _fmt_ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Store:
    """Owns the SQLite connection and every read and write of the agent's state.

    Thread-safe: one connection (``check_same_thread=False``) behind one lock;
    each write is one ``BEGIN IMMEDIATE`` transaction so other processes on the
    same file see all of it or none of it.
    """

    def __init__(self, path: str | Path, *, timeout: float = 10.0, reserve: bool = True) -> None:
        """``reserve``: keep room for the end of an operation when the disk fills (``room.Reserve``); off for
        readers that must not add files (the CLI's offline views)."""
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._reserve = Reserve(Path(self.path + "-reserve")) if reserve and self.path != ":memory:" else None
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open state database {self.path}: {e}") from e
        if self._reserve is not None:
            self._reserve.keep()

    # -- plumbing --------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                else:
                    self._db.execute("COMMIT")
            except sqlite3.Error as e:
                # A full file system is the user's to fix, not a crash: say where and how much room is left.
                # SQLite rolls a failed statement's transaction back whole; a failed COMMIT keeps it open.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if is_disk_full(e):
                    raise self.full() from e
                raise
            if self._reserve is not None:
                self._reserve.keep()

    def full(self, action: str = "") -> StateDirFull:
        """The error for a write the full disk refused; gives the reserve back so the next writes (how the
        operation ended) can be made."""
        folder = Path(self.path).parent
        free = free_bytes(folder)
        released = self._reserve.release() if self._reserve is not None else 0
        return StateDirFull(folder, action, free=free, released=released)

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _migrate(self) -> None:
        with self._write() as db:
            current = db.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"state database {self.path} has schema version {current}, newer than this "
                    f"nonstop understands ({SCHEMA_VERSION}); upgrade nonstop"
                )
            for version in range(current, SCHEMA_VERSION):
                for stmt in MIGRATIONS[version].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version = {version + 1}")

    @property
    def schema_version(self) -> int:
        return self._read("PRAGMA user_version")[0][0]

    # -- releases ----------------------------------------------------------------
    @staticmethod
    def _release(row: sqlite3.Row) -> Release:
        return Release(
            id=row["id"],
            version=row["version"],
            artifact=row["artifact"],
            created_at=row["created_at"],
            status=row["status"],
            build_log=row["build_log"],
            digest=row["digest"],
        )

    def _id_taken(self, db: sqlite3.Connection, rid: str) -> bool:
        # Only stored releases count: a deployment is recorded under the asked-for
        # version before its release exists (the build runs inside it).
        return db.execute("SELECT 1 FROM releases WHERE id = ?", (rid,)).fetchone() is not None

    def _free_id(self, db: sqlite3.Connection, version: str) -> str:
        rid, n = version, 1
        while self._id_taken(db, rid):
            n += 1
            rid = f"{version}-{n}"
        return rid

    def release_id(self, version: str) -> str:
        """The id ``add_release(version, …)`` would give now (``version``, else ``version-2``, ``-3``…)."""
        validate_version(version)
        with self._lock:
            return self._free_id(self._db, version)

    def add_release(
        self,
        version: str,
        artifact: str | None,
        build_log: str | None = None,
        *,
        id: str | None = None,
        digest: str | None = None,
    ) -> Release:
        """Store a new release. ``id`` (optional) asks for exactly that id and raises
        ``UsageError`` when it is taken (``Releases`` uses it after naming the folder)."""
        validate_version(version)
        with self._write() as db:
            if id is None:
                rid = self._free_id(db, version)
            else:
                validate_version(id)
                if self._id_taken(db, id):
                    raise UsageError(f"release id {id!r} is already taken", detail={"release": id})
                rid = id
            rel = Release(rid, version, artifact, time.time(), "ok", build_log, digest)
            db.execute(
                "INSERT INTO releases (id, version, artifact, created_at, status, build_log, digest) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rel.id, rel.version, rel.artifact, rel.created_at, rel.status, rel.build_log, rel.digest),
            )
        return rel

    def get_release(self, id: str) -> Release | None:
        rows = self._read("SELECT * FROM releases WHERE id = ?", (id,))
        return self._release(rows[0]) if rows else None

    def find_release(self, version: str) -> Release | None:
        """The release ``version`` names: the one with that id, else the newest of that version (a store
        written before versions were unique may hold ``v1`` and ``v1-2``)."""
        rel = self.get_release(version)
        if rel is not None:
            return rel
        rows = self._read("SELECT * FROM releases WHERE version = ? ORDER BY created_at DESC, rowid DESC LIMIT 1", (version,))
        return self._release(rows[0]) if rows else None

    def set_digest(self, id: str, digest: str | None) -> None:
        """Record the digest of a release stored before digests were (its copy is immutable: computed once)."""
        with self._write() as db:
            db.execute("UPDATE releases SET digest = ? WHERE id = ?", (digest, id))

    def list_releases(self) -> list[Release]:
        """Newest first."""
        return [self._release(r) for r in self._read("SELECT * FROM releases ORDER BY created_at DESC, rowid DESC")]

    def mark_release(self, id: str, status: str) -> Release:
        if status not in RELEASE_STATUSES:
            raise UsageError(f"invalid release status {status!r}; expected one of {sorted(RELEASE_STATUSES)}")
        with self._write() as db:
            if db.execute("UPDATE releases SET status = ? WHERE id = ?", (status, id)).rowcount == 0:
                raise UsageError(f"unknown release {id!r}", detail={"release": id})
        rel = self.get_release(id)
        assert rel is not None
        return rel

    def delete_release(self, id: str) -> bool:
        """Delete the row (not the folder: see ``Releases.prune``). False when there was none."""
        with self._write() as db:
            return db.execute("DELETE FROM releases WHERE id = ?", (id,)).rowcount > 0

    # -- deployments -------------------------------------------------------------
    @staticmethod
    def _deployment(row: sqlite3.Row) -> Deployment:
        return Deployment(
            id=row["id"],
            release=row["release"],
            strategy=row["strategy"],
            from_release=row["from_release"],
            state=row["state"],
            step=row["step"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            outcome=row["outcome"],
            reason=row["reason"],
            data=_loads(row["data"]),
        )

    @staticmethod
    def _in_progress(d: Deployment) -> DeploymentInProgress:
        return DeploymentInProgress(
            f"a deployment is in progress: release {d.release} ({d.strategy}), started "
            f"{_fmt_ts(d.started_at)}, at step {d.step} ({d.state}); "
            "wait for it, or `nonstop abort` it",
            detail={
                "deployment": d.id,
                "release": d.release,
                "strategy": d.strategy,
                "started_at": d.started_at,
                "step": d.step,
                "state": d.state,
            },
        )

    def _active(self, db: sqlite3.Connection) -> Deployment | None:
        marks = ", ".join("?" * len(DEPLOYMENT_ACTIVE))
        row = db.execute(
            f"SELECT * FROM deployments WHERE state IN ({marks}) ORDER BY id DESC LIMIT 1", tuple(DEPLOYMENT_ACTIVE)
        ).fetchone()
        return self._deployment(row) if row else None

    def create_deployment(
        self, release: str, strategy: str, from_release: str | None, *, data: dict | None = None
    ) -> Deployment:
        """A new deployment in state ``pending``. Raises ``DeploymentInProgress``
        (naming the running one) when one is active, in this process or another."""
        try:
            with self._write() as db:
                active = self._active(db)
                if active is not None:
                    raise self._in_progress(active)
                now = time.time()
                cur = db.execute(
                    "INSERT INTO deployments (release, strategy, from_release, state, step, started_at, data) "
                    "VALUES (?, ?, ?, 'pending', 0, ?, ?)",
                    (release, strategy, from_release, now, _dumps(data or {})),
                )
                did = cur.lastrowid
        except sqlite3.IntegrityError:
            # The unique index caught a writer that slipped past the check.
            with self._lock:
                active = self._active(self._db)
            if active is None:
                raise
            raise self._in_progress(active) from None
        d = self.get_deployment(did)
        assert d is not None
        return d

    def update_deployment(self, id: int, **fields: Any) -> Deployment:
        """Change fields of a deployment. ``state`` changes are checked against
        ``DEPLOYMENT_TRANSITIONS`` (``LifecycleError``); ``data`` is merged into
        the stored object (keys set to ``None`` are kept as null). Reaching a
        finished state sets ``finished_at`` (now) and ``outcome`` (the state)
        unless given."""
        unknown = set(fields) - _DEPLOYMENT_FIELDS
        if unknown:
            raise TypeError(f"update_deployment: unknown field(s) {sorted(unknown)}")
        with self._write() as db:
            row = db.execute("SELECT * FROM deployments WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise UsageError(f"unknown deployment {id}", detail={"deployment": id})
            cur = self._deployment(row)
            if "state" in fields and fields["state"] != cur.state:
                check_transition("deployment", cur.state, fields["state"])
                if fields["state"] in DEPLOYMENT_FINISHED:
                    fields.setdefault("finished_at", time.time())
                    if cur.outcome is None:
                        fields.setdefault("outcome", fields["state"])
            if "data" in fields:
                fields["data"] = _dumps({**cur.data, **(fields["data"] or {})})
            if fields:
                cols = ", ".join(f"{k} = ?" for k in fields)
                db.execute(f"UPDATE deployments SET {cols} WHERE id = ?", (*fields.values(), id))
        d = self.get_deployment(id)
        assert d is not None
        return d

    def get_deployment(self, id: int) -> Deployment | None:
        rows = self._read("SELECT * FROM deployments WHERE id = ?", (id,))
        return self._deployment(rows[0]) if rows else None

    def active_deployment(self) -> Deployment | None:
        with self._lock:
            return self._active(self._db)

    def list_deployments(self, limit: int = 50) -> list[Deployment]:
        """Newest first."""
        return [self._deployment(r) for r in self._read("SELECT * FROM deployments ORDER BY id DESC LIMIT ?", (limit,))]

    # -- events ------------------------------------------------------------------
    def add_event(self, deployment_id: int | None, type: str, message: str, data: dict | None = None) -> Event:
        ts = time.time()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO events (deployment_id, ts, type, message, data) VALUES (?, ?, ?, ?, ?)",
                (deployment_id, ts, type, message, _dumps(data or {})),
            )
            eid = cur.lastrowid
        return Event(eid, deployment_id, ts, type, message, dict(data or {}))

    def events(self, deployment_id: int | None = None, after_id: int = 0, limit: int = 1000) -> list[Event]:
        """Oldest first, with ``id > after_id`` (so a follower can poll with the last id it saw)."""
        if deployment_id is None:
            rows = self._read("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        else:
            rows = self._read(
                "SELECT * FROM events WHERE deployment_id = ? AND id > ? ORDER BY id LIMIT ?",
                (deployment_id, after_id, limit),
            )
        return [Event(r["id"], r["deployment_id"], r["ts"], r["type"], r["message"], _loads(r["data"])) for r in rows]

    # -- instances ---------------------------------------------------------------
    @staticmethod
    def _instance(row: sqlite3.Row) -> InstanceRecord:
        return InstanceRecord(
            id=row["id"],
            release=row["release"],
            port=row["port"],
            pid=row["pid"],
            pid_create_time=row["pid_create_time"],
            state=row["state"],
            started_at=row["started_at"],
            slot=row["slot"],
            restarts=row["restarts"],
            data=_loads(row["data"]),
        )

    def put_instance(self, rec: InstanceRecord) -> InstanceRecord:
        """Insert or replace the whole record (no transition check: use
        ``update_instance`` for checked state changes)."""
        if rec.state not in INSTANCE_STATES:
            raise UsageError(f"unknown instance state {rec.state!r}; expected one of {sorted(INSTANCE_STATES)}")
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO instances (id, release, port, pid, pid_create_time, state, started_at, slot, "
                "restarts, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.id,
                    rec.release,
                    rec.port,
                    rec.pid,
                    rec.pid_create_time,
                    rec.state,
                    rec.started_at,
                    rec.slot,
                    rec.restarts,
                    _dumps(rec.data or {}),
                ),
            )
        return rec

    def update_instance(self, id: str, **fields: Any) -> InstanceRecord:
        """Change fields of an instance; ``state`` changes are checked against
        ``INSTANCE_TRANSITIONS``; ``data`` is merged."""
        unknown = set(fields) - _INSTANCE_FIELDS
        if unknown:
            raise TypeError(f"update_instance: unknown field(s) {sorted(unknown)}")
        with self._write() as db:
            row = db.execute("SELECT * FROM instances WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise UsageError(f"unknown instance {id!r}", detail={"instance": id})
            cur = self._instance(row)
            if "state" in fields:
                check_transition("instance", cur.state, fields["state"])
            if "data" in fields:
                fields["data"] = _dumps({**cur.data, **(fields["data"] or {})})
            if fields:
                cols = ", ".join(f"{k} = ?" for k in fields)
                db.execute(f"UPDATE instances SET {cols} WHERE id = ?", (*fields.values(), id))
        rec = self.get_instance(id)
        assert rec is not None
        return rec

    def get_instance(self, id: str) -> InstanceRecord | None:
        rows = self._read("SELECT * FROM instances WHERE id = ?", (id,))
        return self._instance(rows[0]) if rows else None

    def instances(self, release: str | None = None) -> list[InstanceRecord]:
        """Ordered by port, then id."""
        if release is None:
            rows = self._read("SELECT * FROM instances ORDER BY port, id")
        else:
            rows = self._read("SELECT * FROM instances WHERE release = ? ORDER BY port, id", (release,))
        return [self._instance(r) for r in rows]

    def delete_instance(self, id: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM instances WHERE id = ?", (id,)).rowcount > 0

    # -- meta --------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value; ``None`` is stored as null (use ``delete_meta`` to remove)."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def delete_meta(self, key: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (key,))
