"""Idle keep-alive connections to one target.

The pool only keeps and hands out connection objects; it never opens one.
Connections are handed out newest first (the ones least likely to have been
closed by the upstream's own idle timeout) and expired after ``idle_timeout``,
which should stay below the upstreams' keep-alive timeouts (uvicorn and Node
default to 5 s).

The pool is sized by demand: every connection a request used is kept until it
has been idle for ``idle_timeout``, so it never holds more than the most
requests that were in flight to the target at once. ``MAX_IDLE`` is only a
safety bound above that. A bound below the load's concurrency makes the pool
close connections the next moment's requests must open again (issue 16: with
256, wrk -c500 made it open 760-1,900 upstream connections a second, and each request
that had to wait for one took 25-50 ms instead of 5-10).
"""

from __future__ import annotations

from typing import Protocol

MAX_IDLE = 4096  # per target; see the module docstring


class Pooled(Protocol):
    idle_since: float

    def alive(self, now: float) -> bool: ...

    def close(self) -> None: ...


class Pool:
    """The idle connections of one target, newest last."""

    __slots__ = ("_idle", "max_idle")

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self._idle: list = []
        self.max_idle = max_idle

    def __len__(self) -> int:
        return len(self._idle)

    def get(self, now: float):
        """A live idle connection, or None. Dead ones met on the way are closed and dropped."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.alive(now):
                return conn
            conn.close()
        return None

    def put(self, conn: Pooled, now: float) -> None:
        conn.idle_since = now
        if len(self._idle) >= self.max_idle:
            self._idle.pop(0).close()
        self._idle.append(conn)

    def discard(self, conn: Pooled) -> None:
        """Forget a connection that closed while idle."""
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def expire(self, now: float, idle_timeout: float) -> int:
        """Close connections idle longer than ``idle_timeout``; returns how many."""
        idle = self._idle
        n = 0
        while idle and now - idle[0].idle_since > idle_timeout:
            idle.pop(0).close()
            n += 1
        return n

    def close_all(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
