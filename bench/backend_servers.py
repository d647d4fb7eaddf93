"""The servers bench/proxy.py runs: a backend, and the proxies compared in front of it.

Each is a foreground process (no daemonising) started in its own session with its config and logs in
the bench's temp dir, so it is stopped by PID and leaves nothing behind. Configs are generated here
and kept deliberately plain: what an operator would write for a keep-alive reverse proxy, sized by
``Sizing`` for the most connections a run opens (file descriptors, nginx ``worker_connections``,
HAProxy ``maxconn``), so no server refuses a connection because of a default limit.

A server can be started on chosen CPUs (``Server.cpus``, ``--pin``): the bench process moves itself
onto them just for the ``fork``, so every process and thread the server starts inherits them, and
``Server.pin()`` checks (and fixes) every task of the tree again before each measured run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

# the listen backlog of every server: nonstop's own (ProxyConfig.backlog), so a burst of new connections
# (wrk opening 2,000 at once) queues the same way everywhere
BACKLOG = 2048


def free_port() -> int:
    """A port the kernel just handed out on loopback (nginx and HAProxy need one in their config)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartError(Exception):
    """A server could not be started; the message says why (shown in the table, run goes on)."""


@dataclass(frozen=True)
class Sizing:
    """The limits every server is configured with, from the most connections one run opens.

    ``nofile`` is the bench's RLIMIT_NOFILE (raised to the hard limit before anything starts; children
    inherit it). A proxy holds a client and an upstream descriptor per connection, hence the 2×.
    """

    connections: int = 50
    nofile: int = 65536

    @property
    def worker_connections(self) -> int:
        return max(4096, 2 * self.connections + 256)

    @property
    def maxconn(self) -> int:
        return max(4096, self.connections + 256)


@dataclass(frozen=True)
class TlsFiles:
    """The bench's self-signed certificate: chain, key (0600) and both in one file (HAProxy's ``crt``)."""

    cert: Path
    key: Path
    combined: Path
    key_type: str


@dataclass
class Server:
    """One started server process (and its children: nginx workers, nonstop workers)."""

    name: str
    cmd: list[str]
    port: int
    workdir: Path
    env: dict[str, str] | None = None
    tls: bool = False  # the port speaks HTTPS (the readiness check and the load use TLS)
    cpus: set[int] | None = None  # --pin: the cores its whole tree runs on
    proc: subprocess.Popen | None = None
    log: Path | None = field(default=None)
    negotiated: str = ""  # TLS version and cipher the readiness check got

    def start(self, ready_timeout: float = 15.0) -> None:
        self.log = self.workdir / f"{self.name.replace(' ', '_')}.log"
        out = open(self.log, "wb")
        mine = os.sched_getaffinity(0)
        try:
            if self.cpus is not None:
                os.sched_setaffinity(0, self.cpus)  # inherited by the fork: the server starts on its cores
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env=self.env, start_new_session=True)
        except OSError as e:
            raise StartError(f"{self.cmd[0]}: {e}") from e
        finally:
            if self.cpus is not None:
                os.sched_setaffinity(0, mine)
            out.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"exited with {self.proc.returncode}: {self.tail()}")
            answer = _answers(self.port, self.tls)
            if answer is not None:
                self.negotiated = answer
                self.pin()
                return
            time.sleep(0.05)
        raise StartError(f"no 200 on port {self.port} within {ready_timeout}s: {self.tail()}")

    def processes(self) -> list[psutil.Process]:
        """The server's process tree, for CPU and memory accounting."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            p = psutil.Process(self.proc.pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pin(self) -> int:
        """Put every thread of the tree on ``cpus`` (those already there are left alone); how many tasks."""
        if self.cpus is None:
            return 0
        tasks = 0
        for p in self.processes():
            try:
                tids = [t.id for t in p.threads()]
            except psutil.NoSuchProcess:
                continue
            for tid in tids:
                try:
                    if os.sched_getaffinity(tid) != self.cpus:
                        os.sched_setaffinity(tid, self.cpus)
                    tasks += 1
                except (ProcessLookupError, PermissionError):
                    pass  # a thread that just ended
        return tasks

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def memory_mb(self) -> tuple[float, float]:
        """(RSS, USS) of the whole tree in MB: RSS summed over processes (pages shared between them,
        like nginx's master and workers, count once per process), USS the memory only each one holds."""
        rss = uss = 0
        for p in self.processes():
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            uss += info.uss
        return rss / 1e6, uss / 1e6

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the main PID; SIGKILL it and any child left after ``timeout``."""
        if self.proc is None:
            return
        children = self.processes()[1:]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in children:  # by PID: only what this server started
            try:
                if child.is_running():
                    child.kill()
            except psutil.NoSuchProcess:
                pass

    def tail(self, lines: int = 1) -> str:
        """The last lines of the server's output: usually the reason it failed."""
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_bytes()[-4000:].decode(errors="replace")
        return " | ".join([ln.strip() for ln in text.splitlines() if ln.strip()][-lines:])


def client_context() -> ssl.SSLContext:
    """The bench's TLS client: no verification (the certificate is our own), no session reuse."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _answers(port: int, tls: bool) -> str | None:
    """None until the server answers 200; then the TLS version and cipher it negotiated ("" for HTTP)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            s = client_context().wrap_socket(raw, server_hostname="localhost") if tls else raw
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            if not s.recv(64).startswith(b"HTTP/1.1 200"):
                return None
            return f"{s.version()} {s.cipher()[0]}" if tls else ""
    except (OSError, ssl.SSLError):
        return None


# -- nginx: the backend, and the reference proxy --

_NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}.body;
    proxy_temp_path {dir}/{name}.proxy;
    fastcgi_temp_path {dir}/{name}.fastcgi;
    uwsgi_temp_path {dir}/{name}.uwsgi;
    scgi_temp_path {dir}/{name}.scgi;
    # wrk keeps its connections for the whole run; the default (1000) would make nginx, and only
    # nginx, close and reopen them.
    keepalive_requests 1000000;
{body}
}}
"""

_BACKEND = """\
    server {{
        listen 127.0.0.1:{port} backlog={backlog};
        location / {{ return 200 "ok\\n"; }}
    }}
"""

_NGINX_PROXY = """\
    upstream backend {{
        server 127.0.0.1:{backend};
        # idle connections kept per worker: as many as nonstop's pool may keep (pool.MAX_IDLE); HAProxy
        # keeps every one by default. With fewer than a run's concurrent requests (128 until issue 16), a
        # proxy closes connections the next requests must open again, and the table measures that instead.
        keepalive 4096;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl} backlog={backlog};
{tls}        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # the headers nonstop's proxy sets too, so both do the same work
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
"""

# nonstop's TLS settings (nonstop/proxy/certs.py): TLS 1.2 and 1.3, the same TLS 1.2 suites; TLS 1.3
# keeps OpenSSL's suites everywhere. Session tickets stay at each server's default (on).
_NGINX_TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
"""


def tls_ciphers() -> str:
    from nonstop.proxy.certs import CIPHERS  # the bench is not the data plane: reading its constant is fine
    return CIPHERS


def nginx(name: str, workdir: Path, port: int, *, workers: int = 1, backend: int | None = None,
          sizing: Sizing = Sizing(), tls: TlsFiles | None = None, cpus: set[int] | None = None) -> Server:
    """nginx in the foreground: ``return 200`` when ``backend`` is None, else a keep-alive proxy to it."""
    if backend is None:
        body = _BACKEND.format(port=port, backlog=BACKLOG)
    else:
        tls_lines = _NGINX_TLS.format(cert=tls.cert, key=tls.key, ciphers=tls_ciphers()) if tls else ""
        body = _NGINX_PROXY.format(port=port, backend=backend, backlog=BACKLOG, ssl=" ssl" if tls else "",
                                   tls=tls_lines)
    conf = workdir / f"{name}.conf"
    conf.write_text(_NGINX_COMMON.format(workers=workers, dir=workdir, name=name, body=body, nofile=sizing.nofile,
                                         worker_connections=sizing.worker_connections))
    return Server(name, [_which("nginx"), "-p", str(workdir), "-c", str(conf)], port, workdir,
                  tls=tls is not None, cpus=cpus)


# -- HAProxy --

_HAPROXY = """\
global
    nbthread {threads}
    maxconn {maxconn}
defaults
    mode http
    maxconn {maxconn}
    backlog {backlog}
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # keep-alive on both sides is HAProxy's default (http-keep-alive, http-reuse safe)
    option forwardfor
frontend fe
    bind 127.0.0.1:{port}{ssl}
    # the headers nginx and nonstop set too, so all three do the same work
    http-request set-header X-Forwarded-Proto {scheme}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
"""


def haproxy(name: str, workdir: Path, port: int, backend: int, *, threads: int = 1, sizing: Sizing = Sizing(),
            tls: TlsFiles | None = None, cpus: set[int] | None = None) -> Server:
    conf = workdir / f"{name}.cfg"
    ssl_opts = f" ssl crt {tls.combined} alpn http/1.1 ssl-min-ver TLSv1.2 ciphers {tls_ciphers()}" if tls else ""
    conf.write_text(_HAPROXY.format(threads=threads, port=port, backend=backend, maxconn=sizing.maxconn,
                                    backlog=BACKLOG, ssl=ssl_opts, scheme="https" if tls else "http"))
    # -db: foreground, no daemon; one process, `threads` threads. HAProxy raises its own fd limit for maxconn.
    return Server(name, [_which("haproxy"), "-db", "-f", str(conf)], port, workdir, tls=tls is not None, cpus=cpus)


# -- nonstop's own proxy --


def nonstop_help() -> str:
    """``python -m nonstop.proxy --help``, or StartError saying why it cannot run (yet)."""
    try:
        out = subprocess.run([sys.executable, "-m", "nonstop.proxy", "--help"], capture_output=True, text=True,
                             timeout=30, cwd=ROOT, env=_env())
    except subprocess.TimeoutExpired as e:
        raise StartError("python -m nonstop.proxy --help timed out") from e
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StartError(f"python -m nonstop.proxy is not runnable: {last}")
    return out.stdout


def nonstop(name: str, workdir: Path, port: int, backend: int, *, workers: int = 1, help_text: str = "",
            tls: TlsFiles | None = None, cpus: set[int] | None = None) -> Server:
    """``python -m nonstop.proxy``; with ``tls`` it serves HTTPS on ``port`` (and plain HTTP on another).

    Its limits need no flag: it takes the RLIMIT_NOFILE it inherits and has no connection cap; its
    backlog is ``BACKLOG``."""
    plain = free_port() if tls else port
    cmd = [sys.executable, "-m", "nonstop.proxy", "--listen", f"127.0.0.1:{plain}",
           "--upstream", f"127.0.0.1:{backend}"]
    if tls:
        if "--tls-listen" not in help_text:
            raise StartError("nonstop proxy has no --tls-listen option")
        cmd += ["--tls-listen", f"127.0.0.1:{port}", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    if workers > 1:
        if "--workers" not in help_text:
            raise StartError("nonstop proxy has no --workers option")
        cmd += ["--workers", str(workers)]
    # Keep its state out of the repo: only the options it actually has.
    state = workdir / name.replace(" ", "_")
    state.mkdir(exist_ok=True)
    for opt, value in (("--admin-socket", state / "proxy.sock"), ("--routes-file", state / "routes.json"),
                       ("--pid-file", state / "proxy.pid")):
        if opt in help_text:
            cmd += [opt, str(value)]
    return Server(name, cmd, port, workdir, env=_env(), tls=tls is not None, cpus=cpus)


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def _which(binary: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise StartError(f"{binary} not found on PATH")
    return found
