"""What this app's state dir already runs (so its own ports are not "in use by another program"), and its room.

Read without changing anything: pid files, and the store's instance rows
through a read-only SQLite connection (never ``Store``, which would create or
migrate the database).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from nonstop.agent.room import free_bytes, human_bytes
from nonstop.configfile import Problem

__all__ = ["Owned", "MIN_FREE", "room", "router_pids", "agent_pid"]

MIN_FREE = 16 << 20
"""Room the state dir keeps beyond an artifact copy: the database's growth, logs, routes.json."""

# The router processes a state dir may hold: pid file, and what its command line must show (a recycled pid
# belongs to someone else).
_ROUTER_PID_FILES = (
    ("proxy.pid", ("nonstop", "proxy")),
    ("nginx/nginx.pid", ("nginx", "master")),
    ("haproxy/haproxy.pid", ("haproxy",)),
)
_RUNNING_STATES = ("starting", "healthy", "unhealthy", "draining")


def _pid_from(path: Path, words: tuple[str, ...]) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        cmd = " ".join(p.cmdline())
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    return pid if all(w in cmd for w in words) else None


def agent_pid(state: Path) -> int | None:
    """The pid of this state dir's agent, while that process runs."""
    return _pid_from(state / "agent.pid", ("nonstop",))


def router_pids(state: Path) -> dict[str, int]:
    """``{"proxy.pid": 123, ...}``: the router processes of this state dir that still run."""
    out = {}
    for name, words in _ROUTER_PID_FILES:
        pid = _pid_from(state / name, words)
        if pid is not None:
            out[name] = pid
    return out


@dataclass(frozen=True)
class Owned:
    """The processes this state dir runs: the agent, the router, and the instances (by port)."""

    agent: int | None = None
    routers: dict[str, int] = field(default_factory=dict)
    instances: dict[int, int] = field(default_factory=dict)  # port -> pid

    @classmethod
    def read(cls, state: Path) -> "Owned":
        return cls(agent_pid(state), router_pids(state), _instances(state / "nonstop.db"))

    @property
    def pids(self) -> set[int]:
        return {p for p in (self.agent, *self.routers.values(), *self.instances.values()) if p is not None}

    def holds(self, pid: int | None) -> bool:
        """True when ``pid`` is one of ours or a descendant of one (an instance's shell runs the app)."""
        if pid is None:
            return False
        ours = self.pids
        try:
            p = psutil.Process(pid)
            chain = [p, *p.parents()]
        except psutil.Error:
            return pid in ours
        return any(q.pid in ours for q in chain)


def _instances(db: Path) -> dict[int, int]:
    """port -> pid of the recorded instances whose very process (pid and start time) still runs."""
    if not db.exists():
        return {}
    # With a -wal file a writer is (or was) there: read through it. Without one the file is all there
    # is, and `immutable` keeps SQLite from creating -wal/-shm files beside it.
    wal = db.with_name(db.name + "-wal").exists()
    uri = f"file:{db}?mode=ro" if wal else f"file:{db}?immutable=1"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=2)
        try:
            marks = ", ".join("?" * len(_RUNNING_STATES))
            rows = con.execute(
                f"SELECT port, pid, pid_create_time FROM instances WHERE state IN ({marks}) AND pid IS NOT NULL",
                _RUNNING_STATES,
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    from nonstop.agent.runtimes.process import ProcessRuntime, process_handle

    rt = ProcessRuntime(check_port=False)
    return {port: pid for port, pid, ct in rows if ct is not None and rt.running(process_handle(pid, ct, 0))}


def room(env, need: int = 0, what: str = "") -> list[Problem]:
    """A problem when the state dir's file system has less than ``need`` + ``MIN_FREE`` bytes free."""
    state = env.cfg.state_path
    free = free_bytes(state)
    want = need + MIN_FREE
    if free is None or free >= want:
        return []
    if what:
        for_what = f"this deploy needs about {human_bytes(want)} ({what}, and {human_bytes(MIN_FREE)} for the database and logs)"
    else:
        for_what = f"nonstop keeps {human_bytes(MIN_FREE)} free there for the database and logs"
    return [env.problem(
        "state_dir",
        f"the state dir is full: {state} has {human_bytes(free)} free; {for_what}. Nothing was changed: free some "
        "space there (old logs in logs/, releases beyond keep_releases) and try again",
    )]
