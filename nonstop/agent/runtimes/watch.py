"""The engine's event stream, keeping a ``ContainerStates`` current.

One ``events --filter label=…`` process per runtime, started with ``--since``
a moment back (so nothing between a snapshot and the stream is lost) and
restarted with backoff when it ends (the engine restarted, the socket went
away). While it is down ``watching`` is False and the runtime falls back to
bounded polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Callable

from nonstop.agent.runtimes.engine import Engine, stop_process
from nonstop.agent.runtimes.states import ContainerStates, parse_event
from nonstop.errors import EngineUnreachable

__all__ = ["EventWatch"]

log = logging.getLogger("nonstop.runtime.container")


class EventWatch:
    """Owns the ``events`` process and feeds what it says into ``states``; wakes waiters on each change."""

    replay = 2.0  # seconds of history asked for with --since on each (re)start

    def __init__(self, engine: Engine, filters: list[str], states: ContainerStates,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.on_change = on_change
        self.filters = filters
        self.states = states
        self.watching = False
        self.events = 0  # applied so far (tests and diagnostics)
        self._task: asyncio.Task | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._changed: asyncio.Event | None = None

    def ensure(self) -> None:
        """Start the stream if it is not running (called from every runtime entry point)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.engine.name} events")

    async def wait_changed(self, timeout: float) -> None:
        """Until the next applied event, or ``timeout``."""
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def poke(self) -> None:
        """Wake the waiters as an applied event would (the runtime learnt of a change another way)."""
        self._notify()

    def _notify(self) -> None:
        self.on_change()
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _run(self) -> None:
        delay = 0.5
        fmt = "{{json .}}" if self.engine.name == "docker" else "json"
        while True:
            since = f"{time.time() - self.replay:.3f}"
            try:
                proc = await self.engine.spawn(
                    "events", "--filter", "type=container", *self.filters, "--format", fmt, "--since", since
                )
            except EngineUnreachable as e:
                log.warning("%s events: %s", self.engine.name, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._proc = proc
            self.watching = True
            started = time.monotonic()
            try:
                assert proc.stdout is not None
                async for line in proc.stdout:
                    try:
                        ev = parse_event(json.loads(line))
                    except ValueError:
                        continue
                    if ev is not None and self.states.apply(ev):
                        self.events += 1
                        self._notify()
            finally:
                self.watching = False
                await stop_process(proc)
                self._proc = None
            err = (await proc.stderr.read()).decode(errors="replace").strip() if proc.stderr else ""
            log.warning("%s events ended (rc %s) %s; restarting", self.engine.name, proc.returncode, err[-300:])
            if time.monotonic() - started > 10:
                delay = 0.5
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await stop_process(self._proc)
        self.watching = False
