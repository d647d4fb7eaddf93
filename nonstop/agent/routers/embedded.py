"""The default router: nonstop's own proxy, driven through its admin socket.

The proxy runs as its own process in its own session, so it keeps serving
with its last route table if the agent dies; the agent re-adopts it by its
pid file and admin socket on restart, and starts a new one (which restores
``routes.json``) when it is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from nonstop import __version__
from nonstop.agent.logfiles import tail
from nonstop.agent.routers.base import Router, RouterInfo, RouteTable, StatsSnapshot
from nonstop.agent.sockets import ListeningSockets
from nonstop.config import Config
from nonstop.errors import ProxyError, RouterError
from nonstop.proxy.client import AdminClient
from nonstop.proxy.config import ProxyConfig
from nonstop.proxy.handoff import ENV_FDS


log = logging.getLogger("nonstop.agent")


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
        self.sockets: ListeningSockets | None = None
        self.acme_pair: tuple[str, str] | None = None  # (cert, key) issued by ACME, once there is one
        self._proc: subprocess.Popen | None = None
        self.proxy_version: str | None = None  # what the running proxy said at its last health check

    # -- process ---------------------------------------------------------------
    def proxy_config(self) -> ProxyConfig:
        """The proxy's settings from ``nonstop.yml`` (each proxy setting is declared once, in ProxyConfig)."""
        cfg = self.cfg
        r = cfg.router
        host, port = cfg.listen_addr
        pc = ProxyConfig(
            listen=f"{host}:{port}",
            admin_socket=str(self.socket),
            routes_file=str(self.routes_file),
            pid_file=str(self.pid_file),
            hold_timeout=cfg.hold_timeout,
            connect_timeout=r.connect_timeout,
            read_timeout=r.read_timeout,
            idle_timeout=r.idle_timeout,
            shutdown_timeout=cfg.drain_timeout,
            max_body=r.max_body,
            workers=r.workers,
            trusted_proxies=list(cfg.trusted_proxies),
        )
        t = cfg.tls
        if t is not None:
            pairs = ([("tls", t.cert, t.key)] if t.cert else []) + [
                (f"tls.certificates[{i}]", c.cert, c.key) for i, c in enumerate(t.certificates)
            ]
            if t.acme is not None:
                pc.acme_challenges = str(self.state_dir / "tls" / "challenges")
                if self.acme_pair is not None:
                    pairs.append(("tls.acme", *self.acme_pair))
            pc.tls_listen = t.listen
            pc.tls_fields = [f for f, _, _ in pairs]
            pc.tls_certs = [str(cfg.path(c)) for _, c, _ in pairs]
            pc.tls_keys = [str(cfg.path(k)) for _, _, k in pairs]
            pc.redirect_http = t.redirect_http
            pc.hsts = t.hsts
        return pc

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "nonstop.proxy", *self.proxy_config().to_argv()]

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None

    async def start(self) -> None:
        alive = await self.alive()
        if alive and self.proxy_version != __version__:
            # a proxy of another nonstop version (the package was upgraded): a new one takes its sockets
            # and table over and retires it, with no request lost (DESIGN §3, upgrading without a gap)
            await self.upgrade()
        if self.sockets is None:
            # the agent's own copies, held for its whole life: a proxy that dies loses no queued connection
            self.sockets = ListeningSockets.obtain(self.cfg, self.socket, alive)
        if alive:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        value, fds = self.sockets.env()
        env = {**os.environ, ENV_FDS: value}
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the agent; a Ctrl-C in the agent's terminal never reaches it
                close_fds=True,
                pass_fds=fds,
                env=env,
            )
        self._proc = proc
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RouterError(f"the proxy exited at start (code {proc.returncode}): {tail(self.log_file, 12)}")
            if await self.alive():
                return
            await asyncio.sleep(0.05)
        raise RouterError(f"the proxy did not answer on {self.socket} within 15s: {tail(self.log_file, 12)}")

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

    async def upgrade(self) -> None:
        """Replace the running proxy by one of this version: ``--takeover`` (its listening sockets and route
        table handed over on its admin socket), then it drains and exits."""
        old_pid, old_version = self.pid(), self.proxy_version or "an older version"
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(
                [*self.argv(), "--takeover"], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        self._proc = proc
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RouterError(f"the new proxy exited during the takeover (code {proc.returncode}): {tail(self.log_file, 12)}")
            if await self.alive() and self.proxy_version == __version__:
                log.info("proxy upgraded from %s (pid %s) to %s (pid %s)", old_version, old_pid, __version__, proc.pid)
                return
            await asyncio.sleep(0.05)
        raise RouterError(f"the new proxy did not take over within 30s: {tail(self.log_file, 12)}")

    def quickly_dead(self) -> bool:
        """True when the proxy process is known to be gone (no admin call: checked often)."""
        if self._proc is not None and self._proc.pid == self.pid_from_file():
            return self._proc.poll() is not None  # our child: reaped here
        pid = self.pid_from_file()
        if pid is None:
            return False  # not started yet, or starting: leave it to alive()
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def pid_from_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    async def alive(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            h = await self.client.health()
        except ProxyError:
            return False
        self.proxy_version = h.get("version")  # None: a proxy from before versions were told
        return True

    # -- traffic -----------------------------------------------------------------
    async def apply(self, table: RouteTable) -> None:
        try:
            await self.client.put_routes(table)
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

    async def current(self) -> RouteTable | None:
        try:
            return await self.client.get_routes()
        except ProxyError as e:
            raise RouterError(f"cannot read proxy routes: {e.message}") from e

    def info(self) -> RouterInfo:
        return RouterInfo(type="embedded", mode="managed", detail={
            "pid": self.pid(), "socket": str(self.socket), "version": self.proxy_version,
        })


__all__ = ["EmbeddedRouter"]
