"""How an exchange gets an upstream connection when no pooled one is at hand (the slow path).

- ``hold``: no target is routable (nothing deployed yet, every instance draining): the request
  waits for a route table that has one, for up to ``hold_timeout``, then gets a 503.
- ``connect_upstream``: connect to the chosen target; when it refuses, the same request goes to a
  sibling, and when every target refused, it waits (``wait_for_target``) for one to come back (a
  restarted instance, a new table) for what is left of ``hold_timeout`` before a 502. A refused
  connection never reached the app, so moving the request is always safe (docs/internals.md).
"""

from __future__ import annotations

import asyncio
import time

from nonstop.proxy.upstream import connect

__all__ = ["hold", "connect_upstream", "wait_for_target", "RETRY_EVERY"]

RETRY_EVERY = 0.2  # while every target refuses, each is tried again this often (within hold_timeout)
_perf = time.perf_counter


async def hold(ex) -> None:
    """No target is routable: wait for one (a new table) for up to ``hold_timeout``, then 503."""
    state = ex.conn.state
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ex.conn.cfg.hold_timeout
    while not ex.finished:
        remaining = deadline - loop.time()
        if remaining <= 0:
            ex.fail(503, "no-target")
            return
        try:
            await asyncio.wait_for(asyncio.shield(state.changed()), remaining)
        except asyncio.TimeoutError:
            continue
        if ex.finished:
            return
        entry, cookie = state.choose(ex.headers, ex.head.cookie, ex.head.client or ex.conn.client_ip)
        if entry is not None:
            ex.task = None
            ex.cookie = cookie
            ex._attach(entry)
            return


async def connect_upstream(ex) -> None:
    """Connect to the exchange's target; on refusal try a sibling, then wait for one (``wait_for_target``)."""
    conn = ex.conn
    loop = asyncio.get_running_loop()
    while True:
        entry = ex.entry
        try:
            up = await connect(loop, entry.target, conn.cfg.connect_timeout)
            if up.closed or up.transport.is_closing():
                # Accepted, then closed before one byte of the request was written (a container
                # engine's port forwarder whose container just died does this): as good as
                # refused. Writing to it would raise, and leave the request without an answer.
                up.close()
                raise ConnectionResetError("closed before the request was sent")
        except (OSError, asyncio.TimeoutError):
            if ex.finished:
                return
            entry.counters.proxy_errors += 1
            ex._uncount()
            ex.tried += (entry.target,)
            nxt = conn.state.fallback(entry, ex.tried)
            if nxt is None:
                # Every target refused: the request reached none of them, so it waits for one to come
                # back (a restarted instance, a new table) for what is left of hold_timeout, like a
                # request that found no target at all, instead of a 502 now (DESIGN §5).
                nxt = await wait_for_target(ex, loop)
                if nxt is None:
                    if not ex.finished:
                        ex.fail(502, "upstream-connect")
                    return
            ex.entry = nxt
            nxt.target.in_flight += 1
            nxt.counters.in_flight += 1
            ex.counted = True
            continue
        ex.task = None
        if ex.finished:
            up.close()
            return
        ex._bind(up)
        return


async def wait_for_target(ex, loop):
    """After every target refused: the next target to try, once the table changes or ``RETRY_EVERY``
    passed (a restarted instance comes back on the same address); None when hold_timeout ran out."""
    state = ex.conn.state
    deadline = loop.time() + ex.conn.cfg.hold_timeout - (_perf() - ex.started)
    while not ex.finished:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            await asyncio.wait_for(asyncio.shield(state.changed()), min(remaining, RETRY_EVERY))
        except asyncio.TimeoutError:
            pass
        if ex.finished:
            return None
        entry, cookie = state.choose(ex.headers, ex.head.cookie, ex.head.client or ex.conn.client_ip)
        if entry is not None:
            ex.tried = ()
            ex.cookie = cookie
            return entry
    return None
