"""Proxying HTTP/1.1 through a real proxy to real test backends on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import base64
import os
import resource

from backends import App, Backend, read_head, response, ws_frame, ws_read
from util import Client, get, proxy, raw, read_response, run, split_addr


def test_get_is_proxied_with_release_header_and_forwarded_headers():
    async def main():
        app = await App("v1").start()
        async with proxy(app.addr) as srv:
            r = await get(srv.listen_addr, "/hello?x=1", {"Host": "example.test", "X-Forwarded-For": "10.0.0.9"})
            assert r.status == 200
            assert r.headers["x-nonstop-release"] == "static"
            info = r.json()
            assert info["path"] == "/hello?x=1"
            assert info["headers"]["host"] == "example.test"  # Host kept
            # 127.0.0.1 is not a trusted proxy here: its X-Forwarded-For is replaced, not extended
            assert info["headers"]["x-forwarded-for"] == "127.0.0.1"
            assert info["headers"]["x-real-ip"] == "127.0.0.1"
            assert info["headers"]["x-forwarded-proto"] == "http"
            assert info["headers"]["x-forwarded-host"] == "example.test"
        await app.stop()

    run(main())


def test_keep_alive_both_sides_reuses_one_upstream_connection():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            for i in range(20):
                r = await c.request("GET", f"/n{i}")
                assert r.status == 200 and r.json()["path"] == f"/n{i}"
            assert c.connections == 1  # client side kept alive
            assert app.connections == 1  # upstream connection pooled and reused
            await c.close()
        await app.stop()

    run(main())


class _Barrier(Backend):
    """Answers nothing until ``size`` requests are held, then all of them: each burst is exactly ``size`` at once."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.held = 0
        self.all_in = asyncio.Event()

    def next_burst(self) -> None:
        self.held = 0
        self.all_in = asyncio.Event()

    async def handle(self, reader, writer) -> None:
        while await read_head(reader) is not None:
            self.requests += 1
            self.held += 1
            all_in = self.all_in
            if self.held == self.size:
                all_in.set()
            await all_in.wait()
            writer.write(response(200, b"ok"))


def test_the_pool_keeps_every_connection_a_burst_used_for_the_next_burst():
    # issue 16: with the idle pool capped at 256, each burst of more concurrent requests than that
    # closed the extra connections as they came back, and the next burst waited to open them again
    concurrent, bursts = 300, 3
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * concurrent + 256  # clients, the proxy's two sides, the app's side
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))

    async def main():
        app = await _Barrier(concurrent).start()
        async with proxy(app.addr) as srv:
            clients = [Client(srv.listen_addr) for _ in range(concurrent)]
            for burst in range(bursts):
                app.next_burst()
                rs = await asyncio.gather(*(c.request("GET", "/") for c in clients))
                assert [r.status for r in rs] == [200] * concurrent
                assert app.connections == concurrent, f"burst {burst + 1}: the app saw {app.connections} connections"
            assert app.requests == concurrent * bursts
            await asyncio.gather(*(c.close() for c in clients))
        await app.stop()

    run(main())


def test_a_request_repeated_byte_for_byte_on_one_connection_is_forwarded_each_time():
    # the fast path reuses the head it built for the previous identical request
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            for path in ("/a", "/a", "/b", "/a", "/a", "/b", "/b"):
                r = await c.request("GET", path)
                assert r.status == 200 and r.json()["path"] == path
                assert r.json()["headers"]["x-forwarded-for"] == "127.0.0.1"
            assert c.connections == 1
            assert app.requests == 7
            await c.close()
        await app.stop()

    run(main())


def test_hop_by_hop_headers_are_removed_both_ways():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            r = await get(
                srv.listen_addr,
                "/",
                {"Connection": "keep-alive, X-Secret", "X-Secret": "s", "Keep-Alive": "timeout=9", "TE": "trailers",
                 "Proxy-Authorization": "Basic x", "Proxy-Connection": "keep-alive", "Trailer": "X-T",
                 "X-Forwarded-Proto": "https", "X-Kept": "yes"},
            )
            seen = r.json()["headers"]
            for h in ("x-secret", "keep-alive", "te", "proxy-authorization", "proxy-connection", "trailer"):
                assert h not in seen, h
            assert seen["x-kept"] == "yes"
            assert seen["x-forwarded-proto"] == "http"  # set by the proxy, not trusted from the client
            assert "connection" not in seen  # HTTP/1.1 keep-alive is the default upstream
            r = await get(srv.listen_addr, "/headers")
            assert "x-custom" not in r.headers  # named in the upstream's Connection header
            assert "keep-alive" not in r.headers and "connection" not in r.headers
            assert r.headers["proxy-thing"] == "a"  # only Proxy-Connection/-Authenticate/-Authorization are hop-by-hop
        await app.stop()

    run(main())


def test_post_content_length_and_chunked_request_bodies():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            body = os.urandom(300_000)
            r = await c.request("POST", "/upload", body=body)
            import zlib

            assert r.json() == {"length": len(body), "crc": zlib.crc32(body)}
            chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"hello ", b"chunked ", b"world")) + b"0\r\n\r\n"
            r = await c.request("POST", "/upload", {"Transfer-Encoding": "chunked"}, chunked)
            assert r.json()["length"] == len(b"hello chunked world")
            # still one client connection, and the next request works
            r = await c.request("GET", "/after")
            assert r.status == 200 and c.connections == 1
            await c.close()
        await app.stop()

    run(main())


def test_chunked_response_is_rechunked_and_http10_client_gets_close_delimited():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            r = await get(srv.listen_addr, "/chunked?n=4")
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.body == b"chunk0;chunk1;chunk2;chunk3;"
            out = await raw(srv.listen_addr, b"GET /chunked?n=2 HTTP/1.0\r\nHost: a\r\n\r\n")
            head, _, body = out.partition(b"\r\n\r\n")
            assert b"Transfer-Encoding" not in head and b"Connection: close" in head
            assert body == b"chunk0;chunk1;"
        await app.stop()

    run(main())


def test_head_response_has_no_body_and_connection_stays_usable():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            r = await c.request("HEAD", "/x")
            assert r.status == 200 and int(r.headers["content-length"]) > 0 and r.body == b""
            r = await c.request("GET", "/y")
            assert r.json()["path"] == "/y"
            await c.close()
        await app.stop()

    run(main())


def test_expect_100_continue_is_relayed():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            reader, writer = await asyncio.open_connection(*split_addr(srv.listen_addr))
            writer.write(b"POST /continue HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100")  # before we sent a body byte
            writer.write(b"hello")
            r = await asyncio.wait_for(read_response(reader), 5)
            assert r.status == 200 and r.json()["length"] == 5
            writer.close()
        await app.stop()

    run(main())


def test_status_codes_pass_through_and_are_counted_by_class():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            for code in (201, 302, 404, 503):
                r = await get(srv.listen_addr, f"/status?code={code}")
                assert r.status == code
                assert "x-nonstop-error" not in r.headers  # the app's own answer
            c = srv.state.pairs[("static", app.addr)]
            assert c.by_class == [0, 1, 1, 1, 1]
            assert c.in_flight == 0
        await app.stop()

    run(main())


def test_websocket_echo_through_the_proxy():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            reader, writer = await asyncio.open_connection(*split_addr(srv.listen_addr))
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
                + ws_frame(1, b"first, sent with the handshake", mask=True)
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101")
            assert b"Upgrade: websocket" in head
            assert await asyncio.wait_for(ws_read(reader, masked=False), 5) == (1, b"first, sent with the handshake")
            for i in range(5):
                payload = os.urandom(i * 5000)
                writer.write(ws_frame(2, payload, mask=True))
                assert await asyncio.wait_for(ws_read(reader, masked=False), 5) == (2, payload)
            t = srv.state.targets[app.addr]
            assert t.in_flight == 1 and len(t.tunnels) == 1  # counted until closed
            writer.write(ws_frame(8, b"", mask=True))
            assert (await asyncio.wait_for(ws_read(reader, masked=False), 5))[0] == 8
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            for _ in range(100):
                if t.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert t.in_flight == 0 and not t.tunnels
        await app.stop()

    run(main())


def test_pipelined_requests_are_answered_in_order():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            reader, writer = await asyncio.open_connection(*split_addr(srv.listen_addr))
            writer.write(
                b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            r1 = await asyncio.wait_for(read_response(reader), 5)
            r2 = await asyncio.wait_for(read_response(reader), 5)
            r3 = await asyncio.wait_for(read_response(reader), 5)
            assert r1.json()["slept"] == "0.2"
            assert r2.json()["length"] == 3
            assert r3.json()["path"] == "/third"
            writer.close()
        await app.stop()

    run(main())


def test_http10_keep_alive_and_close():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            out = await raw(srv.listen_addr, b"GET /a HTTP/1.0\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 200") and b"Connection: close" in out
            reader, writer = await asyncio.open_connection(*split_addr(srv.listen_addr))
            for i in range(2):
                writer.write(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                r = await asyncio.wait_for(read_response(reader), 5)
                assert r.headers["connection"] == "keep-alive"
            writer.close()
        await app.stop()

    run(main())


def test_stats_count_requests_and_latency():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            for _ in range(10):
                await c.request("GET", "/")
            await c.close()
            pair = srv.state.pairs[("static", app.addr)]
            assert pair.requests == 10 and pair.by_class[1] == 10
            assert sum(pair.counts) == 10 and pair.sum > 0
        await app.stop()

    run(main())
