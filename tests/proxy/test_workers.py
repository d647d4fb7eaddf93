"""``--workers N``: one listening socket, N worker processes, one admin API reporting totals."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil

from backends import App
from load import run_load
from nonstop.proxy.client import AdminClient
from nonstop.proxy.testing import run_proxy, start_proxy
from util import get, run


def _table(addr: str, name: str = "v1") -> dict:
    return {"releases": [{"name": name, "weight": 100, "targets": [{"addr": addr}]}], "sticky": False}


def test_workers_share_the_socket_and_the_admin_api_reports_totals():
    async def main():
        app = await App().start()
        with run_proxy("--workers", "2") as p:
            admin = AdminClient(p.admin_socket)
            h = await admin.health()
            assert len(h["workers"]) == 2
            assert all(psutil.Process(pid).ppid() == p.pid for pid in h["workers"])
            assert await admin.put_routes(_table(app.addr)) == 1
            n = 200
            sem = asyncio.Semaphore(20)

            async def one():
                async with sem:
                    r = await get(p.addr, "/")
                    assert r.status == 200 and r.headers["x-nonstop-release"] == "v1"

            await asyncio.gather(*(one() for _ in range(n)))
            s = await admin.stats()
            assert s["workers"] == 2
            assert s["targets"][app.addr]["requests"] == n
            assert s["releases"]["v1"]["by_class"]["2xx"] == n
            assert s["targets"][app.addr]["in_flight"] == 0
            # both workers took a share (each worker's own admin socket sits beside the public one)
            per = []
            for name in sorted(os.listdir(p.workdir)):
                if name.startswith(".w") and name.endswith(".sock"):
                    ws = await AdminClient(os.path.join(p.workdir, name)).stats()
                    per.append(ws["targets"].get(app.addr, {}).get("requests", 0))
            assert len(per) == 2 and sum(per) == n and min(per) > 0, per
            m = await admin.metrics()
            assert f'nonstop_proxy_requests_total{{release="v1",target="{app.addr}",code_class="2xx"}} {n}' in m
            drained = await admin.drain([app.addr], timeout=1)
            assert drained == {"drained": True, "in_flight": {app.addr: 0}}
            pids = h["workers"]
        assert p.proc.returncode == 0
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        await app.stop()

    run(main(), timeout=90)


def test_a_dead_worker_is_replaced_with_the_live_table():
    async def main():
        app = await App().start()
        with run_proxy("--workers", "2") as p:
            admin = AdminClient(p.admin_socket)
            await admin.put_routes(_table(app.addr))
            before = (await admin.health())["workers"]
            os.kill(before[0], signal.SIGKILL)
            for _ in range(100):
                now = (await admin.health())["workers"]
                if now[0] != before[0]:
                    break
                await asyncio.sleep(0.1)
            assert now[0] != before[0] and now[1] == before[1]
            for _ in range(20):
                assert (await get(p.addr, "/")).status == 200
            w0 = [n for n in os.listdir(p.workdir) if n.startswith(".w0-")][0]
            assert (await AdminClient(os.path.join(p.workdir, w0)).get_routes()).revision == 1
        await app.stop()

    run(main(), timeout=90)


def test_takeover_of_a_supervisor_under_load_has_zero_failures():
    async def main():
        app = await App().start()
        old = start_proxy("--workers", "2", upstreams=[app.addr])
        new = None
        loop = asyncio.get_running_loop()
        try:
            async def replace():
                nonlocal new
                new = await loop.run_in_executor(
                    None,
                    lambda: start_proxy("--workers", "2", admin_socket=old.admin_socket, workdir=old.workdir,
                                        takeover=True),
                )
                assert await loop.run_in_executor(None, old.proc.wait, 30) == 0

            res = await run_load(old.addr, replace, path="/sleep?s=0.005", after=1.0)
            assert res.failures == [], res.failures[:5]
            assert res.ok > 100
            s = await AdminClient(new.admin_socket).stats()
            assert s["workers"] == 2 and s["targets"][app.addr]["requests"] > 0
        finally:
            if new is not None:
                new.close(remove_workdir=False)
            old.close()
            await app.stop()

    run(main(), timeout=120)


def test_workers_serve_https_and_redirect_plain_http(tmp_path):
    """With --tls-listen, every worker serves the https socket the supervisor bound (and redirects to it)."""
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    os.chmod(key, 0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tls_port = s.getsockname()[1]
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)

    async def main():
        app = await App().start()
        with run_proxy("--workers", "2", "--tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert", str(cert),
                       "--tls-key", str(key), "--redirect-http") as p:
            admin = AdminClient(p.admin_socket)
            await admin.put_routes(_table(app.addr))
            for _ in range(40):
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", tls_port, ssl=ctx, server_hostname="localhost"), 5)
                w.write(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                answer = await asyncio.wait_for(r.read(), 5)
                w.close()
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            plain = await get(p.addr, "/pay")
            assert plain.status == 308 and plain.headers["location"] == f"https://test:{tls_port}/pay"  # get() sends Host: test
            s = await admin.stats()
            assert s["releases"]["v1"]["by_class"]["2xx"] >= 40
            per = []
            for name in sorted(os.listdir(p.workdir)):
                if name.startswith(".w") and name.endswith(".sock"):
                    ws = await AdminClient(os.path.join(p.workdir, name)).stats()
                    per.append(ws["targets"].get(app.addr, {}).get("requests", 0))
            assert len(per) == 2 and sum(per) >= 40, per
        await app.stop()

    run(main())
