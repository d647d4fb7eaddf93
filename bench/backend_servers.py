"""The servers bench/proxy.py runs: a backend, and the proxies compared in front of it.

Each is a foreground process (no daemonising) started in its own session with its config and logs in
the bench's temp dir, so it is stopped by PID and leaves nothing behind. Configs are generated here
and kept deliberately plain: what an operator would write for a keep-alive reverse proxy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port the kernel just handed out on loopback (nginx and HAProxy need one in their config)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartError(Exception):
    """A server could not be started; the message says why (shown in the table, run goes on)."""


@dataclass
class Server:
    """One started server process (and its children: nginx workers, nonstop workers)."""

    name: str
    cmd: list[str]
    port: int
    workdir: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = field(default=None)

    def start(self, ready_timeout: float = 15.0) -> None:
        self.log = self.workdir / f"{self.name.replace(' ', '_')}.log"
        out = open(self.log, "wb")
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env=self.env, start_new_session=True)
        except OSError as e:
            raise StartError(f"{self.cmd[0]}: {e}") from e
        finally:
            out.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"exited with {self.proc.returncode}: {self.tail()}")
            if _answers(self.port):
                return
            time.sleep(0.05)
        raise StartError(f"no 200 on port {self.port} within {ready_timeout}s: {self.tail()}")

    def processes(self) -> list[psutil.Process]:
        """The server's process tree, for CPU accounting."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            p = psutil.Process(self.proc.pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

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


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


# -- nginx: the backend, and the reference proxy --

_NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 4096; }}
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
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok\\n"; }}
    }}
"""

_NGINX_PROXY = """\
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
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


def nginx(name: str, workdir: Path, port: int, *, workers: int = 1, backend: int | None = None) -> Server:
    """nginx in the foreground: ``return 200`` when ``backend`` is None, else a keep-alive proxy to it."""
    body = _BACKEND.format(port=port) if backend is None else _NGINX_PROXY.format(port=port, backend=backend)
    conf = workdir / f"{name}.conf"
    conf.write_text(_NGINX_COMMON.format(workers=workers, dir=workdir, name=name, body=body))
    return Server(name, [_which("nginx"), "-p", str(workdir), "-c", str(conf)], port, workdir)


# -- HAProxy --

_HAPROXY = """\
global
    nbthread {threads}
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # keep-alive on both sides is HAProxy's default (http-keep-alive, http-reuse safe)
    option forwardfor
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
"""


def haproxy(name: str, workdir: Path, port: int, backend: int, *, threads: int = 1) -> Server:
    conf = workdir / f"{name}.cfg"
    conf.write_text(_HAPROXY.format(threads=threads, port=port, backend=backend))
    # -db: foreground, no daemon; one process, `threads` threads.
    return Server(name, [_which("haproxy"), "-db", "-f", str(conf)], port, workdir)


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


def nonstop(name: str, workdir: Path, port: int, backend: int, *, workers: int = 1, help_text: str = "") -> Server:
    cmd = [sys.executable, "-m", "nonstop.proxy", "--listen", f"127.0.0.1:{port}",
           "--upstream", f"127.0.0.1:{backend}"]
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
    return Server(name, cmd, port, workdir, env=_env())


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def _which(binary: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin:/sbin")
    if not found:
        raise StartError(f"{binary} not found on PATH")
    return found
