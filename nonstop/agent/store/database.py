"""The SQLite connection under every table: opening (WAL, the schema moved forward), one lock, one
``BEGIN IMMEDIATE`` transaction per write, a full disk reported as ``StateDirFull``, and the JSON of ``data``
columns."""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Self

from nonstop.agent.room import Reserve, StateDirFull, free_bytes, is_disk_full
from nonstop.agent.store.schema import MIGRATIONS, SCHEMA_VERSION
from nonstop.errors import NonstopError


class StoreError(NonstopError):
    """The state database cannot be opened or used (newer schema, corrupt file)."""


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def _loads(s: str | None) -> Any:
    return json.loads(s) if s else {}


class Database:
    """Owns the SQLite connection, its lock and the disk reserve; the tables (``releases``, ``deployments``, …)
    are subclasses that add their queries, and ``Store`` is all of them.

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

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
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
