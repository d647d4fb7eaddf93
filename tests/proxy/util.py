"""Test clients: raw sockets and a minimal keep-alive HTTP/1.1 client that tells sent from unsent failures."""

from __future__ import annotations

import asyncio
import contextlib

import uvloop

from nonstop.proxy.config import ProxyConfig
from nonstop.proxy.testing import serve_in_loop


def run(coro, timeout: float = 60.0):
    """Run a test coroutine on uvloop with an overall deadline."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return uvloop.run(bounded())


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


@contextlib.asynccontextmanager
async def proxy(*upstreams: str, **cfg):
    """A proxy inside this event loop on 127.0.0.1:0 with a static table (or none)."""
    c = ProxyConfig(listen="127.0.0.1:0", upstreams=list(upstreams), **cfg)
    async with serve_in_loop(c) as server:
        yield server


async def raw(addr: str, data: bytes | list[bytes], timeout: float = 5.0, pause: float = 0.0) -> bytes:
    """Send bytes (a list: sent with ``pause`` between), read until the proxy closes or ``timeout``."""
    reader, writer = await asyncio.open_connection(*split_addr(addr))
    try:
        for part in data if isinstance(data, list) else [data]:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        out = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except asyncio.TimeoutError:
                break
            except ConnectionError:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        writer.close()


class Response:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.raw_headers = headers
        self.headers = {}
        for k, v in headers:
            self.headers.setdefault(k.lower(), v)
        self.body = body

    def json(self):
        import json

        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:80]!r}>"


async def read_response(reader: asyncio.StreamReader, method: str = "GET", sink=None) -> Response:
    """Read one response (Content-Length, chunked or until close); 1xx responses are skipped."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _, status_s, *reason = lines[0].split(" ", 2)
        status = int(status_s)
        headers = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
        if 100 <= status < 200 and status != 101:
            continue
        break
    h = {k.lower(): v for k, v in headers}
    body = b""
    if method == "HEAD" or status in (101, 204, 304):
        pass
    elif h.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size)
            if sink:
                sink(data)
            else:
                parts.append(data)
            await reader.readexactly(2)
        body = b"".join(parts)
    elif "content-length" in h:
        left = int(h["content-length"])
        parts = []
        while left:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            if sink:
                sink(data)
            else:
                parts.append(data)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return Response(status, reason[0] if reason else "", headers, body)


class Client:
    """One keep-alive client connection, like a browser's: a clean close seen *before* sending
    means reconnect and send there; any error after the request was written is a failure."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connections = 0

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(*split_addr(self.addr))
        self.connections += 1

    def _usable(self) -> bool:
        # what httpcore does before reusing a pooled connection: EOF already seen → not usable
        if self.writer is None or self.writer.is_closing():
            return False
        if self.reader.at_eof():
            return False
        return True

    async def request(self, method: str, path: str, headers: dict | None = None, body: bytes = b"",
                      timeout: float = 30.0) -> Response:
        if not self._usable():
            await self.close()
            await self._connect()
        else:
            # give the loop one turn to deliver an EOF that is already there
            await asyncio.sleep(0)
            if not self._usable():
                await self.close()
                await self._connect()
        h = {"Host": "test"}
        h.update(headers or {})
        if body and "Transfer-Encoding" not in h:
            h["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        resp = await asyncio.wait_for(read_response(self.reader, method), timeout)
        if resp.headers.get("connection", "").lower() == "close":
            await self.close()
        return resp

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.reader = self.writer = None


async def get(addr: str, path: str = "/", headers: dict | None = None, method: str = "GET",
              body: bytes = b"") -> Response:
    c = Client(addr)
    try:
        return await c.request(method, path, headers, body)
    finally:
        await c.close()
