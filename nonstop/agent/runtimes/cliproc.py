"""An engine CLI process, started by the standard library and read through the event loop.

Why not ``asyncio.create_subprocess_exec``: the agent runs on uvloop, whose
spawn leaves copies of the child's stdout/stderr sockets (and other
descriptors) open in the child beyond 0-2. ``podman run -d`` passes whatever
it inherited on to ``conmon``, the daemon that stays with the container, so
the agent's end never sees EOF and the call never returns (measured here:
every ``podman run -d`` from the agent hung; docker's CLI starts no daemon and
was spared). ``subprocess.Popen`` with ``close_fds`` gives the child its
three pipes and nothing else, on any loop; the loop only reads the pipes
(``connect_read_pipe``) and learns of the exit through a pidfd.

``CliProcess`` offers what the runtime uses of ``asyncio.subprocess.Process``:
``stdout`` / ``stderr`` stream readers, ``returncode``, ``wait()``,
``send_signal()``, ``kill()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

__all__ = ["CliProcess", "start"]

_POLL = 0.05  # seconds between looks at the exit where no pidfd can be had


class CliProcess:
    """Owns one child process: its pipes' readers, and noticing (and reaping) its exit."""

    def __init__(self, popen: subprocess.Popen, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdout = stdout
        self.stderr = stderr
        self._exited = asyncio.get_running_loop().create_future()
        self._pidfd: int | None = None
        self._watch()

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # an old kernel: look every _POLL seconds instead
            loop.create_task(self._poll_exit())
            return
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        if self.popen.poll() is None:
            return  # readable means exited; poll() reaps it, so this does not repeat
        loop = asyncio.get_running_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(self.popen.returncode)

    async def _poll_exit(self) -> None:
        while self.popen.poll() is None:
            await asyncio.sleep(_POLL)
        if not self._exited.done():
            self._exited.set_result(self.popen.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)  # by its own Popen handle: never a recycled pid

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


async def _pipe_reader(pipe, limit: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader


async def start(argv: Sequence[str], env: Mapping[str, str], *, limit: int = 1 << 16) -> CliProcess:
    """Start ``argv`` with stdin from /dev/null and stdout / stderr piped to us, nothing else inherited.
    ``FileNotFoundError`` when the binary is not there (as ``Popen`` raises it)."""
    popen = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(env), close_fds=True,
    )
    try:
        out = await _pipe_reader(popen.stdout, limit)
        err = await _pipe_reader(popen.stderr, limit)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    return CliProcess(popen, out, err)
