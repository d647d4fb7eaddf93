"""The ``meta`` table: small JSON values by key (the agent's own bookkeeping)."""

from __future__ import annotations

import json
from typing import Any

from nonstop.agent.store.database import Database


class MetaTable(Database):
    """The queries of the ``meta`` table."""

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
