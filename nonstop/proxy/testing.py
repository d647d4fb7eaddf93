"""Helpers to run a proxy in tests, benches and demos: as a child process, or inside the caller's event loop.

``run_proxy`` starts ``python -m nonstop.proxy`` on port 0, waits for its
ready line, and always stops it (SIGTERM, then SIGKILL) by its own PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from nonstop.proxy.config import ProxyConfig

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class ProxyProcess:
    """A proxy child process: where it listens, its admin socket, its Popen."""

    addr: str
    admin_socket: str
    proc: subprocess.Popen
    workdir: str
    routes_file: str
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL when it does not exit in ``timeout``. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def close(self, remove_workdir: bool = True) -> int:
        """Terminate (as above), release the stdout pipe and, by default, remove the work directory."""
        code = self.terminate()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code


def start_proxy(
    *args: str,
    upstreams: list[str] = (),
    workdir: str | None = None,
    listen: str = "127.0.0.1:0",
    admin_socket: str | None = None,
    takeover: bool = False,
    timeout: float = 20.0,
    env: dict | None = None,
) -> ProxyProcess:
    """Start ``python -m nonstop.proxy`` and wait for its ready line. Extra CLI ``args`` pass through."""
    workdir = workdir or tempfile.mkdtemp(prefix="nsp-", dir="/tmp")
    admin_socket = admin_socket or os.path.join(workdir, "proxy.sock")
    routes_file = os.path.join(workdir, "routes.json")
    cmd = [sys.executable, "-m", "nonstop.proxy", "--listen", listen, "--admin-socket", admin_socket,
           "--routes-file", routes_file]
    for u in upstreams:
        cmd += ["--upstream", u]
    if takeover:
        cmd.append("--takeover")
    cmd += list(args)
    penv = dict(os.environ)
    penv["PYTHONPATH"] = _ROOT + (os.pathsep + penv["PYTHONPATH"] if penv.get("PYTHONPATH") else "")
    penv.update(env or {})
    log = open(os.path.join(workdir, f"proxy-{time.monotonic_ns()}.log"), "wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=penv, cwd=_ROOT)
    log.close()
    deadline = time.monotonic() + timeout
    line = b""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
            if b"\n" in line:
                break
    finally:
        sel.close()
    text = line.decode(errors="replace")
    if not text.startswith("ready "):
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        raise RuntimeError(f"proxy did not start (exit {proc.returncode}): {text!r}; log in {workdir}")
    fields = dict(part.split("=", 1) for part in text.split()[1:])
    return ProxyProcess(fields["listen"], admin_socket, proc, workdir, routes_file, cmd)


@contextlib.contextmanager
def run_proxy(*args: str, upstreams: list[str] = (), keep_workdir: bool = False, **kw):
    """Context manager around :func:`start_proxy`; stops the process (by PID) on exit."""
    p = start_proxy(*args, upstreams=upstreams, **kw)
    try:
        yield p
    finally:
        p.terminate()
        if p.proc.stdout is not None:
            p.proc.stdout.close()
        if not keep_workdir:
            shutil.rmtree(p.workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def serve_in_loop(cfg: ProxyConfig):
    """A ProxyServer inside the running event loop (fast tests); yields it, stops it on exit."""
    from nonstop.proxy.server import ProxyServer

    server = ProxyServer(cfg)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
