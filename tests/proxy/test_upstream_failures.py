"""Upstream failures: retries (only where allowed), timeouts, broken responses, hold, drain."""

from __future__ import annotations

import asyncio
import socket

import pytest

from backends import App, Raw, closed_port, read_head
from nonstop.proxy.routes import RouteTable
from util import Client, get, proxy, raw, run


def table(*releases, revision=0, sticky=False):
    """releases: (name, weight, [addr or (addr, draining)])."""
    rels = []
    for name, weight, targets in releases:
        ts = [{"addr": t, "draining": False} if isinstance(t, str) else {"addr": t[0], "draining": t[1]}
              for t in targets]
        rels.append({"name": name, "weight": weight, "targets": ts})
    return RouteTable.from_dict({"revision": revision, "sticky": sticky, "releases": rels})


def test_connect_refused_goes_to_another_target_of_the_same_release_first():
    async def main():
        app, other = await App("same").start(), await App("other").start()
        dead = closed_port()
        async with proxy() as srv:
            # dead is listed first and has least in-flight: it is tried first
            srv.state.apply(table(("v1", 100, [dead, app.addr]), ("v2", 0, [other.addr])))
            for _ in range(4):
                r = await get(srv.listen_addr, "/")
                assert r.status == 200 and r.json()["app"] == "same"
            assert srv.state.pairs[("v1", dead)].proxy_errors >= 1
            assert srv.state.targets[dead].in_flight == 0
        await app.stop()
        await other.stop()

    run(main())


def test_connect_refused_everywhere_waits_for_a_target_then_502():
    """Every target refusing (the only instance died): the request reached none of them, so it is held,
    each target tried again every RETRY_EVERY, for hold_timeout; then 502 (DESIGN §5)."""
    async def main():
        dead1, dead2 = closed_port(), closed_port()
        async with proxy(dead1, dead2, hold_timeout=0.7) as srv:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            r = await get(srv.listen_addr, "/")
            took = loop.time() - t0
            assert r.status == 502 and r.headers["x-nonstop-error"] == "upstream-connect"
            assert 0.6 < took < 2.0, took
            errs = srv.state.pairs[("static", dead1)].proxy_errors + srv.state.pairs[("static", dead2)].proxy_errors
            assert errs >= 4  # each tried once at first, then again while held
            assert srv.state.targets[dead1].in_flight == 0 and srv.state.targets[dead2].in_flight == 0

    run(main())


def test_a_target_that_comes_back_within_hold_timeout_serves_the_held_request():
    async def main():
        port = int(closed_port().rpartition(":")[2])
        async with proxy(f"127.0.0.1:{port}", hold_timeout=5) as srv:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            pending = asyncio.ensure_future(get(srv.listen_addr, "/back"))
            await asyncio.sleep(0.5)
            assert not pending.done()
            app = await App("back").start(port)  # the restarted instance, on the same address
            try:
                r = await pending
                assert r.status == 200 and r.json()["app"] == "back", (r.status, r.body)
                assert 0.5 < loop.time() - t0 < 3
            finally:
                await app.stop()

    run(main())


def test_connect_timeout_is_502():
    async def main():
        # a listener that never accepts, its one-slot backlog already full: SYNs are dropped
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        filler = socket.socket()
        filler.connect(s.getsockname())
        addr = "127.0.0.1:%d" % s.getsockname()[1]
        try:
            async with proxy(addr, connect_timeout=0.3, hold_timeout=0.5) as srv:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                r = await get(srv.listen_addr, "/")
                assert r.status == 502 and r.headers["x-nonstop-error"] == "upstream-connect"
                assert 0.25 < loop.time() - t0 < 3
        finally:
            filler.close()
            s.close()

    run(main())


def test_pooled_connection_closed_by_upstream_while_idle_is_replaced():
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            assert (await c.request("GET", "/1")).status == 200
            app.close_idle()  # the upstream's keep-alive timeout fires
            await asyncio.sleep(0.05)
            assert (await c.request("GET", "/2")).status == 200
            assert app.connections == 2
            assert srv.state.pairs[("static", app.addr)].proxy_errors == 0
            await c.close()
        await app.stop()

    run(main())


def test_pool_check_sees_an_upstream_close_the_loop_has_not_delivered():
    from nonstop.proxy.upstream import UpstreamConnection

    class FakeTransport:
        def __init__(self, sock):
            self.sock = sock

        def is_closing(self):
            return False

        def get_extra_info(self, name):
            return self.sock

        def close(self):
            pass

    a, b = socket.socketpair()
    try:
        conn = UpstreamConnection(target=None)
        conn.transport = FakeTransport(a)
        conn.idle_since = 0.0
        assert conn.alive(now=10.0)  # idle long enough to be polled: nothing waiting
        b.close()  # the upstream closes; no event loop has seen it
        assert not conn.alive(now=10.0)
        assert not conn.alive(now=0.1)  # however recently it was used: the pool always polls
    finally:
        a.close()


@pytest.mark.parametrize("method, body", [("POST", b"pay once"), ("GET", b"")])
def test_upstream_closing_a_new_connection_after_the_request_was_sent_is_not_retried(method, body):
    # even a GET: a request that kills the app must not be replayed on every instance
    async def main():
        async def close_after_reading(reader, writer):
            await read_head(reader)
            writer.close()

        bad = await Raw(close_after_reading).start()
        good = await App().start()
        async with proxy() as srv:
            srv.state.apply(table(("v1", 100, [bad.addr, good.addr])))
            srv.state.routes[0]._rr = 0
            r = await get(srv.listen_addr, "/", method=method, body=body)
            assert r.status == 502 and r.headers["x-nonstop-error"] == "upstream-closed"
            assert bad.requests == 1 and good.requests == 0  # not replayed elsewhere
        await bad.stop()
        await good.stop()

    run(main())


def _closes_a_reused_connection_unanswered():
    """An upstream that answers the first request of each connection and closes at the
    second one after reading its head, like an app whose keep-alive timeout fires
    while the proxy's next request is on the wire (or one that dies at that moment)."""
    seen: list[tuple[str, str]] = []

    async def script(reader, writer):
        n = 0
        while True:
            got = await read_head(reader)
            if got is None:
                break
            method, target, headers, _ = got
            if int(headers.get("content-length", 0)):
                await reader.readexactly(int(headers["content-length"]))
            seen.append((method, target))
            n += 1
            if n == 2:
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    return Raw(script), seen


def test_a_post_never_goes_on_a_just_used_connection_whose_close_the_loop_has_not_delivered():
    # kill -9 of the only instance: its FIN on the pooled connection can sit in the kernel while a POST
    # arrives in the same loop turn; a POST is never sent again, so it must not be written there
    async def main():
        app = await App().start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            assert (await c.request("GET", "/1")).status == 200
            (up,) = srv.state.targets[app.addr].pool._idle
            up.transport.pause_reading()  # the loop will not deliver what arrives on it
            app.close_idle()
            await asyncio.sleep(0.05)  # the FIN is in the proxy's socket, unread; used 50 ms ago: "fresh"
            r = await c.request("POST", "/pay", body=b"once")
            assert r.status == 200, (r.status, r.headers)
            assert app.connections == 2 and app.requests == 2
            assert srv.state.pairs[("static", app.addr)].proxy_errors == 0
            await c.close()
        await app.stop()

    run(main())


def test_an_idempotent_request_on_a_reused_connection_closed_unanswered_is_sent_again_once():
    async def main():
        app, seen = _closes_a_reused_connection_unanswered()
        await app.start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            assert (await c.request("GET", "/1")).status == 200
            r = await c.request("GET", "/2")  # reuses the pooled connection, which closes
            assert r.status == 200 and r.body == b"ok"
            assert seen == [("GET", "/1"), ("GET", "/2"), ("GET", "/2")]
            assert app.requests == 2  # the replay went on a new connection
            assert srv.state.pairs[("static", app.addr)].proxy_errors == 1
            assert srv.state.targets[app.addr].in_flight == 0
            await c.close()
        await app.stop()

    run(main())


def test_the_replay_goes_to_a_sibling_first():
    # a process being killed still accepts for a few milliseconds: the same target is the last resort
    async def main():
        bad, seen = _closes_a_reused_connection_unanswered()
        await bad.start()
        good = await App("sibling").start()
        async with proxy() as srv:
            srv.state.apply(table(("v1", 100, [bad.addr])))
            c = Client(srv.listen_addr)
            assert (await c.request("GET", "/1")).status == 200  # leaves a pooled connection to bad
            srv.state.apply(table(("v1", 100, [bad.addr, good.addr])))
            srv.state.routes[0]._rr = 0
            r = await c.request("GET", "/2")
            assert r.status == 200 and r.json()["app"] == "sibling"
            assert seen == [("GET", "/1"), ("GET", "/2")] and good.requests == 1
            assert srv.state.targets[bad.addr].in_flight == 0 and srv.state.targets[good.addr].in_flight == 0
            await c.close()
        await bad.stop()
        await good.stop()

    run(main())


def test_a_post_on_a_reused_connection_closed_unanswered_is_not_sent_again():
    async def main():
        app, seen = _closes_a_reused_connection_unanswered()
        await app.start()
        async with proxy(app.addr) as srv:
            c = Client(srv.listen_addr)
            assert (await c.request("GET", "/1")).status == 200
            r = await c.request("POST", "/pay", body=b"once")
            assert r.status == 502 and r.headers["x-nonstop-error"] == "upstream-closed"
            assert seen == [("GET", "/1"), ("POST", "/pay")]  # it may have acted on it: never replayed
            assert srv.state.targets[app.addr].in_flight == 0
            await c.close()
        await app.stop()

    run(main())


def test_response_header_timeout_is_504():
    async def main():
        async def never_answer(reader, writer):
            await read_head(reader)
            await asyncio.sleep(10)

        slow = await Raw(never_answer).start()
        async with proxy(slow.addr, read_timeout=0.5) as srv:
            r = await get(srv.listen_addr, "/")
            assert r.status == 504 and r.headers["x-nonstop-error"] == "upstream-timeout"
            assert srv.state.targets[slow.addr].in_flight == 0
        await slow.stop()

    run(main())


def test_garbage_from_upstream_is_502():
    async def main():
        async def garbage(reader, writer):
            await read_head(reader)
            writer.write(b"SMTP ready\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(1)

        bad = await Raw(garbage).start()
        async with proxy(bad.addr) as srv:
            r = await get(srv.listen_addr, "/")
            assert r.status == 502 and r.headers["x-nonstop-error"] == "upstream-bad-response"
        await bad.stop()

    run(main())


def test_upstream_dying_mid_body_cuts_the_client_connection():
    async def main():
        async def short(reader, writer):
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            await writer.drain()
            writer.close()

        bad = await Raw(short).start()
        async with proxy(bad.addr) as srv:
            out = await raw(srv.listen_addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            head, _, body = out.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and body == b"x" * 10  # truncated, then closed
            assert srv.state.targets[bad.addr].in_flight == 0
            assert srv.state.pairs[("static", bad.addr)].proxy_errors == 1
        await bad.stop()

    run(main())


def test_until_close_response_is_forwarded_and_connection_closed():
    async def main():
        async def eof_framed(reader, writer):
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
            await writer.drain()
            writer.close()

        up = await Raw(eof_framed).start()
        async with proxy(up.addr) as srv:
            out = await raw(srv.listen_addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            head, _, body = out.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head and body == b"all of it"
        await up.stop()

    run(main())


def test_no_target_holds_until_a_table_arrives():
    async def main():
        app = await App().start()
        async with proxy(hold_timeout=5) as srv:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            loop.call_later(0.3, srv.state.apply, table(("v1", 100, [app.addr])))
            r = await get(srv.listen_addr, "/held")
            assert r.status == 200 and r.json()["path"] == "/held"
            assert 0.25 < loop.time() - t0 < 3
        await app.stop()

    run(main())


def test_no_target_after_hold_timeout_is_503():
    async def main():
        app = await App().start()
        async with proxy(hold_timeout=0.4) as srv:
            # every target draining: nothing usable
            srv.state.apply(table(("v1", 100, [(app.addr, True)])))
            r = await get(srv.listen_addr, "/")
            assert r.status == 503 and r.headers["x-nonstop-error"] == "no-target"
            assert app.requests == 0
            assert srv.state.unrouted.by_class[4] == 1
        await app.stop()

    run(main())


def test_drain_waits_for_slow_requests_that_finish_after_the_switch():
    async def main():
        from nonstop.proxy.admin import AdminAPI

        v1, v2 = await App("v1").start(), await App("v2").start()
        async with proxy() as srv:
            srv.state.apply(table(("v1", 100, [v1.addr])))
            slow = [asyncio.ensure_future(get(srv.listen_addr, "/sleep?s=2")) for _ in range(3)]
            await asyncio.sleep(0.3)
            assert srv.state.in_flight(v1.addr) == (3, 0)
            srv.state.apply(table(("v2", 100, [v2.addr]), ("v1", 0, [(v1.addr, True)])))
            r = await get(srv.listen_addr, "/new")
            assert r.json()["app"] == "v2"  # switched: new requests go to v2
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            res = await AdminAPI(srv).drain({"targets": [v1.addr], "timeout": 10})
            assert res == {"drained": True, "in_flight": {v1.addr: 0}}
            assert 1.0 < loop.time() - t0 < 3.5
            for f in slow:
                resp = await f
                assert resp.status == 200 and resp.json()["app"] == "v1"  # finished on the old one
        await v1.stop()
        await v2.stop()

    run(main())


def test_drain_times_out_with_counts_left():
    async def main():
        from nonstop.proxy.admin import AdminAPI

        v1 = await App("v1").start()
        async with proxy(v1.addr) as srv:
            slow = asyncio.ensure_future(get(srv.listen_addr, "/sleep?s=1.5"))
            await asyncio.sleep(0.2)
            res = await AdminAPI(srv).drain({"targets": [v1.addr], "timeout": 0.3})
            assert res == {"drained": False, "in_flight": {v1.addr: 1}}
            assert (await slow).status == 200
        await v1.stop()

    run(main())


def test_removed_target_is_implicitly_draining_and_forgotten_when_idle():
    async def main():
        v1, v2 = await App("v1").start(), await App("v2").start()
        async with proxy() as srv:
            srv.state.apply(table(("v1", 100, [v1.addr])))
            slow = asyncio.ensure_future(get(srv.listen_addr, "/sleep?s=0.6"))
            await asyncio.sleep(0.2)
            srv.state.apply(table(("v2", 100, [v2.addr])))
            assert v1.addr in srv.state.targets  # still in flight: kept, stats readable
            assert (await get(srv.listen_addr, "/")).json()["app"] == "v2"
            assert (await slow).json()["app"] == "v1"
            for _ in range(100):
                if v1.addr not in srv.state.targets:
                    break
                await asyncio.sleep(0.05)
            assert v1.addr not in srv.state.targets
        await v1.stop()
        await v2.stop()

    run(main())


def test_all_targets_of_the_release_dead_falls_back_to_the_next_release():
    async def main():
        other = await App("other").start()
        dead = closed_port()
        async with proxy() as srv:
            srv.state.apply(table(("v1", 100, [dead]), ("v2", 0, [other.addr])))
            r = await get(srv.listen_addr, "/")
            assert r.status == 200 and r.json()["app"] == "other"
            assert r.headers["x-nonstop-release"] == "v2"
        await other.stop()

    run(main())


def test_bytes_past_the_end_of_a_response_are_dropped_and_the_connection_not_reused():
    async def main():
        async def sloppy(reader, writer):
            while await read_head(reader):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
                await writer.drain()

        bad = await Raw(sloppy).start()
        async with proxy(bad.addr) as srv:
            c = Client(srv.listen_addr)
            for _ in range(3):
                r = await c.request("GET", "/")
                assert r.status == 200 and r.body == b"hi"
            assert bad.requests == 3  # a fresh upstream connection each time
            await c.close()
        await bad.stop()

    run(main())


def test_keep_alive_headers_from_a_node_like_upstream_take_the_general_path():
    async def main():
        async def node_like(reader, writer):
            while await read_head(reader):
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                await writer.drain()

        up = await Raw(node_like).start()
        async with proxy(up.addr) as srv:
            c = Client(srv.listen_addr)
            for _ in range(3):
                r = await c.request("GET", "/")
                assert r.body == b"hello" and "keep-alive" not in r.headers and "connection" not in r.headers
            assert up.connections == 1  # upstream connection reused
            await c.close()
        await up.stop()

    run(main())


def test_upstream_connection_close_is_honoured_and_http10_upstream_is_fine():
    async def main():
        async def one_shot(reader, writer):
            await read_head(reader)
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold")
            await writer.drain()
            writer.close()

        up = await Raw(one_shot).start()
        async with proxy(up.addr) as srv:
            c = Client(srv.listen_addr)
            for _ in range(3):
                r = await c.request("GET", "/")
                assert r.status == 200 and r.body == b"old"
            assert c.connections == 1  # the client keeps its connection
            assert srv.state.pairs[("static", up.addr)].proxy_errors == 0
            await c.close()
        await up.stop()

    run(main())


def test_early_hints_are_relayed_before_the_response():
    async def main():
        async def hints(reader, writer):
            await read_head(reader)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await asyncio.sleep(1)

        up = await Raw(hints).start()
        async with proxy(up.addr) as srv:
            out = await raw(srv.listen_addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n")
            assert out.endswith(b"\r\n\r\nok")
        await up.stop()

    run(main())


def test_request_body_that_stops_arriving_gets_408():
    async def main():
        app = await App().start()
        async with proxy(app.addr, read_timeout=0.5) as srv:
            out = await raw(srv.listen_addr, b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", timeout=4)
            assert out.startswith(b"HTTP/1.1 408 ") and b"X-Nonstop-Error: body-timeout" in out
            assert srv.state.targets[app.addr].in_flight == 0
        await app.stop()

    run(main())


def test_response_body_that_stalls_is_cut_but_a_steady_slow_one_is_not():
    async def main():
        async def stall(reader, writer):
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
            await writer.drain()
            await asyncio.sleep(5)

        bad = await Raw(stall).start()
        app = await App().start()
        async with proxy(bad.addr, read_timeout=0.5) as srv:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            out = await raw(srv.listen_addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=4)
            assert out.endswith(b"\r\n\r\npart") and loop.time() - t0 < 3  # cut, not left hanging
            srv.state.apply(RouteTable.static([app.addr]).with_revision(5))
            # 10 pieces, 0.15 s apart: 1.5 s in all, each gap well under read_timeout
            r = await get(srv.listen_addr, "/drip?bytes=10000&every=0.15")
            assert r.status == 200 and len(r.body) == 10000
        await bad.stop()
        await app.stop()

    run(main())


def test_oversized_upstream_head_is_502():
    async def main():
        async def huge(reader, writer):
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(200):
                writer.write(b"X-Filler: " + b"f" * 1000 + b"\r\n")
                await writer.drain()
            await asyncio.sleep(2)

        bad = await Raw(huge).start()
        async with proxy(bad.addr) as srv:
            r = await get(srv.listen_addr, "/")
            assert r.status == 502 and r.headers["x-nonstop-error"] == "upstream-head-too-large"
        await bad.stop()

    run(main())


def test_upstream_accepting_then_resetting_before_the_request_is_written_is_tried_elsewhere(monkeypatch):
    """What a container engine's port forwarder does while its container is gone: it accepts, then
    closes. Seen closed before a byte of the request was written, that is as good as refused: the
    request goes to a sibling (before, writing to the closed transport raised in a task nobody
    awaited, and the request hung without an answer)."""
    import struct
    import threading

    from nonstop.proxy import connecting

    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(64)
    stop = threading.Event()

    def accept_and_reset() -> None:
        lst.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = lst.accept()
            except (socket.timeout, OSError):
                continue
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    real = connecting.connect

    async def connect_then_look_later(loop, target, timeout):
        up = await real(loop, target, timeout)
        await asyncio.sleep(0.02)  # a busy loop: the peer's reset is seen before the request is written
        return up

    monkeypatch.setattr(connecting, "connect", connect_then_look_later)
    resetter = "127.0.0.1:%d" % lst.getsockname()[1]
    th = threading.Thread(target=accept_and_reset, daemon=True)
    th.start()

    async def main():
        app = await App("good").start()
        try:
            async with proxy() as srv:
                srv.state.apply(table(("v1", 100, [resetter, app.addr])))
                for _ in range(6):
                    r = await asyncio.wait_for(get(srv.listen_addr, "/"), 5)
                    assert r.status == 200 and r.json()["app"] == "good"
                assert srv.state.pairs[("v1", resetter)].proxy_errors >= 1
                assert srv.state.targets[resetter].in_flight == 0
        finally:
            await app.stop()

    try:
        run(main())
    finally:
        stop.set()
        th.join(5)
        lst.close()
