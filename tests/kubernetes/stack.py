"""A kubernetes "stack" for the agent's end-to-end tests: the real CLI and a real agent process, against the
API's transport fake (``fakeapi.py``, on loopback in the test process: no Kubernetes server can run here).

``KubeStack`` writes a ``nonstop.yml`` (runtime kubernetes, the kubeconfig of the fake, a short
``poll_interval``) in a temp dir, runs ``nonstop`` as a subprocess for every verb, and at the end runs
``nonstop down`` and then ends, by PID, an agent it started that is still alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.e2e.conftest import CliResult as Result
from tests.kubernetes.kube import merge

BASE = {
    "app": "roomescape",
    "run": {"runtime": "kubernetes", "image": "registry.example/roomescape:{version}", "container_port": 8080, "instances": 2},
    "health": {"path": "/actuator/health", "interval": "1s", "startup_timeout": "30s", "healthy_threshold": 1},
    "strategy": {"type": "rolling", "max_surge": 1, "max_unavailable": 0},
    "drain_timeout": "5s",
    "keep_releases": 5,
    "dashboard": {"enabled": False},
    "kubernetes": {"namespace": "roomescape", "prestop_sleep": "1s", "poll_interval": "50ms", "lease_duration": "10s"},
}


@dataclass
class KubeStack:
    dir: Path
    kubeconfig: str
    config: dict = field(default_factory=dict)

    @property
    def cfg_path(self) -> Path:
        return self.dir / "nonstop.yml"

    @property
    def state(self) -> Path:
        return self.dir / ".nonstop"

    def write(self, **over) -> None:
        """(Re)write nonstop.yml: ``BASE`` with ``over`` merged in (a ``strategy`` with a type replaces)."""
        self.config = merge(BASE, {"kubernetes": {"kubeconfig": self.kubeconfig}})
        self.config = merge(self.config, over)
        self.cfg_path.write_text(yaml.safe_dump(self.config))

    def _env(self) -> dict:
        return {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}

    def cli(self, *args: str, timeout: float = 60) -> Result:
        r = subprocess.run([sys.executable, "-m", "nonstop", "-c", str(self.cfg_path), *args], cwd=self.dir,
                           capture_output=True, text=True, timeout=timeout, env=self._env())
        return Result(r.returncode, r.stdout, r.stderr)

    def ok(self, *args: str, timeout: float = 60) -> Result:
        r = self.cli(*args, timeout=timeout)
        assert r.code == 0, f"nonstop {' '.join(args)}: exit {r.code}\n{r.out[-3000:]}\n{r.err[-3000:]}\n{self.agent_log()}"
        return r

    def background(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "nonstop", "-c", str(self.cfg_path), *args], cwd=self.dir,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env())

    def deploy(self, version: str, *extra: str, expect: int = 0) -> dict:
        r = self.cli("deploy", "--version", version, "--json", *extra)
        assert r.code == expect, f"deploy {version}: exit {r.code} (expected {expect})\n{r.out[-3000:]}\n{r.err[-3000:]}\n{self.agent_log()}"
        return r.json

    def status(self) -> dict:
        return self.ok("status", "--json").json

    def wait_status(self, pred, timeout: float = 20.0, what: str = "status") -> dict:
        deadline = time.monotonic() + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = self.status()
            if pred(st):
                return st
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status: {json.dumps(st)[:3000]}\n{self.agent_log()}")

    def agent_pid(self) -> int | None:
        try:
            return int((self.state / "agent.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def agent_log(self) -> str:
        try:
            return "agent.log:\n" + (self.state / "logs" / "agent.log").read_text()[-4000:]
        except OSError:
            return "(no agent log)"

    def close(self) -> None:
        pid = self.agent_pid()
        if pid is not None and _alive(pid):
            self.cli("down", timeout=30)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Hooks:
    """A webhook receiver on 127.0.0.1:0 (``notify:``): keeps each JSON body it is sent."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        got = self.bodies = []

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the stdlib's name
                n = int(self.headers.get("Content-Length") or 0)
                got.append(json.loads(self.rfile.read(n) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
