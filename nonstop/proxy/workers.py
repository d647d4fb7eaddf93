"""``--workers N``: a supervisor process running N proxy workers on one set of listening sockets.

The supervisor owns what must be one: the listening sockets (each worker
inherits the same kernel sockets through ``NONSTOP_LISTEN_FDS``, so they share
the accept queues), the public admin socket, the route table and
``routes.json``. Each worker is an ordinary proxy process with a private
admin socket; the supervisor fans ``PUT /routes`` and ``POST /drain`` out to
all of them and adds up their counters, so the public admin API reports
totals. A worker that dies is restarted with the live table. Takeover and
SIGHUP work as for one process (``lifecycle.ProxyProcess``): the sockets
handed over are the shared ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from nonstop.errors import ProxyError
from nonstop.proxy import handoff, stats
from nonstop.proxy.admin import AdminAPI, _error, parse_drain, report
from nonstop.proxy.client import AdminClient
from nonstop.proxy.config import ProxyConfig
from nonstop.proxy.lifecycle import ProxyProcess
from nonstop.proxy.state import ProxyState

log = logging.getLogger("nonstop.proxy")

# what a worker does not take from the supervisor's settings: its own sockets and files come from it
# A worker gets its listening sockets from the supervisor (by name: http, https), not addresses to bind;
# tls_listen still goes to it: it says an https socket is to be served (and where a redirect points).
_NOT_FOR_WORKERS = ("listen", "upstreams", "admin_socket", "routes_file", "pid_file", "takeover", "workers")


class Worker:
    """One worker process: its Popen and private admin socket."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process, admin_socket: str) -> None:
        self.index = index
        self.proc = proc
        self.admin_socket = admin_socket
        self.client = AdminClient(admin_socket)


class Supervisor(ProxyProcess):
    """Starts, feeds and stops the workers; answers the admin API for all of them."""

    def __init__(self, cfg: ProxyConfig) -> None:
        super().__init__(cfg, ProxyState())  # the state holds the table only; traffic is the workers'
        self.workers: list[Worker] = []
        self.closing = False
        # workers' private admin sockets live beside the public one, or in a directory of our own
        self._own_dir = None if cfg.admin_socket else tempfile.mkdtemp(prefix="nsp-w-", dir="/tmp")
        self._dir = os.path.dirname(os.path.abspath(cfg.admin_socket)) if cfg.admin_socket else self._own_dir
        self._monitors: list[asyncio.Task] = []

    def api(self) -> AdminAPI:
        return SupervisorAPI(self)

    async def serve(self) -> None:
        for i in range(self.cfg.workers):
            self.workers.append(await self._spawn(i))

    async def start(self) -> None:
        await super().start()
        log.info("supervisor ready listen=%s workers=%d pid=%d", self.listen_addr, len(self.workers), os.getpid())

    def _worker_args(self, admin_socket: str) -> list[str]:
        return ["--worker", "--admin-socket", admin_socket, *self.cfg.to_argv(skip=_NOT_FOR_WORKERS)]

    async def _spawn(self, index: int) -> Worker:
        value, fds = handoff.env_value(self.sockets)
        path = os.path.join(self._dir, f".w{index}-{os.getpid()}.sock")
        env = dict(os.environ)
        env[handoff.ENV_FDS] = value
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nonstop.proxy", *self._worker_args(path),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds, env=env,
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

    async def shutdown(self) -> None:
        """SIGTERM every worker (each drains on its own), wait."""
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
        log.info("supervisor stopped")


class SupervisorAPI(AdminAPI):
    """The public admin API of a supervisor: same endpoints, answered for all workers together."""

    async def health(self) -> dict:
        out = await super().health()
        out["workers"] = [w.proc.pid for w in self.server.workers]
        return out

    async def put_tls(self, req) -> dict:
        results = await asyncio.gather(*(w.client._call("PUT", "/tls", json=req) for w in self.server.workers),
                                       return_exceptions=True)
        failed = [str(r) for r in results if isinstance(r, Exception)]
        if failed:
            raise _error(400, f"a worker refused the certificates: {failed[0]}")
        return results[0] if results else {"certificates": 0}

    def get_tls(self) -> dict:
        return {"certificates": [], "workers": len(self.server.workers)}

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
