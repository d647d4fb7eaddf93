"""Client connections: one socket each, its parser, keep-alive, timeouts, back-pressure on reading.

``ClientConnection`` reads requests (llhttp, or the fast path for a plain
bodyless request when the table has a single target), queues them as
``Exchange`` objects (``exchange.py``) and answers them in order: requests
pipelined by a client wait, and only the first of the queue talks to an
upstream. Malformed requests are answered here (400, 408, 413, 431) and the
connection closes after a short linger. On a listener with front-door rules
(the plain one with TLS on) ACME challenges and the HTTPS redirect are
answered before routing (``https.front_door``).

Fast paths (``fastpath.py``; shortcuts only, everything else takes the
general path): a chunk that is exactly one plain bodyless request is
dispatched without llhttp, and when the last such request repeats byte for
byte its head is reused; the first queued exchange takes a recently used
idle upstream connection inline (``_dispatch``).
"""

from __future__ import annotations

import logging

import httptools

from nonstop.proxy.exchange import _IDEMPOTENT, P_BUFFER, P_QUEUE, P_UPSTREAM, Exchange
from nonstop.proxy.fastpath import fast_request
from nonstop.proxy.http import Reject, RequestHead, error_response, forwarded_lines, inspect_request
from nonstop.proxy.https import front_door
from nonstop.proxy.upstream import _POLL_AFTER_IDLE as _FRESH
from nonstop.proxy.upstream import UpstreamConnection

log = logging.getLogger("nonstop.proxy")

_LINGER = 2.0
_REMEMBER_REQUEST = 2048  # a longer fast-path request is not kept for reuse (memory per connection)

_IDLE, _HEAD, _ACTIVE = 0, 1, 2


def _port_of(addr: str) -> int:
    return int(addr.rpartition(":")[2])


class _Stop(Exception):
    """Raised from a parser callback to stop parsing a request we have already answered."""


class ClientConnection:  # an asyncio protocol (no base class: compiled, a C type)
    """One client socket: its parser, its queue of exchanges, its deadline."""

    __slots__ = (
        "server", "state", "cfg", "transport", "parser", "client_ip", "client_ip_b", "url", "headers",
        "raw_head", "phase", "queue", "reading", "paused", "write_paused", "deadline",
        "closed", "lingering", "tunnel", "upgrade_rest", "wbuf", "special", "fwd", "last_req", "last_head",
        "read_timeout", "header_timeout", "idle_timeout", "max_header_bytes", "trust", "scheme", "front",
        "resp_extra",
    )

    def __init__(self, server, listener=None) -> None:
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
        # what the listener it came in on says (server.Listener): X-Forwarded-Proto, the front-door rules
        # (ACME challenges, the HTTPS redirect) answered before routing, lines added to every response (HSTS)
        self.scheme = listener.scheme if listener is not None else b"http"
        self.front = listener.front if listener is not None else False
        self.resp_extra = listener.resp_extra if listener is not None else b""

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
                self._pause(P_BUFFER)
                return
        if self.reading is None:
            if (
                self.headers is None
                and not self.raw_head
                and not self.queue
                and self.state.fast is not None
                and not self.front
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
        if self.front and self._front_door():
            raise _Stop
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
            self._pause(P_QUEUE)
            return
        self.phase = _ACTIVE
        self._dispatch(ex, head)

    def _front_door(self) -> bool:
        """On a listener with front-door rules: an ACME challenge or the HTTPS redirect is answered here.
        True when answered (the request goes no further)."""
        if self.queue:
            return False  # pipelined behind a request being answered: routed as usual (rare)
        cfg = self.cfg
        redirect_to = _port_of(cfg.tls_listen) if cfg.redirect_http and cfg.tls_listen else None
        answer = front_door(cfg.acme_challenges, redirect_to, self.scheme, self.url, self.headers,
                            self.trust is not None)
        if answer is None:
            return False
        self.transport.write(answer)
        self.linger()
        return True

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
                # a request that may be sent again (exchange.py: idempotent, no body) skips the poll on a
                # connection used just now; any other is written only where the poll saw no FIN waiting
                if not up.closed and not up.transport.is_closing() and (
                        (now - up.idle_since < _FRESH and head.no_body and head.method in _IDEMPOTENT)
                        or up.alive(now)):
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
            self._resume(P_UPSTREAM)
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
            self._resume(P_QUEUE)
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
