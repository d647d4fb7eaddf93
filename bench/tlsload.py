"""HTTPS for bench/proxy.py --tls: the self-signed certificate, and the new-handshake load.

``make_cert(dir)`` writes an ECDSA P-256 certificate for ``localhost`` / 127.0.0.1 (the key type
nonstop's ACME client asks for), the key 0600 from its first byte.

Run as a script, this file is the handshake load: ``threads`` loops, each connecting, doing a
**full** TLS handshake (a fresh ``SSLSocket`` with no session: the client never offers a ticket or
session ID, so nothing is resumed whatever the server allows), sending one
``GET /`` with ``Connection: close`` and reading the answer to its end; then again, until
``seconds`` are up. It prints one ``HANDSHAKES_JSON {...}`` line: completed handshakes, errors,
p50/p99 of connect → last byte, how many were resumed (must be 0) and the client's own CPU, so a
reader sees when the client, not the server, was the limit. The handshake itself runs in OpenSSL
with the GIL released, so the threads overlap.

    python bench/tlsload.py --port 8443 --seconds 5 --threads 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import backend_servers as backends

_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def make_cert(directory: Path) -> backends.TlsFiles:
    """A self-signed ECDSA P-256 certificate valid for a day; the key and the combined PEM are 0600."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    files = backends.TlsFiles(directory / "bench.crt", directory / "bench.key", directory / "bench.pem",
                              "ECDSA P-256 (self-signed)")
    files.cert.write_bytes(cert_pem)
    _write_secret(files.key, key_pem)
    _write_secret(files.combined, cert_pem + key_pem)
    return files


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the first byte
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def handshake_once(port: int, ctx: ssl.SSLContext) -> bool:
    """One connection: full handshake, one request, the answer read to EOF. Whether it was resumed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(_REQUEST)
            head = s.recv(65536)
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError(f"not a 200: {head[:40]!r}")
            while s.recv(65536):
                pass
            return s.session_reused


def run(port: int, seconds: float, threads: int) -> dict:
    ctx = backends.client_context()
    deadline = time.monotonic() + seconds
    lat: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    resumed = [0] * threads

    def loop(i: int) -> None:
        while True:
            t0 = time.monotonic()
            if t0 >= deadline:
                return
            try:
                resumed[i] += handshake_once(port, ctx)
            except (OSError, ssl.SSLError):
                errors[i] += 1
                continue
            lat[i].append(time.monotonic() - t0)

    cpu0, t0 = os.times(), time.monotonic()
    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.monotonic() - t0
    cpu1 = os.times()
    done = sorted(x for per in lat for x in per)
    return {
        "handshakes": len(done), "duration_s": wall, "errors": sum(errors), "resumed": sum(resumed),
        "p50_ms": _pct(done, 50) * 1000, "p99_ms": _pct(done, 99) * 1000,
        "client_cpu_pct": 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall,
    }


def _pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="new TLS handshakes per second against 127.0.0.1:PORT")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=8)
    args = p.parse_args(argv)
    print("HANDSHAKES_JSON " + json.dumps(run(args.port, args.seconds, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
