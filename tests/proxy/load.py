"""A bounded load generator for the zero-failure tests: keep-alive clients and new-connection clients.

A failure is any request that got an error or a proxy-generated answer after
it was sent. Like browsers and httpx, a keep-alive client that finds its idle
connection cleanly closed *before* sending reconnects and sends there (see
util.Client); that is not a failure.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from util import Client, split_addr, read_response


@dataclass
class LoadResult:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    by_release: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0

    def count(self, resp) -> None:
        if resp.status != 200 or "x-nonstop-error" in resp.headers:
            self.failures.append(f"status {resp.status} {resp.headers.get('x-nonstop-error')}")
            return
        self.ok += 1
        rel = resp.headers.get("x-nonstop-release", "?")
        self.by_release[rel] = self.by_release.get(rel, 0) + 1


async def keep_alive_client(addr: str, stop: asyncio.Event, res: LoadResult, path: str, post: bool) -> None:
    c = Client(addr)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            try:
                if post and n % 3 == 0:
                    r = await c.request("POST", "/upload", body=b"p" * 2000, timeout=20)
                else:
                    r = await c.request("GET", path, timeout=20)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
                res.failures.append(f"keep-alive: {type(e).__name__}: {e}")
                await c.close()
                continue
            res.count(r)
        res.reconnects += c.connections - 1
    finally:
        await c.close()


async def new_connection_client(addr: str, stop: asyncio.Event, res: LoadResult, path: str) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(*split_addr(addr))
        except OSError as e:
            res.failures.append(f"connect: {e}")
            await asyncio.sleep(0.01)
            continue
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n".encode())
            r = await asyncio.wait_for(read_response(reader), 20)
            res.count(r)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
            res.failures.append(f"new-connection: {type(e).__name__}: {e}")
        finally:
            writer.close()


async def run_load(addr: str, during, *, keep_alive: int = 8, new_conn: int = 4, path: str = "/",
                   post: bool = True, settle: float = 0.5, after: float = 0.5) -> LoadResult:
    """Run clients, await ``during()`` after ``settle`` s, keep going ``after`` s more, then stop."""
    res = LoadResult()
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(keep_alive_client(addr, stop, res, path, post)) for _ in range(keep_alive)]
    tasks += [asyncio.ensure_future(new_connection_client(addr, stop, res, path)) for _ in range(new_conn)]
    try:
        await asyncio.sleep(settle)
        await during()
        await asyncio.sleep(after)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    return res
