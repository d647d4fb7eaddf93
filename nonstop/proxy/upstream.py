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

from nonstop.proxy.fastpath import fast_response

log = logging.getLogger("nonstop.proxy")

_POLL_FLAGS = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)
# A pooled connection idle for longer than this is polled before reuse, to see
# an upstream close that the event loop has not delivered yet.
_POLL_AFTER_IDLE = 0.5
_MAX_HEAD = 64 * 1024  # an upstream response head larger than this is refused (502)


class UpstreamConnection:  # an asyncio protocol (no base class: compiled, a C type)
    """A keep-alive HTTP/1.1 connection to one target.

    Response heads are taken from the raw bytes (no per-header callbacks);
    the exchange decides whether the body is *spliced* (raw bytes forwarded,
    bounded by Content-Length) or decoded by llhttp and re-framed.
    """

    __slots__ = (
        "target", "transport", "parser", "exchange", "idle_since", "closed", "status", "tunnel", "_poll",
        "read_paused", "hbuf", "hstart", "base", "body_from", "left", "splice", "dirty", "chunk", "raw_body",
        "fresh",
    )

    def __init__(self, target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange = None
        self.idle_since = 0.0
        self.closed = False
        self.status = 0
        self.tunnel = False
        self._poll = None
        self.read_paused = False
        self.hbuf: bytes | None = None  # response head bytes so far (None once the head is complete)
        self.hstart = 0  # where the current head starts in hbuf (after interim 1xx heads)
        self.base = 0  # offset of the current chunk in hbuf
        self.body_from = -1  # offset in the current chunk where unforwarded body bytes start
        self.left = 0  # body bytes still to splice
        self.splice = False
        self.dirty = False  # the upstream sent bytes past the end of a response: never reuse
        self.chunk = b""
        self.raw_body = False  # reading a fast-path body: llhttp is not involved in this response
        self.fresh = False  # the next bytes start a response the fast path may take

    # -- pool side -------------------------------------------------------------

    def alive(self, now: float) -> bool:
        """Still usable for a new request: not closed, and no EOF or stray byte waiting.

        Always polled (one cheap syscall): when an instance dies, the kernel's FIN
        on its idle pooled connections can arrive in the same loop turn as a new
        request, before the loop has told us; writing the request there would
        lose it, while a connection found closed here is simply replaced. The
        single-target fast path in downstream.py skips this only for a request
        that may be sent again (idempotent, no body) on a connection reused
        within ``_POLL_AFTER_IDLE``: if that one turns out closed, the request
        is replayed on a new connection (exchange.py)."""
        if self.closed or self.transport.is_closing():
            return False
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.transport.get_extra_info("socket").fileno(), _POLL_FLAGS)
        return not self._poll.poll(0)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def bind(self, exchange, data: bytes) -> None:
        """Serve ``exchange``: reset per-response state and write its request head (and any body so far)."""
        self.exchange = exchange
        self.hbuf = b""
        self.hstart = 0
        self.splice = False
        head = exchange.head
        self.fresh = not head.upgrade and head.method != b"HEAD"
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
        conn = ex.conn
        if self.raw_body:
            self._raw_body(data, ex, conn)
            return
        hbuf = self.hbuf
        if self.fresh:
            self.fresh = False
            fast = fast_response(data)
            if fast is not None:
                self.hbuf = None
                ex.on_fast_response(self, data, *fast)
                return
        if hbuf is not None:
            if hbuf:
                if len(hbuf) > _MAX_HEAD:
                    ex.upstream_broken(self, "upstream-head-too-large")
                    self.abort()
                    return
                self.base = len(hbuf)
                self.hbuf = hbuf + data
            else:
                self.base = 0
                self.hbuf = data
            self.body_from = -1
        else:
            self.body_from = 0
            conn.deadline = conn.state.now + conn.read_timeout  # the body is moving
        self.chunk = data
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
            if self.body_from >= 0 and self.splice and self.exchange is ex:
                self._splice(data, conn)
            buf = conn.wbuf
            conn.wbuf = None
            if buf and not conn.closed:
                conn.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def _raw_body(self, data: bytes, ex, conn) -> None:
        left = self.left
        n = len(data)
        if n < left:
            self.left = left - n
            conn.deadline = conn.state.now + conn.read_timeout
            conn.write(data)
            return
        if n > left:
            self.dirty = True
            data = data[:left]
        self.left = 0
        self.raw_body = False
        if data:
            conn.write(data)
        ex.on_response_done(self)

    def _splice(self, data: bytes, conn) -> None:
        start = self.body_from
        self.body_from = -1
        n = len(data) - start
        if n <= 0:
            return
        left = self.left
        if n > left:
            self.dirty = True  # bytes past the response's end: drop them, never reuse
            n = left
            if not n:
                return
        self.left = left - n
        conn.write(data if n == len(data) else data[start : start + n])

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
        self._poll = None

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_resumed()

    # -- httptools callbacks -----------------------------------------------

    def on_headers_complete(self) -> None:
        p = self.parser
        status = self.status = p.get_status_code()
        ex = self.exchange
        if ex is None:
            return
        hbuf = self.hbuf
        start = self.hstart
        end = hbuf.find(b"\r\n\r\n", start) + 4
        raw = hbuf[start:end] if start or end != len(hbuf) else hbuf
        if status < 200 and status != 101:
            self.hstart = end
            ex.on_interim(raw)
            return
        self.hbuf = None
        self.body_from = end - self.base
        ex.on_response_head(self, status, raw, p.should_keep_alive())

    def on_body(self, data: bytes) -> None:
        if not self.splice:
            ex = self.exchange
            if ex is not None:
                ex.on_response_body(data)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        status = self.status
        if status < 200 and status != 101:
            return
        if self.splice and self.body_from >= 0:
            # _splice, inlined: the rest of this chunk up to Content-Length
            data = self.chunk
            start = self.body_from
            self.body_from = -1
            n = len(data) - start
            if n > 0:
                left = self.left
                if n > left:
                    self.dirty = True
                    n = left
                if n:
                    self.left = left - n
                    ex.conn.write(data if n == len(data) else data[start : start + n])
        ex.on_response_done(self)


async def connect(loop: asyncio.AbstractEventLoop, target, timeout: float):
    """Open a new connection to ``target`` within ``timeout``; raises OSError / TimeoutError."""
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: UpstreamConnection(target), target.host, target.port), timeout
    )
    return conn
