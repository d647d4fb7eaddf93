"""Test upstreams on 127.0.0.1, port 0: a small HTTP/1.1 app and raw-socket misbehavers.

``App`` understands a few paths (query strings steer it):

- ``/`` or anything else: JSON of method, path, headers (lower-case), body length, its own name
- ``/sleep?s=2``: answers after ``s`` seconds
- ``/status?code=503``: that status
- ``/big?bytes=N``: N bytes of body (Content-Length), streamed with back-pressure
- ``/chunked?n=3``: a chunked response of n chunks
- ``/drip?bytes=N&every=0.1``: N bytes, 1000 at a time, one piece every ``every`` seconds
- ``/upload``: reads the request body (any framing) counting bytes; answers the count and a checksum
- ``/ws``: a WebSocket echo server (handshake and frames by hand)
- ``/continue``: honours ``Expect: 100-continue`` (sends 100 before reading the body)
- ``/early``: answers 413 without reading the body
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import zlib
from urllib.parse import parse_qs, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Backend:
    """A listening test server; ``addr`` is HOST:PORT, ``connections`` counts accepted sockets."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.addr = ""
        self.port = 0
        self.connections = 0
        self.requests = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> "Backend":
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", port, limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        return self

    async def _conn(self, reader, writer) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except (KeyError, ValueError, IndexError):
            pass  # garbage from a fuzz test: the test app just hangs up
        finally:
            self.writers.discard(writer)
            writer.close()

    async def handle(self, reader, writer) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            await self.server.wait_closed()

    def close_idle(self) -> None:
        """Close every open connection (as a backend's keep-alive timeout would)."""
        for w in list(self.writers):
            w.close()


async def read_head(reader) -> tuple[str, str, dict[str, str], list[tuple[str, str]]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    raw = []
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        raw.append((name, value.strip()))
        headers.setdefault(name.lower(), value.strip())
    return method, target, headers, raw


async def read_body(reader, headers, sink=None) -> tuple[int, int]:
    """Read a request body (Content-Length or chunked) without keeping it; (length, crc32)."""
    n = 0
    crc = 0
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from the proxy
                break
            left = size
            while left:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
                n += len(chunk)
                crc = zlib.crc32(chunk, crc)
            await reader.readexactly(2)
    else:
        left = int(headers.get("content-length", "0"))
        while left:
            chunk = await reader.read(min(left, 1 << 16))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(chunk)
            n += len(chunk)
            crc = zlib.crc32(chunk, crc)
    return n, crc


def response(status: int, body: bytes, headers: dict[str, str] | None = None, reason: str = "X") -> bytes:
    h = {"Content-Length": str(len(body)), "Content-Type": "application/json"}
    h.update(headers or {})
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in h.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class App(Backend):
    """A well-behaved HTTP/1.1 app with keep-alive (see module docstring for paths)."""

    def __init__(self, name: str = "app") -> None:
        super().__init__()
        self.name = name
        self.seen: list[dict] = []

    async def handle(self, reader, writer) -> None:
        while True:
            parsed = await read_head(reader)
            if parsed is None:
                return
            method, target, headers, raw = parsed
            self.requests += 1
            url = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            path = url.path
            info = {"method": method, "path": target, "headers": headers, "raw_headers": raw, "app": self.name}
            self.seen.append(info)
            if path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                await self._websocket(reader, writer, headers)
                return
            if path == "/continue":
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                n, crc = await read_body(reader, headers)
                writer.write(response(200, json.dumps({"length": n, "crc": crc}).encode()))
                continue
            if path == "/early":
                writer.write(response(413, b"too big", {"Connection": "close"}))
                await writer.drain()
                return
            n, crc = await read_body(reader, headers)
            info["length"] = n
            if path == "/sleep":
                await asyncio.sleep(float(q.get("s", "1")))
                writer.write(response(200, json.dumps({"slept": q.get("s"), "app": self.name}).encode()))
            elif path == "/status":
                writer.write(response(int(q.get("code", "200")), b"status"))
            elif path == "/big":
                total = int(q["bytes"])
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
                block = b"x" * (1 << 16)
                left = total
                while left:
                    part = block[: min(left, len(block))]
                    writer.write(part)
                    left -= len(part)
                    await writer.drain()
            elif path == "/drip":
                total, every = int(q["bytes"]), float(q.get("every", "0.1"))
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
                left = total
                while left:
                    part = min(left, 1000)
                    writer.write(b"d" * part)
                    left -= part
                    await writer.drain()
                    await asyncio.sleep(every)
            elif path == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(int(q.get("n", "3"))):
                    data = f"chunk{i};".encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            elif path == "/upload":
                writer.write(response(200, json.dumps({"length": n, "crc": crc}).encode()))
            elif path == "/headers":
                writer.write(response(200, b"{}", {"X-Custom": "1", "Keep-Alive": "timeout=5",
                                                   "Connection": "X-Custom, keep-alive", "Proxy-Thing": "a"}))
            else:
                body = json.dumps(info).encode()
                if method == "HEAD":
                    writer.write(response(200, b"", {"Content-Length": str(len(body))}))
                else:
                    writer.write(response(200, body))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return

    async def _websocket(self, reader, writer, headers) -> None:
        key = headers["sec-websocket-key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        while True:
            opcode, payload = await ws_read(reader, masked=True)
            if opcode == 8:
                writer.write(ws_frame(8, payload, mask=False))
                await writer.drain()
                return
            writer.write(ws_frame(opcode, payload, mask=False))
            await writer.drain()


def ws_frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = b"\x01\x02\x03\x04"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


async def ws_read(reader, masked: bool) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


class Raw(Backend):
    """A misbehaving upstream: ``script(reader, writer)`` does whatever the test needs."""

    def __init__(self, script) -> None:
        super().__init__()
        self.script = script

    async def handle(self, reader, writer) -> None:
        self.requests += 1
        await self.script(reader, writer)


def closed_port() -> str:
    """An address where nothing listens (bound then closed)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"
