"""Start the test app (``nonstop.testing.app``) as a subprocess and stop it again.

    with run_app(version="v1") as app:
        httpx.get(app.url)              # http://127.0.0.1:<port chosen by the kernel>/

The helper owns the child process only: it reads the ``listening on HOST:PORT`` line to learn the
port, keeps reading the output (so the pipe never fills) into ``lines``, and on exit sends SIGTERM,
then SIGKILL after a deadline. Loopback and port 0 by default, so tests never collide.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

_LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class AppProcess:
    """A running ``nonstop.testing.app`` child: its address, its output, and how to stop it."""

    proc: subprocess.Popen[str]
    version: str
    host: str = "127.0.0.1"
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def terminate(self) -> None:
        """Sends SIGTERM (the graceful drain) without waiting."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: connections are cut, nothing drains (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)


def app_command(version: str = "v1", *, port: int = 0, host: str = "127.0.0.1", boot_seconds: float = 0.0,
                health: str = "UP", fail_rate: float = 0.0, latency_ms: int = 0,
                die_after_seconds: float | None = None, shutdown_seconds: float | None = None) -> list[str]:
    """The command line that runs the test app (also usable as a ``run.command``)."""
    cmd = [sys.executable, "-m", "nonstop.testing.app", "--host", host, "--port", str(port),
           "--version", version, "--health", health]
    if boot_seconds:
        cmd += ["--boot-seconds", str(boot_seconds)]
    if fail_rate:
        cmd += ["--fail-rate", str(fail_rate)]
    if latency_ms:
        cmd += ["--latency-ms", str(latency_ms)]
    if die_after_seconds is not None:
        cmd += ["--die-after-seconds", str(die_after_seconds)]
    if shutdown_seconds is not None:
        cmd += ["--shutdown-seconds", str(shutdown_seconds)]
    return cmd


def start_app(version: str = "v1", *, startup_timeout: float = 10.0, **options) -> AppProcess:
    """Starts the app and returns once it listens. Raises RuntimeError if it exits or never binds."""
    cmd = app_command(version, **options)
    # The child imports the same nonstop as this process, wherever the caller's cwd is.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # its own session: a Ctrl-C meant for pytest stays there
    app = AppProcess(proc=proc, version=version)
    bound = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            app.lines.append(line.rstrip("\n"))
            m = _LISTENING.search(line)
            if m and not bound.is_set():
                app.host, app.port = m.group(1), int(m.group(2))
                bound.set()
        bound.set()  # EOF: the process is gone; wake the waiter up

    threading.Thread(target=pump, name=f"app-{version}-output", daemon=True).start()
    deadline = time.monotonic() + startup_timeout + float(options.get("boot_seconds") or 0)
    bound.wait(max(0.0, deadline - time.monotonic()))
    if not app.port:
        app.kill()
        proc.wait()
        raise RuntimeError(f"test app {version} did not start: {cmd}\n" + "\n".join(app.lines))
    return app


@contextlib.contextmanager
def run_app(version: str = "v1", **options) -> Iterator[AppProcess]:
    """``start_app`` as a context manager: the process is always stopped at the end."""
    app = start_app(version, **options)
    try:
        yield app
    finally:
        app.stop()
