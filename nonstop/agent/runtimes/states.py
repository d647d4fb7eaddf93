"""What the container runtime knows about its containers' states, fed by the engine.

No I/O here: the engine's event lines and ``inspect`` documents come in, a
cache of "running or not, and how it ended" comes out. ``ContainerStates``
is what makes ``Runtime.alive`` cheap: the fleet asks about every instance
every health interval, and the answer is a dictionary look-up kept current by
the engine's event stream (``events --format json``).

Ordering: a snapshot (``inspect``) and the event stream overlap in time, and
the stream is started with ``--since`` a moment in the past so that nothing
between them is lost. Each entry keeps the time it is known *as of*; an event
older than that is already reflected in what was observed and is ignored, so
a replayed ``start`` never makes a container that has since died look alive.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Mapping

__all__ = [
    "ContainerEvent",
    "ContainerState",
    "ContainerStates",
    "parse_event",
    "parse_time_ns",
    "format_time_ns",
    "state_from_inspect",
    "exit_status",
]

Action = Literal["start", "die", "destroy"]

# The engines' own words for the events that change whether a container runs.
_ACTIONS: dict[str, Action] = {
    "start": "start",
    "restart": "start",
    "unpause": "start",
    "die": "die",  # docker
    "died": "die",  # podman
    "destroy": "destroy",  # docker
    "remove": "destroy",  # podman
}

_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_time_ns(text: str) -> int | None:
    """``2026-12-01T09:55:45.657373100Z`` (RFC 3339, up to nanoseconds) → epoch nanoseconds; None if not one."""
    m = _RFC3339.match(text.strip())
    if not m:
        return None
    base, frac, zone = m.groups()
    tz = timezone.utc
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        from datetime import timedelta

        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    secs = int(datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=tz).timestamp())
    return secs * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def format_time_ns(ns: int) -> str:
    """Epoch nanoseconds → RFC 3339 with nine digits in UTC (what both engines take for ``--since``)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def exit_status(code: int | None) -> int | None:
    """An engine's exit code in the runtime interface's terms: 128+N (the main process died of
    signal N, as the engine reports it) → -N, like a process killed by that signal."""
    if code is None:
        return None
    if 128 < code < 128 + 65:
        try:
            signal.Signals(code - 128)
        except ValueError:
            return code
        return -(code - 128)
    return code


@dataclass(frozen=True)
class ContainerEvent:
    """One engine event that matters to a container's state, normalised across docker and podman."""

    id: str
    action: Action
    time_ns: int
    exit_code: int | None = None  # the engine's code, on "die"


def parse_event(obj: Mapping[str, Any]) -> ContainerEvent | None:
    """A line of ``docker events --format '{{json .}}'`` or ``podman events --format json``
    (decoded) → an event, or None when it does not change whether a container runs."""
    if "Actor" in obj or "timeNano" in obj:  # docker
        if obj.get("Type", "container") != "container":
            return None
        action = _ACTIONS.get(str(obj.get("Action") or obj.get("status") or "").split(":")[0])
        cid = str(obj.get("id") or (obj.get("Actor") or {}).get("ID") or "")
        if action is None or not cid:
            return None
        t = obj.get("timeNano")
        time_ns = int(t) if t is not None else int(obj.get("time", 0)) * 1_000_000_000
        code = None
        if action == "die":
            raw = ((obj.get("Actor") or {}).get("Attributes") or {}).get("exitCode")
            code = int(raw) if raw not in (None, "") else None
        return ContainerEvent(cid, action, time_ns, code)
    # podman
    if obj.get("Type", "container") != "container":
        return None
    action = _ACTIONS.get(str(obj.get("Status") or ""))
    cid = str(obj.get("ID") or "")
    if action is None or not cid:
        return None
    time_ns = parse_time_ns(str(obj.get("Time") or "")) or 0
    # podman leaves ContainerExitCode out when it is 0 (omitempty)
    code = obj.get("ContainerExitCode", 0) if action == "die" else None
    return ContainerEvent(cid, action, time_ns, int(code) if code is not None else None)


@dataclass
class ContainerState:
    """A container as last known: running or not, its exit code once it ended, and as of when."""

    running: bool
    exit_code: int | None  # the engine's code (see ``exit_status``)
    as_of_ns: int
    removed: bool = False
    pid: int = 0  # the main process's pid on the host, while running (0: unknown)


def state_from_inspect(doc: Mapping[str, Any], as_of_ns: int) -> ContainerState:
    """A ``container inspect`` document's ``State`` → a ``ContainerState`` observed at ``as_of_ns``."""
    st = doc.get("State") or {}
    running = bool(st.get("Running")) and not st.get("Paused")
    code = st.get("ExitCode")
    return ContainerState(
        running=running,
        exit_code=None if running or code is None else int(code),
        as_of_ns=as_of_ns,
        pid=int(st.get("Pid") or 0) if running else 0,
    )


@dataclass
class ContainerStates:
    """The cache behind ``alive``/``exit_code``: container id → ``ContainerState``."""

    by_id: dict[str, ContainerState] = field(default_factory=dict)

    def get(self, cid: str) -> ContainerState | None:
        return self.by_id.get(cid)

    def observe(self, cid: str, state: ContainerState) -> None:
        """What an ``inspect`` showed (started just before ``state.as_of_ns``)."""
        old = self.by_id.get(cid)
        if old is not None and old.as_of_ns > state.as_of_ns:
            return  # an event newer than this observation already arrived
        self.by_id[cid] = state

    def started(self, cid: str, as_of_ns: int) -> None:
        """``run`` returned this id: running, unless an event about it already arrived."""
        self.by_id.setdefault(cid, ContainerState(True, None, as_of_ns))

    def exited(self, cid: str, code: int | None, as_of_ns: int) -> None:
        """``wait`` reported how it ended."""
        old = self.by_id.get(cid)
        if old is not None and not old.running and old.exit_code is not None:
            return
        self.by_id[cid] = ContainerState(False, code, max(as_of_ns, old.as_of_ns if old else 0))

    def apply(self, ev: ContainerEvent) -> bool:
        """Apply one event; False when it is older than what is known (ignored)."""
        old = self.by_id.get(ev.id)
        if old is not None and ev.time_ns < old.as_of_ns:
            return False
        if ev.action == "start":
            self.by_id[ev.id] = ContainerState(True, None, ev.time_ns)
        elif ev.action == "die":
            self.by_id[ev.id] = ContainerState(False, ev.exit_code, ev.time_ns)
        else:  # destroy: keep how it ended (exit_code stays answerable after the removal)
            code = old.exit_code if old is not None else None
            self.by_id[ev.id] = ContainerState(False, code, ev.time_ns, removed=True)
        return True

    def forget(self, cid: str) -> None:
        self.by_id.pop(cid, None)
