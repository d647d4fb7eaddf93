"""Deployment events: stored first (SQLite is the record), then announced.

``EventBus.emit`` writes an event row and wakes every subscriber; a
subscriber (the CLI's progress stream, the dashboard, webhooks) reads rows
after the last id it saw, so a slow reader never loses an event and never
blocks the deployment that emits them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from nonstop.agent.store import Event, Store

log = logging.getLogger("nonstop.agent")


class EventBus:
    """Owns the event stream of the agent: persistence plus wake-ups."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cond = asyncio.Condition()
        self._listeners: list[Callable[[Event], None]] = []

    def listen(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn`` for every event (must not block: webhooks queue work)."""
        self._listeners.append(fn)

    async def emit(self, deployment_id: int | None, type: str, message: str, **data: Any) -> Event:
        ev = self._store.add_event(deployment_id, type, message, data or None)
        log.info("%s %s", type, message)
        for fn in self._listeners:
            try:
                fn(ev)
            except Exception:  # a broken listener never breaks a deployment
                log.exception("event listener failed")
        async with self._cond:
            self._cond.notify_all()
        return ev

    async def follow(
        self, deployment_id: int | None, after_id: int = 0, *, until: Callable[[Event], bool] | None = None
    ) -> AsyncIterator[Event]:
        """Yield stored events after ``after_id``, then new ones as they come, until ``until(ev)``."""
        last = after_id
        while True:
            batch = self._store.events(deployment_id, after_id=last)
            for ev in batch:
                last = ev.id
                yield ev
                if until and until(ev):
                    return
            if not batch:
                async with self._cond:
                    try:
                        await asyncio.wait_for(self._cond.wait(), timeout=1.0)
                    except asyncio.TimeoutError:
                        pass
