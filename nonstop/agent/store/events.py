"""The ``events`` table: a deployment's (or the agent's) timeline, read oldest first after a given id."""

from __future__ import annotations

import time

from nonstop.agent.store.database import Database, _dumps, _loads
from nonstop.agent.store.records import Event


class EventTable(Database):
    """The queries of the ``events`` table."""

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
