"""A load client that counts every failed request: the referee of nonstop's zero-downtime claims.

    with LoadClient("http://127.0.0.1:8080/", rate=100) as load:
        ...                                   # deploy, roll back, kill things
    result = load.result
    assert result.failed == 0, result.format()

    python -m nonstop.testing.load http://127.0.0.1:8080/ --duration 10 --rate 100 --json

It runs on its own thread with its own event loop, so whatever the test's loop does (or blocks
on), the load keeps its pace. Workers each hold one request at a time and come in four kinds,
because each breaks differently during a deploy:

- ``keepalive``  GETs the URL over one reused connection (what a proxy's pool or a browser does)
- ``new``        GETs the URL on a fresh connection each time (``Connection: close``)
- ``post``       POSTs a body to ``/echo`` (Content-Length and chunked, in turn) and checks the echo
- ``slow``       GETs ``/slow?ms=N``: requests still running when the old version drains

What counts as a failure: a connection that cannot be opened, a connection that fails after the
request was written (reset, closed before the whole response), a response that cannot be parsed,
a 5xx, a timeout, a wrong echo. What does not: a keep-alive connection the server closed cleanly
*while idle* — the client sees the close before writing and reconnects, as httpx and browsers do.

With ``rate`` the load is open-loop-ish: the rate is split evenly over the non-slow workers, each
sending on a fixed schedule (a worker never has two requests in flight; a tick it is late for is
skipped, not made up in a burst). Slow workers always run back to back. Without ``rate`` every
worker runs closed-loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from urllib.parse import urlsplit

import httptools

from nonstop.testing.loadresult import Gap, LoadResult, RequestRecord

__all__ = ["LoadClient", "LoadResult", "RequestRecord", "Gap", "KINDS", "main"]

KINDS = ("keepalive", "new", "post", "slow")


class _RequestFailed(Exception):
    """A request failed; the message is the reason recorded."""


class _Response:
    __slots__ = ("status", "headers", "body", "keep_alive", "complete", "headers_done", "framed")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.keep_alive = True
        self.complete = False
        self.headers_done = False
        self.framed = True  # has Content-Length or chunked; otherwise it ends at connection close


class _Connection(asyncio.Protocol):
    """One client connection: writes a request, parses the response with httptools.

    ``peer_closed`` turns true as soon as the loop sees the server's FIN or an error, so a worker
    can tell an idle connection the server let go of (reconnect) from one that dies under a request.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.peer_closed = False
        self.resp: _Response | None = None
        self.waiter: asyncio.Future[_Response] | None = None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.resp is None:
            # Bytes nobody asked for: the connection's framing is broken; never reuse it.
            self.peer_closed = True
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._fail(f"bad response: {type(e).__name__}: {e}")
            self.peer_closed = True
            self.close()

    def eof_received(self) -> bool | None:
        self.peer_closed = True
        resp = self.resp
        if resp is not None and resp.headers_done and not resp.framed:
            self._finish()  # a response delimited by the connection close
        else:
            self._fail("connection closed by server after the request was sent")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer_closed = True
        if exc is not None:
            self._fail(f"connection lost after the request was sent: {type(exc).__name__}: {exc}")
        else:
            self._fail("connection closed by server after the request was sent")

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.resp is not None
        self.resp.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        resp.status = self.parser.get_status_code()
        resp.keep_alive = self.parser.should_keep_alive()
        resp.headers_done = True
        resp.framed = "content-length" in resp.headers or "chunked" in resp.headers.get("transfer-encoding", "")

    def on_body(self, body: bytes) -> None:
        assert self.resp is not None
        self.resp.body.append(bytes(body))

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None:
            return
        if 100 <= resp.status < 200:
            self.resp = _Response()  # an interim response (100 Continue): the final one follows
            return
        self._finish()

    # -- use --

    def _finish(self) -> None:
        if self.resp is not None and self.waiter is not None and not self.waiter.done():
            self.resp.complete = True
            self.waiter.set_result(self.resp)
        self.resp = None

    def _fail(self, reason: str) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(_RequestFailed(reason))
        self.resp = None

    @property
    def reusable(self) -> bool:
        return not self.peer_closed and self.transport is not None and not self.transport.is_closing()

    async def request(self, data: bytes) -> _Response:
        assert self.transport is not None
        self.resp = _Response()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class LoadClient:
    """Drives a mixed load at a URL from its own thread; ``result`` holds every request after ``stop()``.

    ``duration`` and ``max_requests`` bound the run (None: until ``stop()``). ``timeout`` bounds each
    request (connect included); a request past it is a failure.
    """

    def __init__(self, url: str, *, rate: float | None = 100.0, keepalive: int = 4, new: int = 2,
                 post: int = 2, slow: int = 1, slow_ms: int = 1000, post_bytes: tuple[int, int] = (64, 32768),
                 duration: float | None = None, max_requests: int | None = None, timeout: float = 10.0,
                 seed: int = 1, cafile: str | None = None, connect_to: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"need an http(s)://host:port/ URL, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc
        # https: verified against ``cafile`` for the URL's host name (SNI); ``connect_to`` HOST:PORT is where
        # the TCP connection goes (a name that resolves nowhere, served on loopback)
        self.ssl = None
        self.server_hostname = None
        if parts.scheme == "https":
            import ssl

            self.ssl = ssl.create_default_context(cafile=cafile)
            self.server_hostname = parts.hostname
        if connect_to:
            self.host, _, port_s = connect_to.rpartition(":")
            self.port = int(port_s)
        self.handshakes: list[tuple[float, str]] = []  # (when, sha256 of the certificate) per new TLS connection
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.rate = rate
        self.counts = {"keepalive": keepalive, "new": new, "post": post, "slow": slow}
        if sum(self.counts.values()) == 0:
            raise ValueError("no workers")
        self.slow_ms = slow_ms
        self.post_bytes = post_bytes
        self.duration = duration
        self.max_requests = max_requests
        self.timeout = timeout
        self.seed = seed
        self._records: list[RequestRecord] = []
        self._issued = 0
        self.served = 0  # live counters, readable from any thread
        self.failed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._started = 0.0
        self._stopped = 0.0
        self._ended = 0.0
        self._error: BaseException | None = None
        self.result: LoadResult | None = None

    # -- control, from the caller's thread --

    def start(self) -> LoadClient:
        self._thread = threading.Thread(target=self._run_thread, name="nonstop-load", daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    def stop(self, timeout: float | None = None) -> LoadResult:
        """Stops sending; waits for requests in flight (each bounded by ``timeout``); returns the result."""
        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass  # the loop already finished (duration or max_requests reached)
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> LoadResult:
        """Waits for the run to end by itself (duration / max_requests); returns the result."""
        assert self._thread is not None, "start() first"
        self._thread.join(timeout if timeout is not None else (self.duration or 0) + self.timeout + 30)
        if self._thread.is_alive():
            raise TimeoutError("load client did not stop")
        if self._error is not None:
            raise RuntimeError("load client crashed") from self._error
        assert self.result is not None
        return self.result

    def wait_served(self, n: int, timeout: float = 10.0) -> None:
        """Blocks until ``n`` requests were served (to know the load is flowing before acting)."""
        deadline = time.monotonic() + timeout
        while self.served < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.served} requests served after {timeout}s ({self.failed} failed)")
            time.sleep(0.01)

    def snapshot(self) -> LoadResult:
        """The records so far, while the load runs."""
        return LoadResult(list(self._records), self._started, time.monotonic())

    def __enter__(self) -> LoadClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the load's own thread and loop --

    def _run_thread(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # surfaced by wait()
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        self._started = time.monotonic()
        self._ready.set()
        kinds = [k for k in KINDS for _ in range(self.counts[k])]
        paced = sum(1 for k in kinds if k != "slow")
        interval = paced / self.rate if self.rate else None
        workers = []
        n_paced = 0
        for i, kind in enumerate(kinds):
            offset = 0.0
            if interval is not None and kind != "slow":
                offset = interval * n_paced / max(1, paced)  # spread the ticks over the interval
                n_paced += 1
            workers.append(asyncio.ensure_future(self._worker(i, kind, interval if kind != "slow" else None, offset)))
        if self.duration is not None:
            try:
                await asyncio.wait_for(self._stop_event.wait(), self.duration)
            except asyncio.TimeoutError:
                self._stop_event.set()
        else:
            await self._stop_event.wait()
        self._stopped = time.monotonic()
        await asyncio.gather(*workers)
        self._ended = time.monotonic()
        self.result = LoadResult(self._records, self._started, self._ended, self._stopped)

    def _take(self) -> bool:
        if self.max_requests is not None and self._issued >= self.max_requests:
            assert self._stop_event is not None
            self._stop_event.set()
            return False
        self._issued += 1
        return True

    async def _worker(self, index: int, kind: str, interval: float | None, offset: float) -> None:
        assert self._stop_event is not None
        stop = self._stop_event
        rng = random.Random(self.seed * 1000 + index)
        payload = rng.randbytes(self.post_bytes[1]) if kind == "post" else b""
        conn: _Connection | None = None
        next_at = self._started + offset
        seq = 0
        try:
            while not stop.is_set():
                if interval is not None:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        try:
                            await asyncio.wait_for(stop.wait(), delay)
                            break
                        except asyncio.TimeoutError:
                            pass
                    next_at += interval
                    if next_at < time.monotonic():  # late: skip the missed ticks rather than burst
                        next_at = time.monotonic() + interval
                if stop.is_set() or not self._take():
                    break
                seq += 1
                rec = RequestRecord(worker=index, kind=kind, seq=seq, start=time.monotonic())
                if conn is not None and not conn.reusable:
                    conn.close()  # closed by the server while idle: not a failure, reconnect
                    conn = None
                    rec.reconnected = True
                data, expect = self._build(kind, index, seq, rng, payload)
                try:
                    conn = await asyncio.wait_for(self._exchange(conn, rec, data, expect), self.timeout)
                except asyncio.TimeoutError:
                    rec.error = f"timeout after {self.timeout}s" + (" (request sent)" if rec.sent else " (connecting)")
                    conn = None
                except _RequestFailed as e:
                    rec.error = str(e)
                    conn = None
                except OSError as e:
                    rec.error = f"connect failed: {type(e).__name__}: {e}" if not rec.sent else f"{type(e).__name__}: {e}"
                    conn = None
                rec.end = time.monotonic()
                self._records.append(rec)
                if rec.ok:
                    self.served += 1
                else:
                    self.failed += 1
                if kind == "new" and conn is not None:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    async def _exchange(self, conn: _Connection | None, rec: RequestRecord, data: bytes,
                        expect: bytes | None) -> _Connection | None:
        """Sends one request (opening a connection if needed); returns the connection if reusable."""
        loop = asyncio.get_running_loop()
        if conn is None:
            if self.ssl is not None:
                transport, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl,
                                                               server_hostname=self.server_hostname)
                sslobj = transport.get_extra_info("ssl_object")
                if sslobj is not None:
                    import hashlib

                    der = sslobj.getpeercert(binary_form=True) or b""
                    self.handshakes.append((time.monotonic(), hashlib.sha256(der).hexdigest()))
            else:
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
        assert conn is not None
        rec.sent = True
        try:
            resp = await conn.request(data)
        except BaseException:
            conn.close()
            raise
        rec.status = resp.status
        rec.version = resp.headers.get("x-app-version")
        rec.release = resp.headers.get("x-nonstop-release")
        if resp.status >= 500:
            why = resp.headers.get("x-nonstop-error")
            rec.error = f"status {resp.status}" + (f" ({why})" if why else "")
        elif expect is not None and resp.status == 200 and b"".join(resp.body) != expect:
            rec.error = f"echo mismatch: sent {len(expect)} bytes, got {sum(map(len, resp.body))}"
        if not resp.keep_alive or not conn.reusable:
            conn.close()
            return None
        return conn

    def _build(self, kind: str, index: int, seq: int, rng: random.Random, payload: bytes) -> tuple[bytes, bytes | None]:
        """The request bytes, and the body expected back (for echo)."""
        head = f"Host: {self.host_header}\r\nUser-Agent: nonstop-load\r\nX-Load-Request: {index}-{seq}\r\n"
        if kind in ("keepalive", "new"):
            close = "Connection: close\r\n" if kind == "new" else ""
            return f"GET {self.path} HTTP/1.1\r\n{head}{close}\r\n".encode(), None
        if kind == "slow":
            return f"GET /slow?ms={self.slow_ms} HTTP/1.1\r\n{head}\r\n".encode(), None
        # post: a body unique to this request (so a crossed response cannot pass), in turn framed
        # by Content-Length and chunked.
        size = rng.randint(*self.post_bytes)
        body = f"{index}-{seq}:".encode() + payload[:size]
        if seq % 2:
            req = (f"POST /echo HTTP/1.1\r\n{head}Content-Type: application/octet-stream\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        else:
            half = len(body) // 2
            req = (f"POST /echo HTTP/1.1\r\n{head}Content-Type: application/octet-stream\r\n"
                   f"Transfer-Encoding: chunked\r\n\r\n").encode()
            for piece in (body[:half], body[half:]):
                if piece:
                    req += b"%x\r\n%b\r\n" % (len(piece), piece)
            req += b"0\r\n\r\n"
        return req, body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nonstop.testing.load",
                                description="Mixed HTTP load that counts every failed request. "
                                            "Exit 0 when none failed, 1 otherwise.")
    p.add_argument("url")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--rate", type=float, default=100.0, help="total req/s of non-slow workers; 0: closed loop")
    p.add_argument("--max-requests", type=int, default=None)
    p.add_argument("--keepalive", type=int, default=4, help="keep-alive GET workers (default 4)")
    p.add_argument("--new", type=int, default=2, help="new-connection GET workers (default 2)")
    p.add_argument("--post", type=int, default=2, help="POST /echo workers (default 2)")
    p.add_argument("--slow", type=int, default=1, help="GET /slow workers (default 1)")
    p.add_argument("--slow-ms", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=10.0, help="per request, connect included")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--timeline", action="store_true", help="with --json: add per-second served/failed")
    a = p.parse_args(argv)
    client = LoadClient(a.url, rate=a.rate or None, keepalive=a.keepalive, new=a.new, post=a.post, slow=a.slow,
                        slow_ms=a.slow_ms, duration=a.duration, max_requests=a.max_requests, timeout=a.timeout)
    client.start()
    try:
        result = client.wait()
    except KeyboardInterrupt:
        result = client.stop()
    if a.json:
        out = result.summary()
        if a.timeline:
            out["timeline"] = result.timeline()
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(result.format())
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
