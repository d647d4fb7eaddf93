"""The ``instances`` table: what the agent must remember of each running instance to adopt it again."""

from __future__ import annotations

import sqlite3
from typing import Any

from nonstop.agent.lifecycle import INSTANCE_STATES, check_transition
from nonstop.agent.store.database import Database, _dumps, _loads
from nonstop.agent.store.records import InstanceRecord
from nonstop.errors import UsageError

_INSTANCE_FIELDS = frozenset(
    {"release", "port", "pid", "pid_create_time", "state", "started_at", "slot", "restarts", "data"}
)


class InstanceTable(Database):
    """The queries of the ``instances`` table."""

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
