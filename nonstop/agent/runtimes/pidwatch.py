"""The moment a container's main process exits, from the host's own process table.

The engine reports an exit as an event, but only after its own bookkeeping:
measured here, docker's ``die`` came 25-30 ms after the app's process had
died, and all that while docker-proxy kept accepting connections for the
dead container and closing them after the request was written (502s the
proxy may not retry). A pidfd (``pidfd_open``, Linux 5.3) on the process the
engine names as the container's ``State.Pid`` turns readable the instant it
exits, so the fleet can take it out of the split at once.

Only an early word: the engine's view stays the record (exit codes,
removal). A pid is watched only when the process it names started when the
container did (``State.StartedAt``), so a recycled pid or an engine on
another machine (whose pids mean nothing here) is never watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Callable

import psutil

__all__ = ["PidWatch", "same_process"]

log = logging.getLogger("nonstop.runtime.container")

START_SLACK = 3.0  # seconds between the engine's StartedAt and the process's own start time


def same_process(pid: int, started_ns: int | None) -> bool:
    """True when ``pid`` is a live process of this host that started when the container did."""
    if pid <= 0 or not started_ns:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - started_ns / 1e9) < START_SLACK
    except psutil.Error:
        return False


class PidWatch:
    """Owns one pidfd per watched container; calls ``on_exit(container_id)`` once when its process exits."""

    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self.on_exit = on_exit
        self._fds: dict[str, int] = {}
        self.available = hasattr(os, "pidfd_open")

    def watching(self, cid: str) -> bool:
        return cid in self._fds

    def watch(self, cid: str, pid: int, started_ns: int | None) -> bool:
        """Watch the main process of container ``cid``; False when it cannot be (see the module doc)."""
        if not self.available or cid in self._fds:
            return cid in self._fds
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False  # gone already, or not a pid of this host
        # checked after opening: the pidfd holds on to that very process, recycled pid or not
        if not same_process(pid, started_ns):
            os.close(fd)
            return False
        self._fds[cid] = fd
        asyncio.get_running_loop().add_reader(fd, self._fired, cid)
        return True

    def _fired(self, cid: str) -> None:
        self._drop(cid)
        self.on_exit(cid)

    def _drop(self, cid: str) -> None:
        fd = self._fds.pop(cid, None)
        if fd is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):  # the loop is closing
            asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)

    def forget(self, cid: str) -> None:
        self._drop(cid)

    def close(self) -> None:
        for cid in list(self._fds):
            self._drop(cid)
