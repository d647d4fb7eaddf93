"""The default router: nonstop's own proxy, driven through its admin socket.

The proxy runs as its own process in its own session, so it keeps serving
with its last route table if the agent dies; the agent re-adopts it by its
pid file and admin socket on restart, and starts a new one (which restores
``routes.json``) when it is gone.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import psutil

from nonstop.agent.routers.base import Router, RouterInfo, Routing, StatsSnapshot
from nonstop.config import Config
from nonstop.errors import ProxyError, RouterError
from nonstop.proxy.client import AdminClient


class EmbeddedRouter(Router):
    """Owns the embedded proxy process and talks to its admin API."""

    type = "embedded"
    capabilities = frozenset({"weights", "match", "sticky", "stats", "drain", "hold"})

    def __init__(self, cfg: Config, state_dir: Path) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self.socket = state_dir / "proxy.sock"
        self.pid_file = state_dir / "proxy.pid"
        self.routes_file = state_dir / "routes.json"
        self.log_file = state_dir / "logs" / "proxy.log"
        self.client = AdminClient(str(self.socket))

    # -- process ---------------------------------------------------------------
    def argv(self) -> list[str]:
        r = self.cfg.router
        host, port = self.cfg.listen_addr
        argv = [
            sys.executable, "-m", "nonstop.proxy",
            "--listen", f"{host}:{port}",
            "--admin-socket", str(self.socket),
            "--routes-file", str(self.routes_file),
            "--pid-file", str(self.pid_file),
            "--hold-timeout", str(self.cfg.hold_timeout),
            "--connect-timeout", str(r.connect_timeout),
            "--read-timeout", str(r.read_timeout),
            "--idle-timeout", str(r.idle_timeout),
            "--shutdown-timeout", str(self.cfg.drain_timeout),
        ]
        if r.max_body is not None:
            argv += ["--max-body", str(r.max_body)]
        for cidr in self.cfg.trusted_proxies:
            argv += ["--trusted-proxy", cidr]
        if r.workers > 1:
            argv += ["--workers", str(r.workers)]
        return argv

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None

    async def start(self) -> None:
        if await self.alive():
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the agent; a Ctrl-C in the agent's terminal never reaches it
                close_fds=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = _tail(self.log_file)
                raise RouterError(f"the proxy exited at start (code {proc.returncode}): {tail}")
            if await self.alive():
                return
            await asyncio.sleep(0.05)
        raise RouterError(f"the proxy did not answer on {self.socket} within 15s: {_tail(self.log_file)}")

    async def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            p = psutil.Process(pid)
            p.terminate()
        except psutil.Error:
            return
        deadline = time.monotonic() + self.cfg.drain_timeout + 5
        while time.monotonic() < deadline and p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(0.05)
        if p.is_running():
            try:
                p.kill()
            except psutil.Error:
                pass

    async def alive(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            await self.client.health()
            return True
        except ProxyError:
            return False

    # -- traffic -----------------------------------------------------------------
    async def apply(self, routing: Routing) -> None:
        try:
            await self.client.put_routes(routing.to_table())
        except ProxyError as e:
            raise RouterError(f"the proxy refused the new routes: {e.message}") from e

    async def drain(self, addrs: list[str], timeout: float) -> bool:
        if not addrs:
            return True
        try:
            res = await self.client.drain(addrs, timeout)
        except ProxyError as e:
            raise RouterError(f"drain failed: {e.message}") from e
        return bool(res.get("drained"))

    async def stats(self) -> StatsSnapshot:
        try:
            return await self.client.stats()
        except ProxyError as e:
            raise RouterError(f"cannot read proxy stats: {e.message}") from e

    async def metrics(self) -> str:
        try:
            return await self.client.metrics()
        except ProxyError as e:
            raise RouterError(f"cannot read proxy metrics: {e.message}") from e

    async def current(self) -> Routing | None:
        try:
            return Routing.from_table(await self.client.get_routes())
        except ProxyError as e:
            raise RouterError(f"cannot read proxy routes: {e.message}") from e

    def info(self) -> RouterInfo:
        return RouterInfo(type="embedded", mode="managed", detail={"pid": self.pid(), "socket": str(self.socket)})


def _tail(path: Path, n: int = 800) -> str:
    try:
        data = path.read_bytes()[-n:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()


__all__ = ["EmbeddedRouter"]
