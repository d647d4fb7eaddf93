"""The agent's state in SQLite: releases, deployments, events, instances, meta.

One file (``<state_dir>/nonstop.db``), WAL mode so readers (the CLI, the
dashboard) never block the agent's writes. Timestamps are float epoch
seconds; free-form ``data`` columns hold JSON objects. The schema carries a
version (``PRAGMA user_version``) and is moved forward by the ordered
``MIGRATIONS`` on open; a database written by a newer nonstop is refused.

Only one deployment may be active (state pending, progressing or paused): a
partial unique index makes SQLite itself refuse a second one, so two agent
processes racing on the same file cannot both start one.

The package holds one part a module: ``records`` (the dataclasses handed out), ``schema`` (the migrations),
``database`` (the connection, its lock and transactions), then the queries of one table each (``releases``,
``deployments``, ``events``, ``instances``, ``meta``); ``Store`` is all the tables over one connection.
"""

from __future__ import annotations

from nonstop.agent.room import StateDirFull
from nonstop.agent.store.database import StoreError
from nonstop.agent.store.deployments import DeploymentTable
from nonstop.agent.store.events import EventTable
from nonstop.agent.store.instances import InstanceTable
from nonstop.agent.store.meta import MetaTable
from nonstop.agent.store.records import RELEASE_STATUSES, VERSION_RE, Deployment, Event, InstanceRecord, Release, validate_version
from nonstop.agent.store.releases import ReleaseTable
from nonstop.agent.store.schema import MIGRATIONS, SCHEMA_VERSION

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


class Store(ReleaseTable, DeploymentTable, EventTable, InstanceTable, MetaTable):
    """Owns the SQLite connection and every read and write of the agent's state: each table's queries over the
    one connection, lock and transaction of ``Database``."""
