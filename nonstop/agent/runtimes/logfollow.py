"""A container's output, copied from the engine into the instance's log file.

``logs -f -t`` prints every line with the engine's timestamp; the follower
strips it, appends the line to ``logs/<release>-<port>.log`` (where
``nonstop logs`` and a failed deploy's tail read it) and keeps the newest
timestamp written in a small cursor file. A follower started again for the
same container (after an agent restart) asks for ``--since`` one nanosecond
past the cursor, so nothing is written twice. (stdout and stderr come on two
pipes; a line of one still unread when the agent died, older than the newest
line of the other, is the one thing such a restart can miss.) The cursor is overwritten in
place after each batch of lines, right after the lines themselves, so a
``kill -9`` of the agent between the two can at worst repeat that one batch.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Callable

from nonstop.agent.runtimes.engine import Engine, stop_process
from nonstop.agent.runtimes.states import format_time_ns, parse_time_ns

__all__ = ["LogFollower", "split_stamp", "read_cursor"]

CURSOR_WIDTH = 20  # digits of epoch nanoseconds, zero-padded: a fixed-size in-place overwrite


# podman prints a line the app wrote in pieces (k8s-file "partial" entries) as one line with each
# piece's stamp in front of it: "<stamp> Started App in <stamp> 0.271 seconds…". Its stamps have a
# fixed form (nine fraction digits), which is what is taken out of the middle of a line.
_EMBEDDED = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(?:Z|[+-]\d\d:\d\d) ")


def split_stamp(line: bytes, embedded: bool = False) -> tuple[int | None, bytes]:
    """``b"2026-…Z text\\n"`` → (epoch ns, ``b"text\\n"``); a line without a stamp is kept whole.
    ``embedded``: also take out the stamps of the line's later pieces (podman); the last one counts."""
    head, sep, rest = line.partition(b" ")
    ns = parse_time_ns(head.decode("ascii", "replace")) if sep else None
    if ns is None:
        return None, line
    if embedded:
        pieces = _EMBEDDED.split(rest)
        if len(pieces) > 1:
            last = _EMBEDDED.findall(rest)[-1]
            ns = parse_time_ns(last[:-1].decode("ascii")) or ns
            rest = b"".join(pieces)
    return ns, rest


def read_cursor(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class LogFollower:
    """Owns one ``logs -f`` process for one container, the log file it appends to, and its cursor."""

    restart_delay = 1.0

    def __init__(
        self,
        engine: Engine,
        container_id: str,
        log_path: Path,
        cursor_path: Path,
        still_running: Callable[[], bool] = lambda: False,
    ) -> None:
        self.engine = engine
        self.container_id = container_id
        self.log_path = Path(log_path)
        self.cursor_path = Path(cursor_path)
        self.still_running = still_running
        self.lines = 0  # written by this follower (tests and diagnostics)
        self.embedded_stamps = engine.name == "podman"
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._cursor_fd: int | None = None
        self._last_ns = read_cursor(self.cursor_path)  # newest line written, over both streams
        self._resume_ns: int | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"logs {self.container_id[:12]}")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cursor_path.parent.mkdir(parents=True, exist_ok=True)
        self._cursor_fd = os.open(self.cursor_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with open(self.log_path, "ab", buffering=0) as log:
                while True:
                    args = ["logs", "-f", "-t"]
                    self._resume_ns = self._last_ns
                    if self._last_ns is not None:
                        args += ["--since", format_time_ns(self._last_ns + 1)]
                    self._proc = await self.engine.spawn(*args, self.container_id)
                    await asyncio.gather(self._copy(self._proc.stdout, log), self._copy(self._proc.stderr, log))
                    await self._proc.wait()
                    # `logs -f` ends when the container stops; if it ended for another reason (the
                    # engine restarted) while the container still runs, pick up from the cursor.
                    if not self.still_running():
                        return
                    await asyncio.sleep(self.restart_delay)
        finally:
            os.close(self._cursor_fd)
            self._cursor_fd = None

    async def _copy(self, stream: asyncio.StreamReader | None, log) -> None:
        if stream is None:
            return
        rest = b""
        while True:
            chunk = await stream.read(1 << 16)
            if not chunk:
                break
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                self._write(data[:cut], log)
        if rest:
            self._write(rest + b"\n", log)

    def _write(self, block: bytes, log) -> None:
        out = []
        newest = self._last_ns
        for line in block.splitlines(keepends=True):
            ns, text = split_stamp(line, self.embedded_stamps)
            if ns is not None:
                if self._resume_ns is not None and ns <= self._resume_ns:
                    continue  # written before this follower started (--since inclusive, or a replay)
                newest = ns if newest is None else max(newest, ns)
            out.append(text)
        if not out:
            return
        log.write(b"".join(out))
        self.lines += len(out)
        if newest is not None and newest != self._last_ns:
            self._last_ns = newest
            if self._cursor_fd is not None:
                os.pwrite(self._cursor_fd, str(newest).zfill(CURSOR_WIDTH).encode(), 0)

    async def finish(self, timeout: float = 2.0) -> None:
        """Let the follower copy what is left (the container has stopped), then end it."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except (asyncio.TimeoutError, Exception):
            await self.close()

    async def close(self) -> None:
        """Stop following now (the cursor stays: a later follower resumes from it)."""
        task, self._task = self._task, None
        await stop_process(self._proc)
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
