"""The ``deployments`` table: at most one active (SQLite itself refuses a second), state changes checked
against the lifecycle's transitions."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from typing import Any

from nonstop.agent.lifecycle import DEPLOYMENT_ACTIVE, DEPLOYMENT_FINISHED, check_transition
from nonstop.agent.store.database import Database, _dumps, _loads
from nonstop.agent.store.records import Deployment
from nonstop.errors import DeploymentInProgress, UsageError

_DEPLOYMENT_FIELDS = frozenset(
    {"release", "strategy", "from_release", "state", "step", "started_at", "finished_at", "outcome", "reason", "data"}
)


def _fmt_ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class DeploymentTable(Database):
    """The queries of the ``deployments`` table."""

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
