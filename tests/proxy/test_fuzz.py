"""Seeded random mutations of valid traffic, both directions: no crash, no error logged, nothing leaked."""

from __future__ import annotations

import asyncio
import logging
import random

from backends import App, Raw, read_head
from util import get, proxy, raw, run

SEEDS = [
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: nonstop_bucket=5\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a\r\n\r\n",
    b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
]
NOISE = [b"\r", b"\n", b"\x00", b" ", b":", b"\t", b",", b"0", b"-", b"\xff", b"chunked", b"Content-Length: 3\r\n",
         b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n", b"HTTP/1.1", b"Host: y\r\n"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(b) + 1)
        if op < 0.3 and b:
            del b[i : i + rng.randint(1, 5)]
        elif op < 0.7:
            b[i:i] = rng.choice(NOISE)
        elif b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
    if rng.random() < 0.2:
        b = b[: rng.randrange(len(b) + 1)]  # truncated
    return bytes(b)


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record) -> None:
        self.records.append(record)


def _watch():
    h = Errors()
    for name in ("nonstop.proxy", "asyncio"):
        logging.getLogger(name).addHandler(h)
    return h


def _unwatch(h) -> None:
    for name in ("nonstop.proxy", "asyncio"):
        logging.getLogger(name).removeHandler(h)


async def _settled(srv) -> None:
    for _ in range(300):
        if not srv.connections and all(t.in_flight == 0 for t in srv.state.targets.values()):
            return
        await asyncio.sleep(0.01)


def test_mutated_requests_never_crash_or_leak():
    async def main():
        errors = _watch()
        loop = asyncio.get_running_loop()
        crashes = []
        loop.set_exception_handler(lambda l, ctx: crashes.append(ctx))
        app = await App().start()
        rng = random.Random(20261125)
        cases = [mutate(rng, rng.choice(SEEDS)) for _ in range(240)]
        try:
            async with proxy(app.addr, header_timeout=0.5, read_timeout=2) as srv:
                sem = asyncio.Semaphore(40)

                async def one(data):
                    async with sem:
                        out = await raw(srv.listen_addr, data, timeout=1.5)
                        if out:
                            assert out.startswith(b"HTTP/1.1 "), (data, out[:80])

                await asyncio.gather(*(one(c) for c in cases))
                assert (await get(srv.listen_addr, "/alive")).status == 200
                await _settled(srv)
                assert not srv.connections
                assert all(t.in_flight == 0 for t in srv.state.targets.values())
        finally:
            _unwatch(errors)
            await app.stop()
        assert not crashes, crashes[:3]
        assert not errors.records, [r.getMessage() for r in errors.records[:3]]

    run(main(), timeout=90)


def test_mutated_responses_never_crash_or_leak():
    async def main():
        errors = _watch()
        rng = random.Random(7)
        good = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw",
            b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        ]
        answers = [mutate(rng, rng.choice(good)) for _ in range(120)]
        queue = list(answers)

        async def script(reader, writer):
            if await read_head(reader) is None:
                return
            writer.write(queue.pop() if queue else b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()

        up = await Raw(script).start()
        try:
            async with proxy(up.addr, read_timeout=1) as srv:
                sem = asyncio.Semaphore(30)

                async def one():
                    async with sem:
                        out = await raw(srv.listen_addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=3)
                        if out:
                            assert out.startswith(b"HTTP/1.1 "), out[:80]

                await asyncio.gather(*(one() for _ in answers))
                await _settled(srv)
                assert not srv.connections
                assert all(t.in_flight == 0 for t in srv.state.targets.values())
        finally:
            _unwatch(errors)
            await up.stop()
        assert not errors.records, [r.getMessage() for r in errors.records[:3]]

    run(main(), timeout=90)
