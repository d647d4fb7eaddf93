"""Shared pieces of the TLS tests: certificate files from a test CA (trustme), a TLS echo server on port 0."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from pathlib import Path

import trustme

from nonstop.proxy.tls import CertSource


def write_pair(dirpath: Path, ca: trustme.CA, *names: str, stem: str = "site", field: str = "tls",
               not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> CertSource:
    """A certificate for ``names`` and its key as ``<stem>.crt`` / ``<stem>.key`` (each written whole, by rename)."""
    leaf = ca.issue_cert(*names, not_before=not_before, not_after=not_after)
    cert, key = dirpath / f"{stem}.crt", dirpath / f"{stem}.key"
    replace_file(key, leaf.private_key_pem.bytes())
    replace_file(cert, b"".join(p.bytes() for p in leaf.cert_chain_pems))
    return CertSource(field, str(cert), str(key))


def replace_file(path: Path, data: bytes) -> None:
    """What a renewal does: write beside, then rename over (readers see old or new, never half)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def client_context(ca: trustme.CA, *, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class EchoServer:
    """A TLS line-echo server on 127.0.0.1:0 served by the running loop with ``ctx``."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> "EchoServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def connect(port: int, ctx: ssl.SSLContext, server_hostname: str | None):
    """A client connection; returns (reader, writer, fingerprint of the certificate the server sent)."""
    import hashlib

    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_hostname), 5
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return reader, writer, hashlib.sha256(der).hexdigest()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: bytes) -> bytes:
    writer.write(text + b"\n")
    await writer.drain()
    return (await asyncio.wait_for(reader.readline(), 5)).rstrip(b"\n")
