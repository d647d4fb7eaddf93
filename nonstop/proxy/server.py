"""One proxy process's lifecycle: listening and admin sockets, the clock tick, takeover, graceful stop.

Stop order (uvicorn's): stop accepting → responses in progress get
``Connection: close`` and idle keep-alive connections get ``idle_grace`` to
send one last request → wait for connections to finish until the deadline →
abort the rest.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import subprocess
import sys

from nonstop.errors import ProxyError
from nonstop.proxy import build, handoff
from nonstop.proxy import routes as routes_mod
from nonstop.proxy.admin import AdminAPI
from nonstop.proxy.config import ProxyConfig
from nonstop.proxy.downstream import ClientConnection
from nonstop.proxy.forwarded import TrustedProxies
from nonstop.proxy.routes import RouteTable
from nonstop.proxy.state import ProxyState
from nonstop.unixsock import reachable

log = logging.getLogger("nonstop.proxy")


class ProxyServer:
    """The running proxy: owns the state, the client connections, the sockets and the stop sequence."""

    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.state = ProxyState(cfg.pool_max_idle)
        self.trusted = TrustedProxies(cfg.trusted_proxies) if cfg.trusted_proxies else None
        self.connections: set[ClientConnection] = set()
        self.listen_addr = ""
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._admin: asyncio.AbstractServer | None = None
        self._admin_ino: int | None = None
        self._tick_task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._handed_over = False

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        """Get the listening socket and the table, serve, bind the admin socket, then retire a predecessor."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self.state.now = loop.time()
        sock, old_pid, table = obtain_socket_and_table(cfg)
        self._sock = sock
        self.listen_addr = handoff.address(sock)
        if table is not None and table.releases:
            self.state.apply(table.with_revision(max(table.revision, 1)))
        self._server = await loop.create_server(
            lambda: ClientConnection(self), sock=sock, backlog=cfg.backlog
        )
        self._tick_task = asyncio.ensure_future(self._tick())
        if cfg.admin_socket:
            self._admin, self._admin_ino = await bind_admin(cfg.admin_socket, AdminAPI(self).handle)
        if cfg.worker:
            # a worker of a supervisor (--workers N): its stdin closes when the supervisor goes
            loop.add_reader(0, self._check_parent)
        if cfg.pid_file:
            _write_atomic(cfg.pid_file, f"{os.getpid()}\n")
        retire(old_pid)
        log.info("proxy ready listen=%s revision=%d pid=%d hot path: %s", self.listen_addr, self.state.table.revision,
                 os.getpid(), build.summary())

    def _check_parent(self) -> None:
        try:
            gone = not os.read(0, 4096)
        except OSError:
            gone = True
        if gone:
            asyncio.get_running_loop().remove_reader(0)
            log.info("supervisor gone: stopping")
            self.request_stop()

    def save_routes(self, table: RouteTable) -> None:
        save_routes(self.cfg, table)

    def hand_over(self, writer) -> None:
        """Answer ``POST /takeover``: send our listening socket and live table to the new process."""
        send_listening(writer, self._sock, self.state, self.listen_addr)
        self._handed_over = True

    # -- time ----------------------------------------------------------------

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        n = 0
        while True:
            await asyncio.sleep(cfg.tick)
            now = self.state.now = loop.time()
            for c in [c for c in self.connections if c.deadline and now >= c.deadline]:
                try:
                    c.on_deadline(now)
                except Exception:
                    log.exception("timeout handling failed")
                    c.abort()
            n += 1
            if n % 5 == 0:
                for t in self.state.targets.values():
                    t.pool.expire(now, cfg.pool_idle_timeout)
                self.state.forget_unlisted()

    # -- stop ----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def respawn(self) -> None:
        """SIGHUP: start a new process of the same command with ``--takeover``; it retires us when ready."""
        if not self.cfg.admin_socket:
            log.error("SIGHUP ignored: takeover needs --admin-socket")
            return
        argv = [a for a in sys.argv[1:] if a != "--takeover"]
        cmd = [sys.executable, "-m", "nonstop.proxy", *argv, "--takeover"]
        subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL)
        log.info("SIGHUP: started a successor")

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Stop accepting, let connections finish within ``shutdown_timeout``, close everything."""
        loop = asyncio.get_running_loop()
        self.state.closing = True
        self.state.now = loop.time()
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            c.stop_when_idle()
        deadline = loop.time() + self.cfg.shutdown_timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        left = len(self.connections)
        for c in list(self.connections):
            c.abort()
        if self._tick_task is not None:
            self._tick_task.cancel()
        for t in self.state.targets.values():
            t.pool.close_all()
        if self._admin is not None:
            self._admin.close()
        release_admin_path(self.cfg.admin_socket, self._admin_ino)
        if self._sock is not None:
            self._sock.close()
        if self.cfg.pid_file:
            _remove_if(self.cfg.pid_file, f"{os.getpid()}\n")
        await asyncio.sleep(0)
        log.info("proxy stopped connections_aborted=%d", left)

def obtain_socket_and_table(cfg: ProxyConfig) -> tuple[socket.socket, int | None, RouteTable | None]:
    """The listening socket (taken over, inherited, or bound), a predecessor's pid, and the starting table."""
    old_pid = None
    table: RouteTable | None = None
    if cfg.takeover:
        if not cfg.admin_socket:
            raise ProxyError("--takeover needs --admin-socket (the running proxy's)")
        sock, answer = handoff.receive(cfg.admin_socket)
        old_pid = answer.get("pid")
        table = RouteTable.from_dict(answer.get("table") or {})
    else:
        sock = handoff.from_env() or handoff.bind(cfg.listen, cfg.backlog)
    if cfg.upstreams:
        table = RouteTable.static(cfg.upstreams)
    elif table is None and cfg.routes_file:
        table = routes_mod.load(cfg.routes_file)
    return sock, old_pid, table


def save_routes(cfg: ProxyConfig, table: RouteTable) -> None:
    """Persist ``table`` to ``--routes-file`` (atomic), when there is one."""
    if cfg.routes_file:
        routes_mod.save(table, cfg.routes_file)


def send_listening(writer, sock, state: ProxyState, listen_addr) -> None:
    """Hand the listening ``sock`` and the live table to the process that asked on ``writer`` (takeover)."""
    handoff.send(
        writer.get_extra_info("socket").fileno(),
        sock.fileno(),
        {"pid": os.getpid(), "table": state.table.to_dict(), "listen": listen_addr},
    )
    log.info("listening socket handed over")


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


def retire(old_pid) -> None:
    """Tell the process we took the socket from to stop accepting and drain."""
    if old_pid:
        try:
            os.kill(int(old_pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def release_admin_path(path: str | None, ino: int | None) -> None:
    """Unlink our admin socket unless a successor has already renamed its own over it."""
    if not path or ino is None:
        return
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _remove_if(path: str, text: str) -> None:
    try:
        with open(path) as f:
            if f.read() == text:
                os.unlink(path)
    except FileNotFoundError:
        pass


async def serve(cfg: ProxyConfig, ready=None) -> None:
    """Run a proxy (or, with ``workers > 1``, a supervisor of workers) until SIGTERM/SIGINT, then stop gracefully.

    ``ready(server)`` is called once serving.
    """
    if cfg.workers > 1:
        from nonstop.proxy.workers import Supervisor

        server = Supervisor(cfg)
    else:
        server = ProxyServer(cfg)
    await server.start()
    # Requests allocate a few short-lived containers each; the default gen-0
    # threshold (700) makes the cyclic GC run every few dozen requests. Objects
    # that live as long as the process are frozen out of its scans.
    gc.freeze()
    gc.set_threshold(20000, 50, 100)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.request_stop)
    loop.add_signal_handler(signal.SIGINT, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, server.respawn)
    if ready is not None:
        ready(server)
    await server.wait_stopped()
    await server.stop()


def run(cfg: ProxyConfig, ready=None) -> None:
    """Blocking entry point: uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(serve(cfg, ready))
        return
    uvloop.run(serve(cfg, ready))
