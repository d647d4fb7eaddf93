"""A small HTTP/1.1 test app: the Python twin of ``examples/app`` (the seed's Spring Boot jar).

    python -m nonstop.testing.app --port 0 --version v1 [--boot-seconds S] [--health UP|DOWN]
                                  [--fail-rate F] [--latency-ms N] [--die-after-seconds S]

It prints ``listening on 127.0.0.1:PORT`` once bound (after ``--boot-seconds``, like Spring binds
only after booting) and serves:

- ``GET /``                 200 ``hello from <version>`` (500 for ``--fail-rate`` of them)
- ``GET /actuator/health``, ``/health``   ``{"status":"UP"}``, or 503 ``DOWN`` (also while draining)
- ``GET /slow?ms=N``        sleeps N ms, then 200
- ``POST /echo``            the request body streamed back (same Content-Length, or chunked)
- ``GET /version``          the version
- ``GET /headers``          the request's headers and the peer address, as JSON (what a proxy forwarded)

Every response carries ``X-App-Version``. SIGTERM/SIGINT: stop listening, close idle keep-alive
connections, answer in-flight requests with ``Connection: close``, exit 0 (1 if some were still
running after ``--shutdown-seconds``). ``--die-after-seconds`` simulates a crash (exit 1 at once,
connections cut).

It is not fast; it is correct: keep-alive, pipelining, Content-Length and chunked request bodies
(streamed with back-pressure), ``Expect: 100-continue``, HEAD, 400 on malformed requests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http
import math
import os
import signal
import sys
from dataclasses import dataclass
from urllib.parse import parse_qs

import httptools

_READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class AppOptions:
    """The app's whole configuration (one object, as the CLI parsed it)."""

    host: str = "127.0.0.1"
    port: int = 0
    version: str = "dev"
    boot_seconds: float = 0.0
    health_up: bool = True
    fail_rate: float = 0.0
    latency_ms: int = 0
    die_after_seconds: float | None = None
    faulty_after_seconds: float = 0.0  # --fail-rate applies only this long after the port is bound
    shutdown_seconds: float = 30.0


class _Request:
    """One parsed request head, plus its body as it arrives (pulled by the handler)."""

    __slots__ = ("method", "path", "query", "headers", "keep_alive", "http_11",
                 "chunked", "has_body", "expect_continue", "chunks", "complete")

    def __init__(self) -> None:
        self.method = ""
        self.path = "/"
        self.query: dict[str, list[str]] = {}
        self.headers: list[tuple[str, str]] = []
        self.keep_alive = True
        self.http_11 = True
        self.chunked = False
        self.has_body = False
        self.expect_continue = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.complete = False

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _Connection:
    """One client connection: parses requests with httptools and answers them in order.

    The body is pulled: the socket is read only when the handler wants more body (or the next
    request), so a large upload never piles up in memory.
    """

    def __init__(self, app: App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.app = app
        self.reader = reader
        self.writer = writer
        self.parser = httptools.HttpRequestParser(self)
        self.ready: collections.deque[_Request] = collections.deque()  # heads parsed, not yet handled
        self.building: _Request | None = None  # between message-begin and headers-complete
        self.last: _Request | None = None  # the request whose body is arriving
        self.url = b""
        self.eof = False
        self.error: Exception | None = None  # a parse error, raised once the requests before it are answered
        self.response_started = False  # some byte of the current response was written
        self.idle = True  # waiting for a new request with no byte of it received
        peer = writer.get_extra_info("peername")
        self.peer = peer[0] if peer else ""

    # -- httptools callbacks (synchronous, called from feed_data) --

    def on_message_begin(self) -> None:
        self.building = _Request()
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.building is not None
        self.building.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        req = self.building
        assert req is not None
        self.building = None
        parsed = httptools.parse_url(self.url)
        req.method = self.parser.get_method().decode("ascii")
        req.path = parsed.path.decode("latin-1") if parsed.path else "/"
        req.query = parse_qs(parsed.query.decode("latin-1")) if parsed.query else {}
        req.keep_alive = self.parser.should_keep_alive()
        req.http_11 = self.parser.get_http_version() == "1.1"
        te = req.header("transfer-encoding")
        cl = req.header("content-length")
        req.chunked = te is not None and "chunked" in te.lower()
        req.has_body = req.chunked or (cl is not None and cl.strip() != "0")
        req.expect_continue = (req.header("expect") or "").lower() == "100-continue"
        self.last = req
        self.ready.append(req)

    def on_body(self, body: bytes) -> None:
        assert self.last is not None
        self.last.chunks.append(bytes(body))

    def on_message_complete(self) -> None:
        assert self.last is not None
        self.last.complete = True

    # -- reading --

    async def _feed_more(self) -> None:
        if self.error is not None:
            raise self.error
        data = await self.reader.read(_READ_SIZE)
        if not data:
            self.eof = True
            return
        self.idle = False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            # Requests parsed before the bad bytes (pipelined) still get their answers first;
            # this is also how bytes after a "Connection: close" request end up ignored.
            self.error = e
            if not self.ready:
                raise

    async def next_request(self) -> _Request | None:
        """The next request head, or None when the client closed or we are draining and idle."""
        while not self.ready:
            if self.eof or (self.app.draining and self.building is None):
                return None
            self.idle = self.building is None
            await self._feed_more()
        self.idle = False
        return self.ready.popleft()

    async def read_body(self, req: _Request) -> bytes | None:
        """The next piece of ``req``'s body, or None at its end."""
        while not req.chunks:
            if req.complete or not req.has_body:
                return None
            if self.eof:
                raise ConnectionError("client closed the connection mid-body")
            self.send_continue(req)
            await self._feed_more()
        return req.chunks.popleft()

    def send_continue(self, req: _Request) -> None:
        """Answers ``Expect: 100-continue`` once, before any other byte of the response."""
        if req.expect_continue:
            req.expect_continue = False
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def discard_body(self, req: _Request) -> None:
        while await self.read_body(req) is not None:
            pass

    # -- writing --

    def head(self, req: _Request, status: int, headers: list[tuple[str, str]], close: bool) -> bytes:
        self.response_started = True
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append(f"X-App-Version: {self.app.options.version}")
        if close or not req.keep_alive:
            lines.append("Connection: close")
        elif not req.http_11:
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, req: _Request, status: int, body: bytes, content_type: str = "text/plain",
                   close: bool = False) -> None:
        await self.discard_body(req)  # so the connection can carry the next request
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        head = self.head(req, status, headers, close)
        self.writer.write(head if req.method == "HEAD" else head + body)  # one segment, not two
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class App:
    """The server: options, open connections, in-flight count, and the drain on SIGTERM."""

    def __init__(self, options: AppOptions) -> None:
        self.options = options
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.root_count = 0
        self.draining = False
        self.serving_since = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._stop = asyncio.Event()

    async def run(self) -> int:
        """Boot, serve until SIGTERM/SIGINT, drain; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.options.die_after_seconds is not None:
            loop.call_later(self.options.die_after_seconds, _die)
        print(f"starting app {self.options.version} (pid {os.getpid()})", flush=True)
        # Simulated boot: the port is bound only afterwards, so a checker sees "refused" until then.
        try:
            await asyncio.wait_for(self._stop.wait(), self.options.boot_seconds)
            return 0  # stopped while booting: nothing to drain
        except asyncio.TimeoutError:
            pass
        self._server = await asyncio.start_server(
            self._serve_connection, self.options.host, self.options.port, backlog=1024)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.serving_since = loop.time()
        print(f"listening on {host}:{port}", flush=True)
        await self._stop.wait()
        return await self._drain()

    async def _drain(self) -> int:
        self.draining = True
        assert self._server is not None
        self._server.close()  # stop accepting: new connections are refused from here on
        print(f"draining: {self.in_flight} request(s) in flight", flush=True)
        for conn in list(self.connections):
            if conn.idle:
                conn.close()  # an idle keep-alive connection has nothing to finish
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.shutdown_seconds
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.005)
        left = self.in_flight
        print("stopped gracefully" if left == 0 else f"shutdown timeout: {left} request(s) cut", flush=True)
        return 0 if left == 0 else 1

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            while True:
                try:
                    req = await conn.next_request()
                except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
                    await self._bad_request(conn, e)
                    break
                if req is None:
                    break
                self.in_flight += 1
                conn.response_started = False
                try:
                    await self._handle(conn, req)
                    await conn.discard_body(req)
                except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
                    # A bad body: answer 400 if we still can; a streamed echo is cut short instead.
                    if not conn.response_started:
                        await self._bad_request(conn, e)
                    break
                finally:
                    self.in_flight -= 1
                if not req.keep_alive or self.draining:
                    break
        except (ConnectionError, httptools.HttpParserError, httptools.HttpParserUpgrade):
            pass  # the client went away or broke the protocol mid-body: nothing left to answer
        finally:
            self.connections.discard(conn)
            conn.close()

    async def _bad_request(self, conn: _Connection, error: Exception) -> None:
        body = f"bad request: {error}\n".encode()
        conn.writer.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            await conn.writer.drain()
        except ConnectionError:
            pass

    async def _handle(self, conn: _Connection, req: _Request) -> None:
        opts = self.options
        if req.path in ("/actuator/health", "/health"):
            up = opts.health_up and not self.draining
            body = b'{"status":"UP"}' if up else b'{"status":"DOWN"}'
            await conn.send(req, 200 if up else 503, body, "application/json", close=self.draining)
            return
        if opts.latency_ms:
            await asyncio.sleep(opts.latency_ms / 1000)
        if req.path == "/":
            self.root_count += 1
            n = self.root_count
            # Request n fails when floor(n*rate) steps up: exactly `rate` of them, evenly spread.
            faulty = opts.fail_rate and asyncio.get_running_loop().time() - self.serving_since >= opts.faulty_after_seconds
            if faulty and math.floor(n * opts.fail_rate) != math.floor((n - 1) * opts.fail_rate):
                await conn.send(req, 500, f"simulated failure from {opts.version}\n".encode(), close=self.draining)
            else:
                await conn.send(req, 200, f"hello from {opts.version}\n".encode(), close=self.draining)
        elif req.path == "/version":
            await conn.send(req, 200, opts.version.encode(), close=self.draining)
        elif req.path == "/headers":
            import json

            body = json.dumps({"headers": dict(req.headers), "peer": conn.peer}).encode()
            await conn.send(req, 200, body, "application/json", close=self.draining)
        elif req.path == "/slow":
            try:
                ms = max(0, int(req.query.get("ms", ["1000"])[0]))
            except ValueError:
                ms = 1000
            await asyncio.sleep(ms / 1000)
            await conn.send(req, 200, f"slept {ms} ms on {opts.version}\n".encode(), close=self.draining)
        elif req.path == "/echo":
            await self._echo(conn, req)
        else:
            await conn.send(req, 404, b"not found\n", close=self.draining)

    async def _echo(self, conn: _Connection, req: _Request) -> None:
        """Streams the body back: same Content-Length when known, chunked otherwise."""
        content_type = req.header("content-type") or "application/octet-stream"
        chunked = req.chunked and req.http_11
        if chunked:
            framing = ("Transfer-Encoding", "chunked")
        elif req.has_body:
            framing = ("Content-Length", (req.header("content-length") or "0").strip())
        else:
            framing = ("Content-Length", "0")
        conn.send_continue(req)
        conn.writer.write(conn.head(req, 200, [("Content-Type", content_type), framing], self.draining))
        while (piece := await conn.read_body(req)) is not None:
            if req.method == "HEAD":
                continue
            if chunked:
                conn.writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            else:
                conn.writer.write(piece)
            await conn.writer.drain()
        if chunked and req.method != "HEAD":
            conn.writer.write(b"0\r\n\r\n")
        await conn.writer.drain()


def _die() -> None:
    print("dying now (--die-after-seconds): connections cut, no drain", flush=True)
    os._exit(1)


def parse_args(argv: list[str] | None = None) -> AppOptions:
    p = argparse.ArgumentParser(prog="python -m nonstop.testing.app", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="0 picks a free port (printed)")
    p.add_argument("--version", default=os.environ.get("APP_VERSION", "dev"))
    p.add_argument("--boot-seconds", type=float, default=0.0, help="delay before binding the port")
    p.add_argument("--health", choices=["UP", "DOWN"], default="UP", type=str.upper)
    p.add_argument("--fail-rate", type=float, default=0.0, help="fraction of / answered 500")
    p.add_argument("--latency-ms", type=int, default=0, help="added to every endpoint but health")
    p.add_argument("--die-after-seconds", type=float, default=None, help="crash (exit 1) after S seconds")
    p.add_argument("--faulty-after-seconds", type=float, default=0.0,
                   help="--fail-rate applies only this long after the port is bound (a fault that shows late)")
    p.add_argument("--shutdown-seconds", type=float, default=30.0, help="how long SIGTERM waits for in-flight")
    a = p.parse_args(argv)
    if not 0 <= a.fail_rate <= 1:
        p.error("--fail-rate must be within 0..1")
    return AppOptions(host=a.host, port=a.port, version=a.version, boot_seconds=a.boot_seconds,
                      health_up=a.health == "UP", fail_rate=a.fail_rate, latency_ms=a.latency_ms,
                      die_after_seconds=a.die_after_seconds, faulty_after_seconds=a.faulty_after_seconds,
                      shutdown_seconds=a.shutdown_seconds)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    import uvloop  # a dependency of nonstop; the app would run on plain asyncio as well

    return uvloop.run(App(options).run())


if __name__ == "__main__":
    sys.exit(main())
