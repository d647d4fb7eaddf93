"""A tiny keep-alive HTTP/1.1 backend for router tests (run as a subprocess).

    python tests/routers/backend.py --version v1 [--port 0]

Prints ``listening on 127.0.0.1:PORT`` once bound. ``GET /slow?ms=N`` sleeps N ms;
every other request gets ``200 <version>``. Request bodies (Content-Length) are read
and ignored. Responses carry ``X-App-Version`` and echo the request's ``X-Forwarded-For``
as ``X-Seen-Forwarded-For``. SIGTERM: exit at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: str) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length") or 0)
            if n:
                await reader.readexactly(n)
            if target.startswith("/slow"):
                ms = int(target.partition("ms=")[2] or 100)
                await asyncio.sleep(ms / 1000)
            body = f"{version}\n".encode()
            close = headers.get("connection", "").lower() == "close"
            out = (
                f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"X-App-Version: {version}\r\nX-Seen-Forwarded-For: {headers.get('x-forwarded-for', '')}\r\n"
                f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
            ).encode() + (b"" if method == "HEAD" else body)
            writer.write(out)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--version", default="v1")
    a = ap.parse_args()
    server = await asyncio.start_server(lambda r, w: handle(r, w, a.version), "127.0.0.1", a.port, backlog=512)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()  # until SIGTERM (default action: exit at once)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
