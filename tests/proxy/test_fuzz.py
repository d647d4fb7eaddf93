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


def mutate(rng: random.Random, data: bytes, noise: list[bytes] = NOISE, truncate: float = 0.2) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(b) + 1)
        if op < 0.3 and b:
            del b[i : i + rng.randint(1, 5)]
        elif op < 0.7:
            b[i:i] = rng.choice(noise)
        elif b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
    if rng.random() < truncate:
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


# -- the fast paths against the parser path, on the same mutated bytes ---------

FAST_SEEDS = [
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: nonstop_bucket=5\r\n\r\n",
    b"GET / HTTP/1.1\r\nUser-Agent: t\r\nhost:  a.test:8080 \r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD /x HTTP/1.1\r\nHost: [::1]:80\r\nX-Hi: \xe2\x9c\x93\r\n\r\n",
    b"DELETE /r/1 HTTP/1.1\r\nAuthorization: Bearer t\r\nHost: a\r\n\r\n",
    b"OPTIONS /o HTTP/1.1\r\nHost: a\r\nconnection: Keep-Alive \r\nX-Empty:\r\n\r\n",
]
FAST_NOISE = NOISE + [b"Connection: keep-alive\r\n", b"Connection: close\r\n", b"X-Forwarded-For: 1\r\n",
                      b"\r\n ", b"GET", b"POST", b"/", b"%", b"?", b"[", b"Keep-Alive", b"HOST", b"\x7f"]


def _llhttp_request(data: bytes):
    """What the parser path makes of ``data``: the RequestHead of exactly one complete bodyless request, else None."""
    import httptools

    from nonstop.proxy import http

    class P:
        def __init__(self):
            self.url, self.headers, self.complete, self.body = b"", [], 0, False

        def on_url(self, u):
            self.url += u

        def on_header(self, n, v):
            self.headers.append((n, v))

        def on_body(self, b):
            self.body = True

        def on_message_complete(self):
            self.complete += 1

    p = P()
    parser = httptools.HttpRequestParser(p)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    if p.complete != 1 or p.body:
        return None
    head = http.inspect_request(parser.get_method(), p.url, parser.get_http_version(), p.headers, b"10.0.0.1",
                                parser.should_upgrade(), None)
    return None if isinstance(head, http.Reject) else head


def _message(head: bytes):
    """A request head as (request line, sorted [(lower name, value)]): the same message up to order and whitespace."""
    lines = head.split(b"\r\n")
    return lines[0], sorted((n.lower(), v.strip(b" \t")) for n, _, v in (ln.partition(b":") for ln in lines[1:] if ln))


def test_the_request_fast_path_takes_only_what_the_parser_path_reads_the_same_way():
    from nonstop.proxy import fastpath, http

    rng = random.Random(20261125)
    fwd = http.forwarded_lines(b"10.0.0.1")
    taken = 0
    for i in range(6000):
        data = rng.choice(FAST_SEEDS)
        if i % 4:  # a quarter unmutated, so the fast path is exercised on what it must take
            data = mutate(rng, data, FAST_NOISE, truncate=0.0)
        fast = fastpath.fast_request(data, fwd)
        # the two implementations (compiled scan, Python regex) agree byte for byte
        other = (fastpath._regex_request if fastpath.fast_request is fastpath._scan_request
                 else fastpath._scan_request)(data, fwd)
        assert (other is None) == (fast is None), data
        if fast is None:
            continue  # declining is always allowed: the parser path takes it
        assert other.upstream_head == fast.upstream_head and other.method == fast.method, data
        taken += 1
        slow = _llhttp_request(data)
        assert slow is not None, f"fast path took what the parser path refuses: {data!r}"
        assert _message(fast.upstream_head) == _message(slow.upstream_head), data
        assert fast.upstream_head.endswith(b"\r\n\r\n") and fast.upstream_head.count(b"\r\n\r\n") == 1, data
        assert (fast.method, fast.keep_alive, fast.no_body, fast.http10, fast.upgrade) == \
               (slow.method, slow.keep_alive, slow.no_body, slow.http10, slow.upgrade), data
        assert slow.content_length is None and not slow.chunked, data
    assert taken > 1500 + 100, taken  # the unmutated quarter, and mutations that stay valid
