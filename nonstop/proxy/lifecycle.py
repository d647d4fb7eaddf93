"""One proxy process's lifecycle, whatever serves inside it: sockets, admin, pid file, predecessor, successor, stop.

``ProxyProcess`` is what a single proxy (``server.ProxyServer``) and a workers
supervisor (``workers.Supervisor``) share; each adds how it serves (``serve``,
``shutdown``) and its admin API (``api``). Start order: obtain the listening
sockets (taken over, inherited, or bound) and the starting route table →
serve → admin socket → pid file → retire the predecessor. Stop order
(uvicorn's): stop accepting → let what is in flight finish within
``shutdown_timeout`` → close everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys

from nonstop.errors import ProxyError
from nonstop.files import write_atomic
from nonstop.proxy import handoff
from nonstop.proxy import routes as routes_mod
from nonstop.proxy.config import ProxyConfig
from nonstop.proxy.routes import RouteTable
from nonstop.proxy.state import ProxyState
from nonstop.unixsock import reachable

log = logging.getLogger("nonstop.proxy")

__all__ = ["ProxyProcess", "obtain", "bind_admin"]


def obtain(cfg: ProxyConfig) -> tuple[dict[str, socket.socket], int | None, RouteTable | None]:
    """The listening sockets by name, a predecessor's pid (takeover), and the table to start with."""
    old_pid = None
    table: RouteTable | None = None
    if cfg.takeover:
        if not cfg.admin_socket:
            raise ProxyError("--takeover needs --admin-socket (the running proxy's)")
        socks, answer = handoff.receive(cfg.admin_socket, "/takeover")
        old_pid = answer.get("pid")
        table = RouteTable.from_dict(answer.get("table") or {})
    else:
        socks = handoff.inherited()
    if "http" not in socks:
        socks["http"] = handoff.bind(cfg.listen, cfg.backlog)
    if cfg.tls_listen and "https" not in socks:
        socks["https"] = handoff.bind(cfg.tls_listen, cfg.backlog)
    if not cfg.tls_listen and "https" in socks:
        socks.pop("https").close()  # the predecessor served HTTPS; this one is told not to
    if cfg.upstreams:
        table = RouteTable.static(cfg.upstreams)
    elif table is None and cfg.routes_file:
        table = routes_mod.load(cfg.routes_file)
    return socks, old_pid, table


async def bind_admin(path: str, handler) -> tuple[asyncio.AbstractServer, int]:
    """Serve ``handler`` on a Unix socket at ``path`` (0600); returns the server and the socket's inode."""
    # bind under a temporary name, restrict, then rename over the public
    # path: clients never see a missing or world-accessible socket
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with reachable(tmp) as where:
        s.bind(where)
    os.chmod(tmp, 0o600)
    s.listen(64)
    s.setblocking(False)
    server = await asyncio.start_unix_server(handler, sock=s)
    os.replace(tmp, path)
    return server, os.stat(path).st_ino


class ProxyProcess:
    """Owns what every proxy process has: its listening sockets, the route table state, the admin socket,
    the pid file, and the stop event."""

    def __init__(self, cfg: ProxyConfig, state: ProxyState) -> None:
        self.cfg = cfg
        self.state = state
        self.sockets: dict[str, socket.socket] = {}
        self.listen_addr = ""
        self._admin: asyncio.AbstractServer | None = None
        self._admin_ino: int | None = None
        self._stop = asyncio.Event()
        self._handed_over = False

    # -- what a subclass provides --------------------------------------------------
    async def serve(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def shutdown(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def api(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- start -------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        self.state.now = asyncio.get_running_loop().time()
        socks, old_pid, table = obtain(cfg)
        self.sockets = socks
        self.listen_addr = handoff.address(socks["http"])
        if table is not None and table.releases:
            self.state.apply(table.with_revision(max(table.revision, 1)))
        try:
            await self.serve()
        except BaseException:
            for s in socks.values():
                s.close()
            raise
        if cfg.admin_socket:
            self._admin, self._admin_ino = await bind_admin(cfg.admin_socket, self.api().handle)
        if cfg.pid_file:
            write_atomic(cfg.pid_file, f"{os.getpid()}\n")
        _retire(old_pid)

    @property
    def tls_addr(self) -> str | None:
        s = self.sockets.get("https")
        return handoff.address(s) if s is not None else None

    # -- handing sockets on --------------------------------------------------------------
    def hand_over(self, writer) -> None:
        """``POST /takeover``: our listening sockets and live table to the new process (which retires us)."""
        self._send_sockets(writer)
        self._handed_over = True
        log.info("listening sockets handed over")

    def share(self, writer) -> None:
        """``POST /share``: copies of our listening sockets (the agent keeps them, so a crash loses no connection)."""
        self._send_sockets(writer)

    def _send_sockets(self, writer) -> None:
        handoff.send(
            writer.get_extra_info("socket").fileno(),
            self.sockets,
            {"pid": os.getpid(), "table": self.state.table.to_dict(), "listen": self.listen_addr, "tls_listen": self.tls_addr},
        )

    def save_routes(self, table: RouteTable) -> None:
        """Persist ``table`` to ``--routes-file`` (atomic), when there is one."""
        if self.cfg.routes_file:
            routes_mod.save(table, self.cfg.routes_file)

    # -- stop ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    def respawn(self) -> None:
        """SIGHUP: start a new process of the same command with ``--takeover``; it retires us when ready."""
        if not self.cfg.admin_socket:
            log.error("SIGHUP ignored: takeover needs --admin-socket")
            return
        argv = [a for a in sys.argv[1:] if a != "--takeover"]
        subprocess.Popen([sys.executable, "-m", "nonstop.proxy", *argv, "--takeover"], start_new_session=True,
                         stdin=subprocess.DEVNULL)
        log.info("SIGHUP: started a successor")

    async def stop(self) -> None:
        self.state.closing = True
        await self.shutdown()
        if self._admin is not None:
            self._admin.close()
        _release_admin_path(self.cfg.admin_socket, self._admin_ino)
        for s in self.sockets.values():
            s.close()
        if self.cfg.pid_file:
            _remove_if(self.cfg.pid_file, f"{os.getpid()}\n")


def _retire(old_pid) -> None:
    """Tell the process we took the sockets from to stop accepting and drain."""
    if old_pid:
        try:
            os.kill(int(old_pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def _release_admin_path(path: str | None, ino: int | None) -> None:
    """Unlink our admin socket unless a successor has already renamed its own over it."""
    if not path or ino is None:
        return
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_if(path: str, text: str) -> None:
    try:
        with open(path) as f:
            if f.read() == text:
                os.unlink(path)
    except FileNotFoundError:
        pass
