"""A proxy process that serves: its listeners (plain and HTTPS), client connections, the clock tick, a graceful stop.

The process lifecycle around it (sockets, admin, pid, takeover, stop order) is
``lifecycle.ProxyProcess``'s. Stop: stop accepting → responses in progress get
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
import time

from nonstop.proxy import build
from nonstop.proxy.admin import AdminAPI
from nonstop.proxy.config import ProxyConfig
from nonstop.proxy.downstream import ClientConnection
from nonstop.proxy.forwarded import TrustedProxies
from nonstop.proxy.https import hsts_line
from nonstop.proxy.lifecycle import ProxyProcess
from nonstop.proxy.state import ProxyState

log = logging.getLogger("nonstop.proxy")

__all__ = ["ProxyServer", "serve", "run"]

TLS_CHECK_TICKS = 5  # certificate files are looked at every this many ticks (0.5 s)


class Listener:
    """What a client connection needs to know about the listener it came in on."""

    __slots__ = ("scheme", "tls", "front", "resp_extra")

    def __init__(self, scheme: bytes, *, front: bool, resp_extra: bytes = b"") -> None:
        self.scheme = scheme
        self.tls = scheme == b"https"
        self.front = front  # ACME challenges / the HTTPS redirect answered before routing
        self.resp_extra = resp_extra  # added to every response (HSTS on HTTPS)


class ProxyServer(ProxyProcess):
    """The serving proxy: owns the state, the client connections, the TLS certificates and the tick."""

    def __init__(self, cfg: ProxyConfig) -> None:
        super().__init__(cfg, ProxyState(cfg.pool_max_idle))
        self.trusted = TrustedProxies(cfg.trusted_proxies) if cfg.trusted_proxies else None
        self.connections: set[ClientConnection] = set()
        self.tls = None  # tls.TlsContexts once serving HTTPS
        self._servers: list[asyncio.AbstractServer] = []
        self._tick_task: asyncio.Task | None = None

    def api(self) -> AdminAPI:
        return AdminAPI(self)

    async def serve(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        https = self.sockets.get("https")
        plain = Listener(b"http", front=bool(cfg.acme_challenges or (cfg.redirect_http and https is not None)))
        if https is not None:
            from nonstop.proxy.certs import CertSource
            from nonstop.proxy.tls import TlsContexts

            # a certificate that does not load stops the start here: never a half-started proxy
            self.tls = TlsContexts([CertSource(c.field, c.cert, c.key) for c in cfg.certificates()], time.time())
            secure = Listener(b"https", front=bool(cfg.acme_challenges), resp_extra=hsts_line(cfg.hsts))
            self._servers.append(await loop.create_server(
                lambda: ClientConnection(self, secure), sock=https, backlog=cfg.backlog, ssl=self.tls.base,
                ssl_handshake_timeout=cfg.header_timeout,
            ))
        self._servers.append(await loop.create_server(
            lambda: ClientConnection(self, plain), sock=self.sockets["http"], backlog=cfg.backlog
        ))
        self._tick_task = asyncio.ensure_future(self._tick())
        if cfg.worker:
            # a worker of a supervisor (--workers N): its stdin closes when the supervisor goes
            loop.add_reader(0, self._check_parent)

    async def start(self) -> None:
        await super().start()
        log.info("proxy ready listen=%s%s revision=%d pid=%d hot path: %s", self.listen_addr,
                 f" tls_listen={self.tls_addr}" if self.tls_addr else "", self.state.table.revision, os.getpid(),
                 build.summary())

    def _check_parent(self) -> None:
        try:
            gone = not os.read(0, 4096)
        except OSError:
            gone = True
        if gone:
            asyncio.get_running_loop().remove_reader(0)
            log.info("supervisor gone: stopping")
            self.request_stop()

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
            if self.tls is not None and n % TLS_CHECK_TICKS == 0:
                for ev in self.tls.reload_if_changed(time.time()):
                    log.info("%s", ev.message())

    def replace_certificates(self, sources) -> None:
        """New certificate files (the agent, when ACME issued the first one): new handshakes get them."""
        if self.tls is None:
            from nonstop.errors import ProxyError

            raise ProxyError("this proxy serves no HTTPS (no --tls-listen)")
        self.tls.replace(sources, time.time())

    # -- stop ----------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop accepting, let connections finish within ``shutdown_timeout``, close everything."""
        loop = asyncio.get_running_loop()
        self.state.now = loop.time()
        for srv in self._servers:
            srv.close()
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
        await asyncio.sleep(0)
        log.info("proxy stopped connections_aborted=%d", left)


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
