"""The proxy as a process: admin socket, persistence, SIGTERM, takeover and route swaps under load."""

from __future__ import annotations

import asyncio
import os
import signal
import stat

import psutil
import pytest

from backends import App
from load import run_load
from nonstop.errors import ProxyError
from nonstop.proxy.client import AdminClient
from nonstop.proxy.routes import RouteTable
from nonstop.proxy.testing import run_proxy, start_proxy
from util import Client, get, run, split_addr


def two_releases(v1: str, v2: str, w2: int, revision: int = 0, draining_v1: bool = False) -> dict:
    return {
        "revision": revision,
        "sticky": True,
        "releases": [
            {"name": "v2", "weight": w2, "match": {"headers": {"X-Canary": "1"}},
             "targets": [{"addr": v2, "draining": False}]},
            {"name": "v1", "weight": 100 - w2, "targets": [{"addr": v1, "draining": draining_v1}]},
        ],
    }


def test_admin_api_routes_stats_metrics_and_socket_mode():
    async def main():
        v1, v2 = await App("v1").start(), await App("v2").start()
        with run_proxy() as p:
            assert stat.S_IMODE(os.stat(p.admin_socket).st_mode) == 0o600
            admin = AdminClient(p.admin_socket)
            h = await admin.health()
            assert h["ok"] and h["pid"] == p.pid and h["revision"] == 0
            rev = await admin.put_routes(RouteTable.from_dict(two_releases(v1.addr, v2.addr, 0)))
            assert rev == 1
            with pytest.raises(ProxyError) as e:
                await admin.put_routes(two_releases(v1.addr, v2.addr, 0, revision=1))
            assert e.value.detail["status"] == 409
            bad = two_releases(v1.addr, v2.addr, 0)
            bad["releases"][0]["weight"] = 300
            with pytest.raises(ProxyError) as e:
                await admin.put_routes(bad)
            assert e.value.detail["status"] == 400 and "releases[0].weight" in e.value.message
            assert (await admin.get_routes()).revision == 1  # unchanged by the refused tables
            # weight 0: v1 gets everyone, except requests matching the canary rule
            assert (await get(p.addr, "/")).headers["x-nonstop-release"] == "v1"
            assert (await get(p.addr, "/", {"X-Canary": "1"})).headers["x-nonstop-release"] == "v2"
            # 30% canary: the client's bucket decides, the cookie keeps it there
            await admin.put_routes(two_releases(v1.addr, v2.addr, 30))
            r = await get(p.addr, "/")
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("nonstop_bucket=") and "Max-Age=86400" in cookie
            b = int(cookie.split("=", 1)[1].split(";")[0])
            assert r.headers["x-nonstop-release"] == ("v2" if b < 30 else "v1")
            for bucket, rel in ((5, "v2"), (29, "v2"), (30, "v1"), (99, "v1")):
                r = await get(p.addr, "/", {"Cookie": f"nonstop_bucket={bucket}"})
                assert r.headers["x-nonstop-release"] == rel and "set-cookie" not in r.headers
            s = await admin.stats()
            assert s["revision"] == 2
            assert s["releases"]["v1"]["requests"] >= 3 and s["releases"]["v2"]["requests"] >= 3
            assert s["targets"][v1.addr]["by_class"]["2xx"] == s["releases"]["v1"]["requests"]
            assert s["targets"][v1.addr]["p99"] is not None and s["targets"][v1.addr]["in_flight"] == 0
            m = await admin.metrics()
            assert f'nonstop_proxy_requests_total{{release="v1",target="{v1.addr}",code_class="2xx"}}' in m
        with pytest.raises(ProxyError):
            await AdminClient(p.admin_socket, timeout=2).health()  # gone with the process
        await v1.stop()
        await v2.stop()

    run(main())


def test_routes_are_saved_and_restored_on_restart():
    async def main():
        v1 = await App("v1").start()
        import tempfile

        workdir = tempfile.mkdtemp(prefix="nsp-", dir="/tmp")
        pid_file = os.path.join(workdir, "proxy.pid")
        with run_proxy("--pid-file", pid_file, workdir=workdir, keep_workdir=True) as p:
            assert open(pid_file).read() == f"{p.pid}\n"
            await AdminClient(p.admin_socket).put_routes(two_releases(v1.addr, "127.0.0.1:9", 0, revision=5))
            routes_file = p.routes_file
        assert p.proc.returncode == 0
        assert not os.path.exists(pid_file) and not os.path.exists(p.admin_socket)  # cleaned up on exit
        assert RouteTable.from_json(open(routes_file).read()).revision == 5
        with run_proxy(workdir=workdir) as q:
            assert (await AdminClient(q.admin_socket).get_routes()).revision == 5
            r = await get(q.addr, "/")
            assert r.status == 200 and r.headers["x-nonstop-release"] == "v1"
        await v1.stop()

    run(main())


def test_sigterm_finishes_in_flight_requests_then_exits_0():
    async def main():
        app = await App().start()
        p = start_proxy(upstreams=[app.addr])
        try:
            slow = asyncio.ensure_future(get(p.addr, "/sleep?s=1.5"))
            idle = Client(p.addr)
            assert (await idle.request("GET", "/")).status == 200
            await asyncio.sleep(0.3)
            p.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(OSError):
                await asyncio.open_connection(*split_addr(p.addr))  # stopped accepting
            r = await slow
            assert r.status == 200 and r.headers.get("connection") == "close"
            loop = asyncio.get_running_loop()
            code = await loop.run_in_executor(None, p.proc.wait, 10)
            assert code == 0
            # the idle keep-alive connection was closed after the grace, cleanly
            assert await asyncio.wait_for(idle.reader.read(), 5) == b""
            await idle.close()
        finally:
            p.close()
            await app.stop()

    run(main())


def test_route_swap_under_load_has_zero_failures():
    async def main():
        v1, v2 = await App("v1").start(), await App("v2").start()
        with run_proxy() as p:
            admin = AdminClient(p.admin_socket)
            await admin.put_routes(two_releases(v1.addr, v2.addr, 0))

            async def swaps():
                for w in (10, 50, 100):
                    await admin.put_routes(two_releases(v1.addr, v2.addr, w))
                    await asyncio.sleep(0.3)
                await admin.put_routes(two_releases(v1.addr, v2.addr, 100, draining_v1=True))
                res = await admin.drain([v1.addr], timeout=10)
                assert res["drained"]

            res = await run_load(p.addr, swaps, path="/sleep?s=0.01")
            assert res.failures == [], res.failures[:5]
            assert res.ok > 100 and res.by_release.get("v1") and res.by_release.get("v2")
        await v1.stop()
        await v2.stop()

    run(main(), timeout=90)


def test_takeover_under_load_has_zero_failures():
    async def main():
        app = await App().start()
        old = start_proxy(upstreams=[app.addr])
        new = None
        loop = asyncio.get_running_loop()
        try:
            async def replace():
                nonlocal new
                new = await loop.run_in_executor(
                    None, lambda: start_proxy(admin_socket=old.admin_socket, workdir=old.workdir, takeover=True)
                )
                assert new.addr == old.addr
                code = await loop.run_in_executor(None, old.proc.wait, 30)
                assert code == 0

            res = await run_load(old.addr, replace, path="/sleep?s=0.005", keep_alive=8, new_conn=4, after=1.0)
            assert res.failures == [], res.failures[:5]
            assert res.ok > 100
            assert res.reconnects > 0  # keep-alive clients were moved over by Connection: close
            admin = AdminClient(new.admin_socket)
            assert (await admin.health())["pid"] == new.pid  # the admin socket path now reaches the new one
            assert (await admin.get_routes()).releases[0].targets[0].addr == app.addr  # table carried over
            s = await admin.stats()
            assert s["targets"][app.addr]["requests"] > 0
        finally:
            if new is not None:
                new.close(remove_workdir=False)
            old.close()
            await app.stop()

    run(main(), timeout=90)


def test_sighup_starts_a_successor_that_takes_over():
    async def main():
        app = await App().start()
        old = start_proxy(upstreams=[app.addr])
        successor = None
        try:
            assert (await get(old.addr, "/")).status == 200
            old.proc.send_signal(signal.SIGHUP)
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, old.proc.wait, 30) == 0
            h = await AdminClient(old.admin_socket).health()
            successor = h["pid"]
            assert successor != old.pid
            assert (await get(old.addr, "/")).status == 200
        finally:
            if successor is not None and psutil.pid_exists(successor):
                os.kill(successor, signal.SIGTERM)
                try:
                    psutil.Process(successor).wait(15)
                except psutil.NoSuchProcess:
                    pass
            old.close()
            await app.stop()

    run(main(), timeout=60)


def test_large_bodies_stream_both_ways_with_bounded_memory():
    async def main():
        app = await App().start()
        with run_proxy(upstreams=[app.addr]) as p:
            proc = psutil.Process(p.pid)
            base = proc.memory_info().rss
            size = 256 * 1024 * 1024
            # upload: chunked, streamed from a generator
            reader, writer = await asyncio.open_connection(*split_addr(p.addr))
            writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"u" * (1 << 20)
            peak = base
            for i in range(size // len(block)):
                writer.write(block)
                await writer.drain()
                if i % 32 == 0:
                    peak = max(peak, proc.memory_info().rss)
            from util import read_response

            r = await asyncio.wait_for(read_response(reader), 60)
            assert r.json()["length"] == size
            # download: the client reads slowly at first, so the proxy must stop reading upstream
            writer.write(b"GET /big?bytes=%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
            got = 0

            def sink(data):
                nonlocal got
                got += len(data)

            await asyncio.sleep(0.5)  # nobody reads: back-pressure must hold the upstream
            peak = max(peak, proc.memory_info().rss)
            r = await asyncio.wait_for(read_response(reader, sink=sink), 120)
            assert got == size
            peak = max(peak, proc.memory_info().rss)
            writer.close()
            assert peak - base < 64 * 1024 * 1024, f"rss grew by {(peak - base) >> 20} MiB"
        await app.stop()

    run(main(), timeout=180)


def test_drain_closes_upgraded_connections_after_their_own_timeout():
    async def main():
        import base64

        v1, v2 = await App("v1").start(), await App("v2").start()
        with run_proxy() as p:
            admin = AdminClient(p.admin_socket)
            await admin.put_routes(two_releases(v1.addr, v2.addr, 0))
            reader, writer = await asyncio.open_connection(*split_addr(p.addr))
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(f"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
            slow = asyncio.ensure_future(get(p.addr, "/sleep?s=0.5"))
            await asyncio.sleep(0.1)
            await admin.put_routes(two_releases(v1.addr, v2.addr, 100, draining_v1=True))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            res = await admin.drain([v1.addr], timeout=5, upgraded_timeout=1.5)
            took = loop.time() - t0
            assert res == {"drained": True, "in_flight": {v1.addr: 0}}
            assert 1.3 < took < 4, took  # waited for the tunnel's own timeout, not the request one
            assert (await slow).status == 200
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the WebSocket was closed by the drain
            writer.close()
        await v1.stop()
        await v2.stop()

    run(main())
