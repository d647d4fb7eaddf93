"""Client connections and the exchanges (request → response) they carry.

``ClientConnection`` owns one client socket: parsing, keep-alive, timeouts,
back-pressure on reading. ``Exchange`` owns one request from routing to the
last byte of its response: target choice, hold, connect retries, streaming
both ways, stats. Requests pipelined by a client queue up and are answered in
order; only the first of the queue talks to an upstream.

Fast paths (both only shortcuts; everything else takes the general path):
a chunk that is exactly one plain bodyless request (``http.fast_request``)
is dispatched without llhttp when the table has a single target, and an
upstream response with a plain Content-Length head (``http.fast_response``;
``Connection: keep-alive`` and ``Keep-Alive`` allowed, and dropped) is
forwarded without llhttp. Both remember their last verdicts by exact bytes. Both accept a strict subset of what the parser
path accepts, read the same way (tests/proxy/test_pure.py compares them).

Retry rule (docs/internals.md): a request moves to another target only when
connecting fails, or when a pooled connection turns out closed *before any
byte of the request was written to it* — checked when the connection leaves
the pool (closed transport, or a poll showing EOF/stray bytes after it sat
idle). An upstream that closes after we wrote is not retried: the request
may have been processed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left

import httptools

from nonstop.proxy.http import (
    Reject, RequestHead, ResponseHead, error_response, fast_client_head, fast_request, forwarded_lines, inspect_raw_response,
    inspect_request, inspect_response, parse_head_lines,
)
from nonstop.proxy.split import set_cookie_header
from nonstop.proxy.stats import LATENCY_BUCKETS
from nonstop.proxy.upstream import _POLL_AFTER_IDLE as _FRESH
from nonstop.proxy.state import Entry
from nonstop.proxy.upstream import UpstreamConnection, connect

log = logging.getLogger("nonstop.proxy")

# reasons the client socket is not being read (bits)
_P_UPSTREAM = 1  # upstream write buffer is full
_P_BUFFER = 2  # request body buffered while no upstream is attached yet
_P_QUEUE = 4  # a pipelined request waits behind the current one
_BUFFER_LIMIT = 64 * 1024
_LINGER = 2.0
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))  # RFC 9110 §9.2.2
_REMEMBER_REQUEST = 2048  # a longer fast-path request is not kept for reuse (memory per connection)

_IDLE, _HEAD, _ACTIVE = 0, 1, 2
_perf = time.perf_counter


class _Stop(Exception):
    """Raised from a parser callback to stop parsing a request we have already answered."""


class ClientConnection:  # an asyncio protocol (no base class: compiled, a C type)
    """One client socket: its parser, its queue of exchanges, its deadline."""

    __slots__ = (
        "server", "state", "cfg", "transport", "parser", "client_ip", "client_ip_b", "url", "headers",
        "raw_head", "phase", "queue", "reading", "paused", "write_paused", "deadline",
        "closed", "lingering", "tunnel", "upgrade_rest", "wbuf", "special", "fwd", "last_req", "last_head",
        "read_timeout", "header_timeout", "idle_timeout", "max_header_bytes", "trust", "scheme",
    )

    def __init__(self, server) -> None:
        self.server = server
        self.state = server.state
        cfg = self.cfg = server.cfg
        # the knobs read per request, copied once (C fields when compiled)
        self.read_timeout = cfg.read_timeout
        self.header_timeout = cfg.header_timeout
        self.idle_timeout = cfg.idle_timeout
        self.max_header_bytes = cfg.max_header_bytes
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.client_ip_b = b""
        self.url = b""
        self.headers: list | None = None  # None between requests
        self.raw_head = 0
        self.phase = _IDLE
        self.queue: list[Exchange] = []
        self.reading: Exchange | None = None  # the exchange whose body the parser is reading
        self.paused = 0
        self.write_paused = False
        self.deadline = 0.0
        self.closed = False
        self.lingering = False
        self.tunnel: Exchange | None = None
        self.upgrade_rest: list | None = None  # client bytes after an upgrade request, before the 101
        self.wbuf: list | None = None
        self.special = False  # any of tunnel / lingering / closed / upgrade_rest: off the fast path
        self.fwd = b""
        self.last_req = b""  # the last request taken by the fast path, and its head
        self.last_head = None
        self.trust = None  # the trusted proxies, when this connection's peer is one of them
        self.scheme = b"http"

    # -- asyncio -------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        self.client_ip_b = self.client_ip.encode()
        self.fwd = forwarded_lines(self.client_ip_b, self.scheme)
        trusted = self.server.trusted
        if trusted and trusted.trusts(self.client_ip):
            self.trust = trusted
        self.server.connections.add(self)
        now = self.state.now
        self.deadline = now + (self.cfg.idle_grace if self.state.closing else self.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.special:
            if self.tunnel is not None:
                self.tunnel.tunnel_from_client(data)
                return
            if self.lingering or self.closed:
                return
            if self.upgrade_rest is not None:
                self.upgrade_rest.append(data)
                self._pause(_P_BUFFER)
                return
        if self.reading is None:
            if (
                self.headers is None
                and not self.raw_head
                and not self.queue
                and self.state.fast is not None
                and len(data) <= self.max_header_bytes
            ):
                # between requests, one target: a plain bodyless request needs no parser.
                # Keep-alive clients often repeat a request byte for byte (polling, health
                # checks, load tools): its head (never changed once built) is reused.
                if data == self.last_req:
                    head = self.last_head
                else:
                    head = fast_request(data, self.fwd)
                    if head is not None and len(data) <= _REMEMBER_REQUEST:
                        self.last_req = data
                        self.last_head = head
                if head is not None:
                    ex = Exchange(self, head, None)
                    ex.req_done = True
                    self.queue.append(ex)
                    self.phase = _ACTIVE
                    self._dispatch(ex, head)
                    return
            self.raw_head += len(data)
            if self.phase == _IDLE:
                # a request has started: the header timeout runs from its first byte
                self.phase = _HEAD
                self.deadline = self.state.now + self.header_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgrade_rest = [data[e.args[0]:]] if e.args and e.args[0] < len(data) else []
            self.special = True
            return
        except httptools.HttpParserCallbackError as e:
            if not isinstance(e.__context__, _Stop):
                log.error("bug in a request callback", exc_info=e.__context__ or e)
                self.reject(500, "proxy-bug")
            return
        except httptools.HttpParserError:
            self.reject(400, "bad-request")
            return
        if self.phase == _HEAD and self.raw_head > self.max_header_bytes:
            self.reject(431, "header-too-large")

    def eof_received(self):
        if self.tunnel is not None:
            return False
        if self.queue and not self.lingering and self.reading is None:
            # half-close after a whole request: let the response go out, then close
            self.queue[-1].client_eof = True
            return True
        return False  # mid-request (or idle): the request can never complete

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.special = True
        self.server.connections.discard(self)
        queue, self.queue = self.queue, []
        for ex in queue:
            ex.abandon()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue:
            up = self.queue[0].upstream
            if up is not None:
                up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue:
            up = self.queue[0].upstream
            if up is not None:
                up.resume_reading()
                if self.deadline:
                    self.deadline = self.state.now + self.read_timeout  # the client is reading

    # -- reading control -----------------------------------------------------

    def _pause(self, bit: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= bit

    def _resume(self, bit: int) -> None:
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------

    def on_url(self, url: bytes) -> None:
        if self.headers is None:  # the first piece of a new request
            self.url = url
            self.headers = []
        else:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        cfg = self.cfg
        # raw_head (bytes received since the head began) bounds the head's size:
        # only when it is over the limit is the exact size worth computing
        if self.raw_head > cfg.max_header_bytes:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > cfg.max_header_bytes:
                self.reject(431, "header-too-large")
                raise _Stop
        self.raw_head = 0
        p = self.parser
        head = inspect_request(
            p.get_method(), self.url, p.get_http_version(), self.headers, self.client_ip_b,
            p.should_upgrade(), cfg.max_body, self.scheme, self.trust,
        )
        if type(head) is Reject:
            self.reject(head.status, head.reason)
            raise _Stop
        ex = Exchange(self, head, self.headers)
        self.headers = None
        self.reading = ex
        queue = self.queue
        queue.append(ex)
        if len(queue) != 1:
            self._pause(_P_QUEUE)
            return
        self.phase = _ACTIVE
        self._dispatch(ex, head)

    def _dispatch(self, ex: Exchange, head: RequestHead) -> None:
        """Start the first queued exchange. Exchange.start, inlined for the commonest
        case: one target and a recently used idle connection to it."""
        entry = self.state.fast
        if entry is not None:
            t = entry.target
            idle = t.pool._idle
            if idle:
                up: UpstreamConnection = idle[-1]
                now = self.state.now
                if not up.closed and now - up.idle_since < _FRESH and not up.transport.is_closing():
                    idle.pop()
                    ex.entry = entry
                    t.in_flight += 1
                    entry.counters.in_flight += 1
                    ex.counted = True
                    ex.upstream = up
                    up.bind(ex, head.upstream_head)
                    if self.write_paused:
                        up.pause_reading()
                    self.deadline = now + self.read_timeout
                    return
        self.deadline = 0.0
        ex.start()

    def on_body(self, data: bytes) -> None:
        ex = self.reading
        if ex is not None:
            ex.on_request_body(data)

    def on_message_complete(self) -> None:
        ex = self.reading
        if ex is not None:
            self.reading = None
            ex.on_request_done()

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.wbuf is not None:
            self.wbuf.append(data)
        elif not self.closed:
            self.transport.write(data)

    def flush(self) -> None:
        """Write what was batched during one upstream read (one syscall instead of several)."""
        buf = self.wbuf
        if buf:
            self.wbuf = []
            if not self.closed:
                self.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))

    def reject(self, status: int, reason: str) -> None:
        """Answer a bad request ourselves and close (after a short linger)."""
        if self.closed or self.lingering:
            return
        self.state.rejected += 1
        ex = self.reading
        self.reading = None
        if self.queue:
            if ex is self.queue[0] and ex.resp is None:
                # a bad body: the upstream got a partial request; cut it, answer the client
                ex.fail(status, reason)
            else:
                # answers already under way: one cannot be sent out of order
                self.abort()
            return
        self.transport.write(error_response(status, reason, close=True))
        self.linger()

    def linger(self) -> None:
        """Stop answering; half-close and drop whatever the client still sends, then close."""
        self.lingering = True
        self.special = True
        self.paused = 0
        if self.closed:
            return
        self.flush()
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:
                pass
        self.deadline = self.state.now + _LINGER

    def abort(self) -> None:
        if not self.closed:
            self.flush()
            self.transport.abort()

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        """The response of the first queued exchange is complete."""
        queue = self.queue
        if queue and queue[0] is ex:
            queue.pop(0)
        if self.paused:
            self._resume(_P_UPSTREAM)
        if self.closed:
            return
        if close or ex.client_eof:
            self.flush()
            if ex.req_done and self.reading is None:
                self.transport.close()
            else:
                self.linger()
            return
        if self.queue:
            self._resume(_P_QUEUE)
            self.queue[0].start()
            return
        now = self.state.now
        if self.reading is None and self.phase != _IDLE:
            # a new head may already be half read (pipelining); otherwise idle
            self.phase = _HEAD if self.raw_head else _IDLE
        if self.phase == _IDLE:
            self.deadline = now + (self.cfg.idle_grace if self.state.closing else self.idle_timeout)
        else:
            self.deadline = now + self.header_timeout

    # -- time ----------------------------------------------------------------

    def on_deadline(self, now: float) -> None:
        if self.closed:
            return
        if self.lingering:
            self.transport.abort()
            return
        if self.queue:
            self.queue[0].on_deadline(now)
            return
        if self.phase == _HEAD:
            self.reject(408, "header-timeout")
        else:
            self.transport.close()  # idle keep-alive connection

    def stop_when_idle(self) -> None:
        """Server is stopping: idle connections get ``idle_grace`` for one last request."""
        if not self.queue and self.phase == _IDLE and not self.lingering:
            self.deadline = min(self.deadline or 1e18, self.state.now + self.cfg.idle_grace)


class Exchange:
    """One request, from its head to the last byte of its response (or its tunnel's end)."""

    __slots__ = ("conn", "head", "headers", "started", "entry", "upstream", "tried", "buf", "buf_size", "body_len",
                 "req_done", "resp", "status", "cookie", "finished", "task", "counted", "client_eof")

    def __init__(self, conn: ClientConnection, head, headers) -> None:
        self.conn = conn
        self.head = head
        self.headers = headers
        self.started = _perf()
        self.entry = None
        self.upstream = None
        self.tried: tuple = ()
        self.buf: list | None = None
        self.buf_size = 0
        self.body_len = 0
        self.req_done = False
        self.resp = None
        self.status = 0
        self.cookie: int | None = None
        self.finished = False
        self.task = None
        self.counted = False  # in_flight incremented on self.entry
        self.client_eof = False

    # -- routing -------------------------------------------------------------

    def start(self) -> None:
        conn = self.conn
        state = conn.state
        entry = state.fast
        if entry is None:
            entry, cookie = state.choose(self.headers, self.head.cookie, self.head.client or conn.client_ip)
            if entry is None:
                self.task = asyncio.ensure_future(self._hold())
                return
            self.cookie = cookie
        self._attach(entry)

    def _attach(self, entry: Entry) -> None:
        self.entry = entry
        t = entry.target
        t.in_flight += 1
        entry.counters.in_flight += 1
        self.counted = True
        idle = t.pool._idle
        if idle:
            now = self.conn.state.now
            while idle:
                up: UpstreamConnection = idle.pop()
                if up.alive(now):
                    self._bind(up)
                    return
                up.close()
        self.task = asyncio.ensure_future(self._connect())

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.entry.target.in_flight -= 1
            self.entry.counters.in_flight -= 1

    async def _hold(self) -> None:
        state = self.conn.state
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.conn.cfg.hold_timeout
        while not self.finished:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.fail(503, "no-target")
                return
            try:
                await asyncio.wait_for(asyncio.shield(state.changed()), remaining)
            except asyncio.TimeoutError:
                continue
            if self.finished:
                return
            entry, cookie = state.choose(self.headers, self.head.cookie, self.head.client or self.conn.client_ip)
            if entry is not None:
                self.task = None
                self.cookie = cookie
                self._attach(entry)
                return

    async def _connect(self) -> None:
        conn = self.conn
        loop = asyncio.get_running_loop()
        while True:
            entry = self.entry
            try:
                up = await connect(loop, entry.target, conn.cfg.connect_timeout)
                if up.closed or up.transport.is_closing():
                    # Accepted, then closed before one byte of the request was written (a container
                    # engine's port forwarder whose container just died does this): as good as
                    # refused. Writing to it would raise, and leave the request without an answer.
                    up.close()
                    raise ConnectionResetError("closed before the request was sent")
            except (OSError, asyncio.TimeoutError):
                if self.finished:
                    return
                entry.counters.proxy_errors += 1
                self._uncount()
                self.tried += (entry.target,)
                nxt = conn.state.fallback(entry, self.tried)
                if nxt is None:
                    self.fail(502, "upstream-connect")
                    return
                self.entry = nxt
                nxt.target.in_flight += 1
                nxt.counters.in_flight += 1
                self.counted = True
                continue
            self.task = None
            if self.finished:
                up.close()
                return
            self._bind(up)
            return

    def _bind(self, up: UpstreamConnection) -> None:
        conn = self.conn
        self.upstream = up
        buf = self.buf
        if buf:
            self.buf = None
            self.buf_size = 0
            up.bind(self, self.head.upstream_head + b"".join(buf))
            conn._resume(_P_BUFFER)
        else:
            up.bind(self, self.head.upstream_head)
        if conn.write_paused:
            up.pause_reading()
        conn.deadline = conn.state.now + conn.read_timeout

    # -- request body --------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        conn = self.conn
        if self.finished:
            return
        self.body_len += len(data)
        mb = conn.cfg.max_body
        if mb is not None and self.body_len > mb:
            self._too_large()
            return
        if self.head.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        up = self.upstream
        if up is not None:
            up.transport.write(data)
            if self.resp is None:
                conn.deadline = conn.state.now + conn.read_timeout
        else:
            if self.buf is None:
                self.buf = []
            self.buf.append(data)
            self.buf_size += len(data)
            if self.buf_size > _BUFFER_LIMIT:
                conn._pause(_P_BUFFER)

    def on_request_done(self) -> None:
        self.req_done = True
        if self.finished:
            return
        if self.head.chunked:
            if self.upstream is not None:
                self.upstream.transport.write(b"0\r\n\r\n")
            else:
                if self.buf is None:
                    self.buf = []
                self.buf.append(b"0\r\n\r\n")

    def _too_large(self) -> None:
        if self.resp is None:
            self.fail(413, "body-too-large")
        else:
            self._abort_both()

    # -- back-pressure -------------------------------------------------------

    def upstream_write_paused(self) -> None:
        self.conn._pause(_P_UPSTREAM)

    def upstream_write_resumed(self) -> None:
        self.conn._resume(_P_UPSTREAM)

    # -- response ------------------------------------------------------------

    def on_interim(self, raw: bytes) -> None:
        """A 1xx (not 101) head: relayed to HTTP/1.1 clients, then we keep waiting."""
        if self.head.http10 or self.resp is not None:
            return
        reason, headers = parse_head_lines(raw)
        r = inspect_response(int(raw[9:12]), reason, headers, True, self.head, False, False, b"")
        if type(r) is not Reject:
            self.conn.write(r.head)

    def on_fast_response(self, up: UpstreamConnection, data: bytes, status, end, length, chead: bytes) -> None:
        """A Content-Length response whose head the fast path validated; llhttp is not used for it.

        ``chead`` is its head as the client gets it, up to ``extra`` (``http.fast_response``)."""
        conn = self.conn
        extra = self.entry.release.header
        if self.cookie is not None:
            extra += set_cookie_header(self.cookie)
        head = self.head
        close = not head.keep_alive or conn.state.closing or not self.req_done or self.client_eof
        self.status = status
        avail = len(data) - end
        if avail >= length:
            if not conn.closed:
                conn.transport.write(fast_client_head(chead, extra, close, head.http10)
                                     + data[end : end + length])
            # the whole response was in this chunk: on_response_done, inlined
            self.upstream = None
            up.exchange = None
            entry = self.entry
            if avail == length and self.req_done and not up.closed:
                pool = entry.target.pool
                if up.read_paused:
                    up.resume_reading()
                if len(pool._idle) < pool.max_idle:
                    up.idle_since = conn.state.now
                    pool._idle.append(up)
                else:
                    pool.put(up, conn.state.now)
            else:
                up.close()  # bytes past the response's end, or the request is still coming
            self.finished = True
            c = entry.counters
            dt = _perf() - self.started
            c.requests += 1
            c.by_class[status // 100 - 1] += 1
            c.counts[bisect_left(LATENCY_BUCKETS, dt)] += 1
            c.sum += dt
            c.in_flight -= 1
            entry.target.in_flight -= 1
            self.counted = False
            conn.exchange_done(self, close)
            return
        r = ResponseHead()
        r.body = "length"
        r.splice = True
        r.length = length
        if close:
            r.close = True
        self.resp = r
        conn.write(fast_client_head(chead, extra, close, head.http10) + data[end:])
        up.left = length - avail
        up.raw_body = True
        conn.deadline = conn.state.now + conn.read_timeout

    def on_response_head(self, up, status: int, raw: bytes, keep_alive: bool) -> None:
        conn = self.conn
        extra = self.entry.release.header
        if self.cookie is not None:
            extra += set_cookie_header(self.cookie)
        close = not self.head.keep_alive or conn.state.closing or not self.req_done or self.client_eof
        r = inspect_raw_response(status, raw, keep_alive, self.head, self.head.http10, close, extra)
        if type(r) is Reject:
            self.upstream_broken(up, r.reason)
            return
        self.resp = r
        self.status = status
        if r.splice:
            up.splice = True
            up.left = r.length
        conn.write(r.head)
        if r.tunnel:
            self._open_tunnel(up)
            return
        if self.head.method == b"HEAD":
            self.on_response_done(up)
            return
        conn.deadline = conn.state.now + conn.read_timeout

    def on_response_body(self, data: bytes) -> None:
        conn = self.conn
        if self.resp.chunked_out:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)

    def on_response_done(self, up: UpstreamConnection) -> None:
        r = self.resp
        if self.finished or r is None or r.tunnel:
            return
        conn = self.conn
        if r.chunked_out:
            conn.write(b"0\r\n\r\n")
        self.upstream = None
        up.exchange = None
        entry = self.entry
        if r.upstream_reusable and self.req_done and not up.closed and not up.dirty:
            if up.read_paused:
                up.resume_reading()
            pool = entry.target.pool
            if len(pool._idle) < pool.max_idle:
                up.idle_since = conn.state.now
                pool._idle.append(up)
            else:
                pool.put(up, conn.state.now)
        else:
            up.close()
        # _finish, inlined for the hot path
        self.finished = True
        c = entry.counters
        dt = _perf() - self.started
        c.requests += 1
        c.by_class[self.status // 100 - 1] += 1
        c.counts[bisect_left(LATENCY_BUCKETS, dt)] += 1
        c.sum += dt
        c.in_flight -= 1
        entry.target.in_flight -= 1
        self.counted = False
        conn.exchange_done(self, r.close)

    def _finish(self, status: int, close: bool) -> None:
        self.finished = True
        entry = self.entry
        if entry is not None:
            entry.counters.record(status, _perf() - self.started)
            self._uncount()
        else:
            self.conn.state.unrouted.record(status, _perf() - self.started)
        self.conn.exchange_done(self, close)

    def fail(self, status: int, reason: str) -> None:
        """Answer with a proxy-generated error (502/503/504/413) if nothing was sent yet."""
        if self.finished:
            return
        conn = self.conn
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.exchange = None
            up.abort()
        if self.task is not None and not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()
        self.task = None
        if self.resp is not None:
            self._abort_both()
            return
        close = not self.head.keep_alive or not self.req_done or conn.state.closing or self.client_eof
        extra = self.entry.release.header if self.entry is not None else b""
        conn.write(error_response(status, reason, close=close, extra=extra))
        self._finish(status, close)

    def upstream_broken(self, up, reason: str) -> None:
        """The upstream sent something we cannot forward."""
        if self.entry is not None:
            self.entry.counters.proxy_errors += 1
        if self.resp is None:
            self.fail(502, reason)
        else:
            self._abort_both()

    def upstream_lost(self, up, exc) -> None:
        """The upstream connection closed while serving this exchange."""
        if self.finished:
            return
        r = self.resp
        if r is not None and r.tunnel:
            self._close_tunnel()
            return
        if r is not None and r.body == "eof":
            self.upstream = up  # so on_response_done can detach it
            self.on_response_done(up)
            return
        self.upstream = None
        if self.entry is not None:
            self.entry.counters.proxy_errors += 1
        if r is None and up.idle_since and up.hbuf == b"" and self.req_done and self.head.no_body \
                and self.head.method in _IDEMPOTENT:
            # A reused keep-alive connection closed without one byte of answer: the
            # upstream died, or closed it as idle while our request was on the wire.
            # An idempotent request without a body may be sent again (RFC 9112 §9.3.1,
            # as nginx and Go's Transport do): to a sibling first (a dying process
            # still accepts for a few milliseconds), else to the same target; always
            # on a new connection, which never qualifies for this again: one replay.
            self._uncount()
            self.tried += (self.entry.target,)
            nxt = self.conn.state.fallback(self.entry, self.tried) or self.entry
            self.entry = nxt
            nxt.target.in_flight += 1
            nxt.counters.in_flight += 1
            self.counted = True
            self.task = asyncio.ensure_future(self._connect())
            return
        if r is None:
            self.fail(502, "upstream-closed")
        else:
            self._abort_both()

    def _abort_both(self) -> None:
        """Mid-response failure: nothing sensible can be sent; cut the client connection."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.exchange = None
            up.abort()
        if not self.finished:
            self.finished = True
            entry = self.entry
            if entry is not None:
                entry.counters.record(self.status or 502, _perf() - self.started)
                self._uncount()
        self.conn.abort()

    def abandon(self) -> None:
        """The client went away: release everything this exchange holds."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.exchange = None
            up.abort()
        if self.resp is not None and self.resp.tunnel and self.entry is not None:
            self.entry.target.tunnels.discard(self)
        self.finished = True
        self._uncount()

    # -- time ----------------------------------------------------------------

    def on_deadline(self, now: float) -> None:
        conn = self.conn
        if self.resp is not None and self.resp.tunnel:
            conn.deadline = 0.0
            return
        if self.upstream is None:
            conn.deadline = 0.0  # holding or connecting: their own timers
            return
        if self.resp is None:
            if self.req_done:
                if self.entry is not None:
                    self.entry.counters.proxy_errors += 1
                self.fail(504, "upstream-timeout")
            else:
                self.fail(408, "body-timeout")
        else:
            self._abort_both()

    # -- tunnel --------------------------------------------------------------

    def _open_tunnel(self, up) -> None:
        conn = self.conn
        up.tunnel = True
        conn.tunnel = self
        conn.special = True
        conn.deadline = 0.0
        self.entry.counters.record(101, _perf() - self.started)
        self.entry.target.tunnels.add(self)
        rest = conn.upgrade_rest
        conn.upgrade_rest = None
        conn._resume(_P_BUFFER)
        if rest:
            up.transport.write(b"".join(rest))

    def tunnel_from_client(self, data: bytes) -> None:
        up = self.upstream
        if up is not None:
            up.transport.write(data)

    def tunnel_from_upstream(self, data: bytes) -> None:
        self.conn.write(data)

    def _close_tunnel(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.entry is not None:
            self.entry.target.tunnels.discard(self)
        self._uncount()
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.exchange = None
            up.close()
        if not self.conn.closed:
            self.conn.flush()
            self.conn.transport.close()

    def close_tunnel(self) -> None:
        """Drain past its upgraded timeout: close both sides of this tunnel."""
        self._close_tunnel()
