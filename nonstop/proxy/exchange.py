"""One request, from routing to the last byte of its response: the ``Exchange``.

An exchange picks its target (the route table's choice for this request, or
the single target), takes a pooled upstream connection or has one made
(``connecting``), streams the request body up and the response down with
back-pressure both ways, counts what happened (per release and target), and
tells its client connection when it is done. An upgraded request (101)
becomes a tunnel: bytes both ways until either side closes.

Retry rule (docs/internals.md): a request moves to another target only when
connecting fails, or when a pooled connection turns out closed *before any
byte of the request was written to it*, or, for an idempotent bodyless
request on a reused keep-alive connection, when the connection closed
without one byte of answer (one replay, on a new connection). An upstream
that closes after answering part of a request is not retried: the request
may have been processed.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left

from nonstop.proxy.connecting import connect_upstream, hold
from nonstop.proxy.fastpath import fast_client_head
from nonstop.proxy.http import Reject, ResponseHead, error_response, inspect_raw_response, inspect_response, parse_head_lines
from nonstop.proxy.split import set_cookie_header
from nonstop.proxy.state import Entry
from nonstop.proxy.stats import LATENCY_BUCKETS
from nonstop.proxy.upstream import UpstreamConnection

__all__ = ["Exchange", "P_UPSTREAM", "P_BUFFER", "P_QUEUE"]

# reasons the client socket is not being read (bits of ClientConnection.paused)
P_UPSTREAM = 1  # upstream write buffer is full
P_BUFFER = 2  # request body buffered while no upstream is attached yet
P_QUEUE = 4  # a pipelined request waits behind the current one
_BUFFER_LIMIT = 64 * 1024
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))  # RFC 9110 §9.2.2
_perf = time.perf_counter


class Exchange:
    """One request, from its head to the last byte of its response (or its tunnel's end)."""

    __slots__ = ("conn", "head", "headers", "started", "entry", "upstream", "tried", "buf", "buf_size", "body_len",
                 "req_done", "resp", "status", "cookie", "finished", "task", "counted", "client_eof")

    def __init__(self, conn, head, headers) -> None:
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
                self.task = asyncio.ensure_future(hold(self))
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
        self.task = asyncio.ensure_future(connect_upstream(self))

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.entry.target.in_flight -= 1
            self.entry.counters.in_flight -= 1

    def _bind(self, up: UpstreamConnection) -> None:
        conn = self.conn
        self.upstream = up
        buf = self.buf
        if buf:
            self.buf = None
            self.buf_size = 0
            up.bind(self, self.head.upstream_head + b"".join(buf))
            conn._resume(P_BUFFER)
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
                conn._pause(P_BUFFER)

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
        self.conn._pause(P_UPSTREAM)

    def upstream_write_resumed(self) -> None:
        self.conn._resume(P_UPSTREAM)

    # -- response ------------------------------------------------------------

    def on_interim(self, raw: bytes) -> None:
        """A 1xx (not 101) head: relayed to HTTP/1.1 clients, then we keep waiting."""
        if self.head.http10 or self.resp is not None:
            return
        reason, headers = parse_head_lines(raw)
        r = inspect_response(int(raw[9:12]), reason, headers, True, self.head, False, False, b"")
        if type(r) is not Reject:
            self.conn.write(r.head)

    def _extra_lines(self) -> bytes:
        """What nonstop adds to the response head: the release header, a new bucket cookie, the
        listener's own lines (HSTS)."""
        extra = self.entry.release.header
        if self.cookie is not None:
            extra += set_cookie_header(self.cookie)
        if self.conn.resp_extra:
            extra += self.conn.resp_extra
        return extra

    def on_fast_response(self, up: UpstreamConnection, data: bytes, status, end, length, chead: bytes) -> None:
        """A Content-Length response whose head the fast path validated; llhttp is not used for it.

        ``chead`` is its head as the client gets it, up to ``extra`` (``http.fast_response``)."""
        conn = self.conn
        extra = self._extra_lines()
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
        extra = self._extra_lines()
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
        extra = (self.entry.release.header if self.entry is not None else b"") + conn.resp_extra
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
            self.task = asyncio.ensure_future(connect_upstream(self))
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
        conn._resume(P_BUFFER)
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
