"""The ``releases`` table: one row per stored release, its id (``v1``, else ``v1-2``…), status and digest."""

from __future__ import annotations

import sqlite3
import time

from nonstop.agent.store.database import Database
from nonstop.agent.store.records import RELEASE_STATUSES, Release, validate_version
from nonstop.errors import UsageError


class ReleaseTable(Database):
    """The queries of the ``releases`` table."""

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
