"""Spreading a shared listening socket's connections over the workers of ``--workers N``.

Every worker listens on the same socket. Left to the event loop, the first
worker to wake accepts every connection that is queued (libuv accepts until
the queue is empty), so a load balancer or a load tool that opens its 50
keep-alive connections at once puts all 50 on one worker and the others
idle, for as long as those connections live. So workers accept themselves,
one connection per wake-up, and each keeps its count of open connections in
a small table shared with the others (``AcceptShare``: an ``memfd`` the
supervisor creates and passes to every worker). A worker holding more than
the fewest any worker holds plus ``SLACK`` stands back for ``STAND_BACK``
seconds, so the others take the next connections; then it accepts again
whatever the table says, so a stuck or restarting sibling never keeps a
connection waiting longer than that.

``may_accept`` is the decision (pure). ``Acceptor`` does the accepting.
A worker the supervisor lost is marked ``GONE`` until its replacement writes
its own count, so nobody stands back for a worker that is not there.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket

log = logging.getLogger("nonstop.proxy")

__all__ = ["AcceptShare", "Acceptor", "may_accept", "ENV", "SLACK", "STAND_BACK", "GONE"]

ENV = "NONSTOP_ACCEPT_SHARE"  # "<fd>,<index>,<workers>" in a worker's environment
SLACK = 1
STAND_BACK = 0.005
GONE = 1 << 62  # a slot whose worker is not running: never the fewest


def may_accept(counts: list[int], me: int, slack: int = SLACK) -> bool:
    """Whether worker ``me`` takes the next connection: it holds at most the fewest any worker holds plus ``slack``."""
    return counts[me] <= min(counts) + slack


class AcceptShare:
    """The shared table of open connections per worker (one signed 64-bit slot each)."""

    def __init__(self, fd: int, workers: int, index: int | None = None) -> None:
        self.fd = fd
        self.workers = workers
        self.index = index
        self._map = mmap.mmap(fd, 8 * workers)
        self._slots = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, workers: int) -> "AcceptShare":
        """The supervisor's: a new table, every slot ``GONE`` until its worker writes."""
        fd = os.memfd_create("nonstop-accept-share", os.MFD_CLOEXEC)
        os.ftruncate(fd, 8 * workers)
        share = cls(fd, workers)
        for i in range(workers):
            share.set(i, GONE)
        return share

    @classmethod
    def from_env(cls, value: str) -> "AcceptShare":
        fd, index, workers = (int(x) for x in value.split(","))
        return cls(fd, workers, index)

    def env_value(self, index: int) -> str:
        return f"{self.fd},{index},{self.workers}"

    def set(self, index: int, count: int) -> None:
        self._slots[index] = count

    def counts(self) -> list[int]:
        return self._slots.tolist()

    def close(self) -> None:
        self._slots.release()
        self._map.close()


class Acceptor:
    """Accepts a listening socket's connections for this worker, one per wake-up, within its share.

    Stands in for the ``asyncio.Server`` a single proxy uses: ``close()`` stops accepting (the
    socket itself stays open in the supervisor and the other workers, with whatever is queued)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory, share: AcceptShare,
                 count, *, ssl=None, ssl_handshake_timeout: float | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.share = share
        self.count = count  # () -> this worker's open connections now
        self.ssl = ssl
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self.closed = False
        self.starting = 0  # accepted, connection_made not yet run (not in count() yet)
        self._parked: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        self.publish()  # here from now on: the others leave this worker its share
        loop.add_reader(sock.fileno(), self._readable)

    def publish(self) -> None:
        """Write this worker's count into the table (after accepting; the tick keeps it current as connections close)."""
        self.share.set(self.share.index, self.count() + self.starting)

    def _readable(self, force: bool = False) -> None:
        if self.closed:
            return
        self.publish()
        if not force and not may_accept(self.share.counts(), self.share.index):
            # more than our share: let the others take this one; back within STAND_BACK whatever happens
            self.loop.remove_reader(self.sock.fileno())
            self._parked = self.loop.call_later(STAND_BACK, self._unpark)
            return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # a sibling took it
        except OSError as e:  # out of file descriptors, ...: the connection waits in the queue; try again soon
            log.warning("accept failed: %s", e)
            self.loop.remove_reader(self.sock.fileno())
            self._parked = self.loop.call_later(0.1, self._unpark)
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.starting += 1
        self.publish()
        self.loop.create_task(self._start(conn))

    async def _start(self, conn: socket.socket) -> None:
        try:
            if self.ssl is None:
                await self.loop.connect_accepted_socket(self.factory, conn)
            else:
                await self.loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl,
                                                        ssl_handshake_timeout=self.ssl_handshake_timeout)
        except (OSError, asyncio.TimeoutError, ConnectionError) as e:  # a failed TLS handshake, a reset
            log.debug("accepted connection dropped before it started: %s", e)
            conn.close()
        finally:
            self.starting -= 1
        self.publish()

    def _unpark(self) -> None:
        self._parked = None
        if self.closed:
            return
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._readable(force=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._parked is not None:
            self._parked.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())

    async def wait_closed(self) -> None:
        return None
