"""One connection from the proxy to a target: parses responses and hands them to the exchange it serves.

An ``UpstreamConnection`` is either idle (in its target's pool), bound to
one exchange, or a tunnel after a 101. It never decides anything about the
client side; it reports to the bound exchange.
"""

from __future__ import annotations

import asyncio
import logging
import select

import httptools

log = logging.getLogger("nonstop.proxy")

_POLL_FLAGS = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)
# A pooled connection idle for longer than this is polled before reuse, to see
# an upstream close that the event loop has not delivered yet.
_POLL_AFTER_IDLE = 0.5


class UpstreamConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection to one target."""

    __slots__ = (
        "target", "transport", "parser", "exchange", "idle_since", "closed", "got_bytes", "uses",
        "status", "reason", "headers", "tunnel", "_poll", "_fd", "read_paused",
    )

    def __init__(self, target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange = None
        self.idle_since = 0.0
        self.closed = False
        self.got_bytes = False  # any byte of the current response
        self.uses = 0  # requests sent on this connection
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.tunnel = False
        self._poll = None
        self._fd = -1
        self.read_paused = False

    # -- pool side -------------------------------------------------------------

    def alive(self, now: float) -> bool:
        """Still usable for a new request: not closed, and (after a while idle) no EOF or stray byte waiting."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        if now - self.idle_since >= _POLL_AFTER_IDLE:
            if self._poll is None:
                self._poll = select.poll()
                sock = self.transport.get_extra_info("socket")
                self._fd = sock.fileno()
                self._poll.register(self._fd, _POLL_FLAGS)
            if self._poll.poll(0):
                return False
        return True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def send(self, exchange, data: bytes) -> None:
        self.exchange = exchange
        self.got_bytes = False
        self.uses += 1
        self.headers = []
        self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self.closed:
                self.transport.resume_reading()

    # -- asyncio -------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if self.tunnel:
            if ex is not None:
                ex.tunnel_from_upstream(data)
            return
        if ex is None:
            # bytes while idle: the stream is out of step; never reuse it
            self.close()
            return
        self.got_bytes = True
        conn = ex.conn
        conn.wbuf = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            rest = data[e.args[0]:] if e.args else b""
            if self.exchange is not None and self.tunnel and rest:
                self.exchange.tunnel_from_upstream(rest)
        except httptools.HttpParserError as e:
            if isinstance(e, httptools.HttpParserCallbackError):
                log.error("bug in a response callback", exc_info=e.__context__ or e)
            if self.exchange is not None:
                self.exchange.upstream_broken(self, "upstream-bad-response")
        finally:
            buf = conn.wbuf
            conn.wbuf = None
            if buf and not conn.closed:
                conn.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def eof_received(self):
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(self, exc)
        else:
            self.target.pool.discard(self)
        if self._poll is not None:
            self._poll = None

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_resumed()

    # -- httptools callbacks -----------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        self.status = p.get_status_code()
        if self.exchange is None:
            return
        self.exchange.on_response_head(self, self.status, self.reason, self.headers, p.should_keep_alive())
        self.headers = []

    def on_body(self, data: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.on_response_body(data)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None and (self.status >= 200 or self.status == 101):
            ex.on_response_done(self)


async def connect(loop: asyncio.AbstractEventLoop, target, timeout: float) -> UpstreamConnection:
    """Open a new connection to ``target`` within ``timeout``; raises OSError / TimeoutError."""
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: UpstreamConnection(target), target.host, target.port), timeout
    )
    return conn
