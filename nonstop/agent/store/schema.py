"""The state database's tables, as the ordered migrations that build them (``PRAGMA user_version`` counts how
many have run; ``Database`` runs the rest on open)."""

from __future__ import annotations

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
