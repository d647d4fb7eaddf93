"""A real ACME CA for the tests: Debian's ``pebble``, its challenge-test DNS, and an HTTP-01 responder.

``Pebble.start(tmp)`` runs, from a temp dir and on loopback ports of this
worker's range (``NONSTOP_TEST_PORTS``):

- ``pebble-challtestsrv`` as DNS only: every name resolves to 127.0.0.1,
- ``pebble`` with its HTTPS listener on a trustme certificate, validating
  HTTP-01 on ``http_port``, refusing ``BLOCKED`` by policy, never sleeping,
  never rejecting a good nonce, never reusing a validation (each order is
  validated again, as a renewal at a real CA may be),
- ``ChallengeServer``: what the proxy's plain listener will do for
  ``/.well-known/acme-challenge/`` (``nonstop.proxy.https``), serving the
  directory a test points it at.

Both processes are stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import trustme

from nonstop.proxy import https
from tests.e2e.helpers import stack_ports

BLOCKED = "blocked.nonstop.test"
VALIDITY = 3600  # seconds: short, like a renewal schedule would want to see


class ChallengeServer:
    """Answers HTTP-01 requests from ``directory`` on 127.0.0.1:``port`` (a thread with its own loop)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.directory = "/nonexistent"
        self.requests: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "ChallengeServer":
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("challenge server did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            target = head.split(b" ", 2)[1]
            self.requests.append(target)
            writer.write(https.challenge_response(self.directory, target)
                         or b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        def _close() -> None:
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(_close)
        self._thread.join(5)


class Pebble:
    """One pebble + DNS pair for a test session; ``directory`` and ``ca_bundle`` are what a config names."""

    def __init__(self, tmp: Path, *, http_port: int | None = None, validity: int = VALIDITY,
                 blocked: tuple[str, ...] = (BLOCKED,)) -> None:
        """``http_port``: where HTTP-01 is validated — a nonstop proxy's plain listener (then no test
        responder runs); by default a ``ChallengeServer`` of the test's own."""
        self.tmp = tmp
        self.acme_port, self.mgmt_port, own_http, self.tls_port, self.dns_port, self.dns_mgmt = stack_ports(6)
        self.http_port = http_port or own_http
        self.validity = validity
        self.blocked = list(blocked)
        self.procs: list[subprocess.Popen] = []
        self.challenges = ChallengeServer(self.http_port) if http_port is None else None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def ca_bundle(self) -> str:
        return str(self.tmp / "listener-ca.pem")

    def start(self) -> "Pebble":
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(self.ca_bundle)
        leaf.cert_chain_pems[0].write_to_path(str(self.tmp / "listener.pem"))
        leaf.private_key_pem.write_to_path(str(self.tmp / "listener.key"))
        (self.tmp / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.tmp / "listener.pem"),
            "privateKey": str(self.tmp / "listener.key"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "domainBlocklist": self.blocked,
            "certificateValidityPeriod": self.validity,
        }}))
        if self.challenges is not None:
            self.challenges.start()
        self._spawn("dns", ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "",
                            "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{self.dns_mgmt}",
                            "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""], {})
        self._spawn("pebble", ["pebble", "-config", str(self.tmp / "pebble.json"), "-strict=false",
                               "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                    {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"})
        self._wait_port(self.dns_mgmt)
        self._wait_port(self.acme_port)
        self._wait_port(self.mgmt_port)
        return self

    def _spawn(self, name: str, argv: list[str], env: dict) -> None:
        log = open(self.tmp / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(argv, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env={**os.environ, **env}))
        log.close()

    def _wait_port(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}: {self.logs()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"port {port} not open after {timeout}s: {self.logs()}")

    def logs(self) -> str:
        return "\n".join((self.tmp / f"{n}.log").read_text(errors="replace")[-2000:]
                         for n in ("dns", "pebble") if (self.tmp / f"{n}.log").exists())

    def root_pem(self) -> bytes:
        """The root the issued chains lead to (pebble makes a new one at every start)."""
        ctx = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt_port}/roots/0", context=ctx, timeout=10) as r:
            return r.read()

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs = []
        if self.challenges is not None:
            self.challenges.stop()
