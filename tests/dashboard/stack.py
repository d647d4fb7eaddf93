"""A real agent with its dashboard, for the dashboard tests.

``make_stack`` writes a ``nonstop.yml`` in a temp dir (free ports, the Python
test app behind a tiny wrapper: versions named ``bad…`` answer 500 to every
``GET /``), runs ``python -m nonstop.agent --config …`` as a subprocess with the
dashboard on ``127.0.0.1:0`` and reads the address it bound from
``<state_dir>/dashboard.url``. Teardown: ``nonstop down``, then anything the
stack started that is still alive is ended by PID (agent, proxy, instances).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from tests.e2e.helpers import stack_ports

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
WRAPPER = """#!/bin/sh
# the test app; a version named bad* answers 500 to every GET /
port="$1"; version="$2"; shift 2
case "$version" in bad*) set -- --fail-rate 1.0 "$@";; esac
exec "{python}" -m nonstop.testing.app --port "$port" --version "$version" "$@"
"""


def wait_for(pred, timeout: float = 15.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class AgentStack:
    dir: Path
    cfg_path: Path
    listen: int
    ports: list[int]
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    dashboard: str = ""
    pids: set[int] = field(default_factory=set)

    @property
    def state(self) -> Path:
        return self.dir / ".nonstop"

    @property
    def url(self) -> str:
        """The app, through the proxy."""
        return f"http://127.0.0.1:{self.listen}/"

    @property
    def token(self) -> str:
        return (self.state / "token").read_text().strip()

    def start(self) -> None:
        self.log_path = self.dir / "agent.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nonstop.agent", "--config", str(self.cfg_path)],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.pids.add(self.proc.pid)
        url_file = self.state / "dashboard.url"

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log()}")
            return url_file.exists() and (self.state / "agent.sock").exists()

        wait_for(ready, 30, what="the agent and its dashboard")
        self.dashboard = url_file.read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path and self.log_path.exists() else ""

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nonstop", "-c", str(self.cfg_path), *args],
            cwd=self.dir, capture_output=True, text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1"},
        )

    def cli_async(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "nonstop", "-c", str(self.cfg_path), *args],
            cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"},
        )

    def deploy(self, version: str, expect: int = 0) -> None:
        r = self.cli("deploy", "--version", version)
        assert r.returncode == expect, f"deploy {version}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}\n{self.log()}"

    def _started_pids(self) -> set[int]:
        pids = set(self.pids)
        for name in ("agent", "proxy"):
            try:
                pids.add(int((self.state / f"{name}.pid").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        db = self.state / "nonstop.db"
        if db.exists():
            con = sqlite3.connect(db)
            try:
                pids |= {p for (p,) in con.execute("SELECT pid FROM instances WHERE pid IS NOT NULL AND state != 'stopped'")}
            except sqlite3.Error:
                pass
            finally:
                con.close()
        return pids

    def stop(self) -> None:
        pids = self._started_pids()
        try:
            self.cli("down", timeout=60)
        except subprocess.TimeoutExpired:
            pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        for pid in pids | self._started_pids():
            try:
                p = psutil.Process(pid)
                if "nonstop" in " ".join(p.cmdline()):
                    p.kill()
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass


def make_stack(dir: Path, **overrides) -> AgentStack:
    dir.mkdir(parents=True, exist_ok=True)
    listen, *ports = stack_ports(3)
    wrapper = dir / "app.sh"
    wrapper.write_text(WRAPPER.replace("{python}", sys.executable))
    cfg = {
        "app": "shop",
        "listen": f"127.0.0.1:{listen}",
        "run": {"command": ["/bin/sh", str(wrapper), "{port}", "{version}"], "ports": ",".join(map(str, ports)), "stop_timeout": "5s"},
        "health": {"path": "/health", "expect_body": "UP", "interval": "100ms", "startup_timeout": "15s", "healthy_threshold": 2},
        "strategy": {
            "type": "canary",
            "sticky": False,  # loopback clients all hash alike: random buckets spread them
            "steps": [{"weight": 20, "pause": "manual"}],
            "analysis": {"interval": "1s", "max_error_rate": 0.2, "min_requests": 5, "failure_limit": 2},
        },
        "drain_timeout": "5s",
        "hold_timeout": "5s",
        "dashboard": {"listen": "127.0.0.1:0"},
    }
    for k, v in overrides.items():
        cfg[k] = v
    path = dir / "nonstop.yml"
    path.write_text(yaml.safe_dump(cfg))
    return AgentStack(dir, path, listen, ports)




def save_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def state_json(stack: AgentStack) -> dict:
    import httpx

    return httpx.get(stack.dashboard + "api/state", timeout=5, trust_env=False).json()
