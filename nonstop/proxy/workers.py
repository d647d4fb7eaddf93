"""``--workers N``: a supervisor process running N proxy workers on one listening socket.

The supervisor owns what must be one: the listening socket (each worker
inherits the same kernel socket through ``NONSTOP_LISTEN_FDS``, so they share
one accept queue), the public admin socket, the route table and
``routes.json``. Each worker is an ordinary proxy process with a private
admin socket; the supervisor fans ``PUT /routes`` and ``POST /drain`` out to
all of them and adds up their counters, so the public admin API reports
totals. A worker that dies is restarted with the live table. Takeover and
SIGHUP work as for one process: the socket handed over is the shared one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from nonstop.errors import ProxyError
from nonstop.proxy import handoff, stats
from nonstop.proxy.admin import AdminAPI, _error, parse_drain, report
from nonstop.proxy.client import AdminClient
from nonstop.proxy.config import ProxyConfig
from nonstop.proxy.routes import RouteTable
from nonstop.proxy.server import (
    _remove_if, _write_atomic, bind_admin, obtain_socket_and_table, release_admin_path, retire, save_routes,
    send_listening,
)
from nonstop.proxy.state import ProxyState

log = logging.getLogger("nonstop.proxy")


class Worker:
    """One worker process: its Popen and private admin socket."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process, admin_socket: str) -> None:
        self.index = index
        self.proc = proc
        self.admin_socket = admin_socket
        self.client = AdminClient(admin_socket)


class Supervisor:
    """Starts, feeds and stops the workers; answers the admin API for all of them."""

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.state = ProxyState()  # holds the table only; traffic is the workers'
        self.workers: list[Worker] = []
        self.closing = False
        self.listen_addr = ""
        self._sock: socket.socket | None = None
        self._admin = None
        self._admin_ino: int | None = None
        self._stop = asyncio.Event()
        # workers' private admin sockets live beside the public one, or in a directory of our own
        self._own_dir = None if cfg.admin_socket else tempfile.mkdtemp(prefix="nsp-w-", dir="/tmp")
        self._dir = os.path.dirname(os.path.abspath(cfg.admin_socket)) if cfg.admin_socket else self._own_dir
        self._monitors: list[asyncio.Task] = []

    async def start(self) -> None:
        cfg = self.cfg
        sock, old_pid, table = obtain_socket_and_table(cfg)
        self._sock = sock
        self.listen_addr = handoff.address(sock)
        if table is not None and table.releases:
            self.state.apply(table.with_revision(max(table.revision, 1)))
        for i in range(cfg.workers):
            self.workers.append(await self._spawn(i))
        if cfg.admin_socket:
            self._admin, self._admin_ino = await bind_admin(cfg.admin_socket, SupervisorAPI(self).handle)
        if cfg.pid_file:
            _write_atomic(cfg.pid_file, f"{os.getpid()}\n")
        retire(old_pid)
        log.info("supervisor ready listen=%s workers=%d pid=%d", self.listen_addr, len(self.workers), os.getpid())

    def _worker_args(self, admin_socket: str) -> list[str]:
        c = self.cfg
        args = [
            "--worker", "--listen", self.listen_addr, "--admin-socket", admin_socket,
            "--hold-timeout", str(c.hold_timeout), "--connect-timeout", str(c.connect_timeout),
            "--read-timeout", str(c.read_timeout), "--idle-timeout", str(c.idle_timeout),
            "--header-timeout", str(c.header_timeout), "--max-header-bytes", str(c.max_header_bytes),
            "--shutdown-timeout", str(c.shutdown_timeout), "--idle-grace", str(c.idle_grace),
        ]
        for cidr in c.trusted_proxies:
            args += ["--trusted-proxy", cidr]
        if c.max_body is not None:
            args += ["--max-body", str(c.max_body)]
        return args

    async def _spawn(self, index: int) -> Worker:
        fd = self._sock.fileno()
        path = os.path.join(self._dir, f".w{index}-{os.getpid()}.sock")
        env = dict(os.environ)
        env[handoff.ENV_FDS] = str(fd)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nonstop.proxy", *self._worker_args(path),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(fd,), env=env,
        )
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
        except asyncio.TimeoutError:
            line = b""
        if not line.startswith(b"ready "):
            proc.kill()
            await proc.wait()
            raise ProxyError(f"worker {index} did not start: {line!r}")
        w = Worker(index, proc, path)
        if self.state.table.releases:
            await w.client.put_routes(self.state.table)
        self._monitors.append(asyncio.ensure_future(self._watch(w)))
        return w

    async def _watch(self, w: Worker) -> None:
        code = await w.proc.wait()
        if self.closing:
            return
        log.error("worker %d (pid %d) exited with %s: restarting", w.index, w.proc.pid, code)
        await asyncio.sleep(0.5)  # no restart storm
        if self.closing:
            return
        try:
            self.workers[w.index] = await self._spawn(w.index)
        except ProxyError as e:
            log.error("%s", e.message)

    def save_routes(self, table: RouteTable) -> None:
        save_routes(self.cfg, table)

    def hand_over(self, writer) -> None:
        send_listening(writer, self._sock, self.state, self.listen_addr)

    def request_stop(self) -> None:
        self._stop.set()

    def respawn(self) -> None:
        if not self.cfg.admin_socket:
            log.error("SIGHUP ignored: takeover needs --admin-socket")
            return
        argv = [a for a in sys.argv[1:] if a != "--takeover"]
        subprocess.Popen([sys.executable, "-m", "nonstop.proxy", *argv, "--takeover"], start_new_session=True,
                         stdin=subprocess.DEVNULL)

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """SIGTERM every worker (each drains on its own), wait, then close."""
        self.closing = True
        for w in self.workers:
            if w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.proc.wait() for w in self.workers)), self.cfg.shutdown_timeout + 5
            )
        except asyncio.TimeoutError:
            for w in self.workers:
                if w.proc.returncode is None:
                    w.proc.kill()
            await asyncio.gather(*(w.proc.wait() for w in self.workers))
        for t in self._monitors:
            t.cancel()
        for w in self.workers:
            try:
                os.unlink(w.admin_socket)
            except FileNotFoundError:
                pass
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
        if self._admin is not None:
            self._admin.close()
        release_admin_path(self.cfg.admin_socket, self._admin_ino)
        if self._sock is not None:
            self._sock.close()
        if self.cfg.pid_file:
            _remove_if(self.cfg.pid_file, f"{os.getpid()}\n")
        log.info("supervisor stopped")


class SupervisorAPI(AdminAPI):
    """The public admin API of a supervisor: same endpoints, answered for all workers together."""

    async def health(self) -> dict:
        out = await super().health()
        out["workers"] = [w.proc.pid for w in self.server.workers]
        return out

    async def put_routes(self, body: bytes) -> dict:
        table = self.check_routes(body)
        self.commit(table)
        results = await asyncio.gather(
            *(w.client.put_routes(table) for w in self.server.workers), return_exceptions=True
        )
        failed = [str(r) for r in results if isinstance(r, Exception)]
        if failed:
            raise _error(500, f"a worker refused the table: {failed[0]}")
        log.info("routes applied revision=%d workers=%d", table.revision, len(results))
        return {"revision": table.revision}

    async def drain(self, req) -> dict:
        addrs, timeout, up_t = parse_drain(req)
        results = await asyncio.gather(*(w.client.drain(addrs, timeout, up_t) for w in self.server.workers))
        in_flight = {a: sum(r["in_flight"].get(a, 0) for r in results) for a in addrs}
        return {"drained": all(r["drained"] for r in results), "in_flight": in_flight}

    async def _worker_stats(self) -> list[dict]:
        return await asyncio.gather(*(w.client._call("GET", "/stats?pairs=1") for w in self.server.workers))

    async def pairs(self) -> list[tuple[str, str, stats.Counters]]:
        merged: dict[tuple[str, str], stats.Counters] = {}
        for s in await self._worker_stats():
            for rel, addr, d in s["pairs"]:
                merged.setdefault((rel, addr), stats.Counters()).add(stats.from_dict(d))
        return [(r, a, c) for (r, a), c in merged.items()]

    async def stats(self, pairs: bool = False) -> dict:
        per_worker = await self._worker_stats()
        merged: dict[tuple[str, str], stats.Counters] = {}
        in_flight: dict[str, int] = {}
        unrouted = stats.Counters()
        rejected = 0
        for s in per_worker:
            for rel, addr, d in s["pairs"]:
                merged.setdefault((rel, addr), stats.Counters()).add(stats.from_dict(d))
            for addr, t in s["targets"].items():
                in_flight[addr] = in_flight.get(addr, 0) + t["in_flight"]
            unrouted.add(stats.from_dict(s["unrouted"]))
            rejected += s["rejected"]
        triples = [(r, a, c) for (r, a), c in merged.items()]
        out = report(triples, in_flight, unrouted, rejected)
        out.update(revision=self.server.state.table.revision, started_at=self.server.state.started_at,
                   workers=len(per_worker))
        if pairs:
            out["pairs"] = [[r, a, stats.to_dict(c)] for r, a, c in triples]
        return out
