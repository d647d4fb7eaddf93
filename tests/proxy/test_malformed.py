"""Malformed and hostile client input: a table of smuggling vectors, limits and slow clients.

Every case must get the proxy's own error (X-Nonstop-Error), a closed
connection, nothing forwarded upstream, and leave no connection behind.
"""

from __future__ import annotations

import asyncio

import pytest

from backends import App
from util import get, proxy, raw, run

H = b"Host: a\r\n"

# (id, bytes, expected status)
VECTORS = [
    ("cl-te", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-cl", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    ("te-xchunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-chunked-identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
    ("te-identity-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-vertical-tab", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("te-on-http10", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("space-before-colon", b"POST / HTTP/1.1\r\n" + H + b"Content-Length : 4\r\n\r\nabcd", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n", 400),
    ("duplicate-cl-same", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("duplicate-cl-different", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("cl-list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4, 4\r\n\r\nabcd", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-plus", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd", 400),
    ("cl-huge", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\n", 400),
    ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-in-header", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("nul-in-header", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("ctl-in-header", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", 400),
    ("tab-in-name", b"GET / HTTP/1.1\r\n" + H + b"X\tY: z\r\n\r\n", 400),
    ("empty-name", b"GET / HTTP/1.1\r\n" + H + b": v\r\n\r\n", 400),
    ("space-before-first-header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    ("bad-chunk-size", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-space", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-missing-crlf", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n", 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("http2-line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
    ("bad-method", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("relative-target", b"GET foo HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("upgrade-with-body", b"GET / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: x\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("oversized-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40)) + b"\r\n", 431),
    ("oversized-url", b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\n" + H + b"\r\n", 431),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
]


# errors found in a body already being streamed: the upstream saw the head, its connection is cut
BODY_ERRORS = {"bad-chunk-size", "chunk-size-space", "chunk-missing-crlf"}


@pytest.mark.parametrize("name,data,status", VECTORS, ids=[v[0] for v in VECTORS])
def test_malformed_request_is_refused_and_closed(name, data, status):
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            out = await raw(srv.listen_addr, data, timeout=5)
            assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
            head = out.partition(b"\r\n\r\n")[0]
            assert b"X-Nonstop-Error: " in head and b"Connection: close" in head
            if name not in BODY_ERRORS:
                assert app.requests == 0  # nothing reached the upstream
            # the proxy still serves, and holds no connection for the bad client
            assert (await get(srv.listen_addr, "/ok")).status == 200
            for _ in range(100):
                if not srv.connections:
                    break
                await asyncio.sleep(0.01)
            assert not srv.connections
        await app.stop()

    run(main())


def test_oversized_headers_sent_slowly_in_pieces_get_431():
    async def main():
        app = await App().start()
        async with proxy(app.addr, max_header_bytes=8192) as srv:
            parts = [b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: "] + [b"v" * 1000] * 20
            out = await raw(srv.listen_addr, parts, pause=0.005)
            assert out.startswith(b"HTTP/1.1 431 ")
        await app.stop()

    run(main())


def test_slowloris_headers_get_408_after_header_timeout():
    async def main():
        app = await App().start()
        async with proxy(app.addr, header_timeout=0.5) as srv:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            # one header byte every 0.1 s: never finishes within the timeout
            out = await raw(srv.listen_addr, [b"GET / HTTP/1.1\r\n", b"Ho", b"st", b": a", b"\r\nX: 1"] + [b"y"] * 20,
                            pause=0.1, timeout=5)
            assert out.startswith(b"HTTP/1.1 408 "), out[:100]
            assert loop.time() - t0 < 4
            assert app.requests == 0
        await app.stop()

    run(main())


def test_idle_connection_without_bytes_is_closed_silently():
    async def main():
        app = await App().start()
        async with proxy(app.addr, header_timeout=0.3, idle_timeout=0.3) as srv:
            out = await raw(srv.listen_addr, b"", timeout=3)
            assert out == b""  # closed, no 408 for a connection that never started a request
        await app.stop()

    run(main())


def test_body_limit_content_length_and_chunked():
    async def main():
        app = await App().start()
        async with proxy(app.addr, max_body=1000) as srv:
            out = await raw(srv.listen_addr, b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001)
            assert out.startswith(b"HTTP/1.1 413 ")
            assert app.requests == 0
            chunks = b"".join(b"64\r\n" + b"y" * 100 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n"
            out = await raw(srv.listen_addr, b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
            assert out.startswith(b"HTTP/1.1 413 ")
            r = await get(srv.listen_addr, "/upload", method="POST", body=b"z" * 1000)
            assert r.status == 200 and r.json()["length"] == 1000
        await app.stop()

    run(main())


def test_client_disconnect_mid_body_and_mid_response_leaks_nothing():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            # half a body, then gone
            await raw(srv.listen_addr, b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000,
                      timeout=0.2)
            # a big response we stop reading after a bit
            reader, writer = await asyncio.open_connection(*srv.listen_addr.split(":"))
            writer.write(b"GET /big?bytes=50000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            await reader.read(100000)
            writer.close()
            # a slow request we leave while it is in flight
            await raw(srv.listen_addr, b"GET /sleep?s=0.5 HTTP/1.1\r\nHost: a\r\n\r\n", timeout=0.1)
            t = srv.state.targets[app.addr]
            for _ in range(200):
                if t.in_flight == 0 and not srv.connections:
                    break
                await asyncio.sleep(0.01)
            assert t.in_flight == 0
            assert not srv.connections
            assert srv.state.pairs[("static", app.addr)].in_flight == 0
            assert (await get(srv.listen_addr, "/still-fine")).status == 200
        await app.stop()

    run(main())
