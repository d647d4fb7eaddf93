"""Whole deployments against real processes: agent, proxy, app instances, a load client.

``stack`` writes a ``nonstop.yml`` in a temp dir (free ports, the Python test
app as ``run.command``), starts the agent with ``nonstop up --detach`` and
gives the test a ``Stack`` to drive it with the real CLI (``env=`` adds
variables to the CLI's environment, and so to the agent its ``up`` starts: a
container engine's ``DOCKER_HOST``, for one). Teardown runs
``nonstop down`` and then ends, by PID, anything the stack started that is
still alive (agent, proxy, instances).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e.helpers import stack_ports

APP = [sys.executable, "-m", "nonstop.testing.app", "--port", "{port}", "--version", "{version}"]


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)


@dataclass
class Stack:
    dir: Path
    cfg_path: Path
    listen: int
    ports: list[int]
    started_pids: set[int] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)  # added to the CLI's environment (the agent inherits it from `up`)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen}/"

    @property
    def state(self) -> Path:
        try:
            sd = yaml.safe_load(self.cfg_path.read_text()).get("state_dir") or ".nonstop"
        except (OSError, yaml.YAMLError, AttributeError):
            sd = ".nonstop"  # a test broke the file on purpose
        return self.dir / sd

    def cli(self, *args: str, timeout: float = 120, check: bool = False) -> CliResult:
        env = {**os.environ, **self.env, "NO_COLOR": "1"}
        r = subprocess.run(
            [sys.executable, "-m", "nonstop", "-c", str(self.cfg_path), *args],
            cwd=self.dir, capture_output=True, text=True, timeout=timeout, env=env,
        )
        res = CliResult(r.returncode, r.stdout, r.stderr)
        if check and r.returncode != 0:
            raise AssertionError(f"nonstop {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
        return res

    def cli_async(self, *args: str) -> subprocess.Popen:
        env = {**os.environ, **self.env, "NO_COLOR": "1"}
        return subprocess.Popen(
            [sys.executable, "-m", "nonstop", "-c", str(self.cfg_path), *args],
            cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )

    def deploy(self, version: str, *extra: str, expect: int = 0) -> dict:
        r = self.cli("deploy", "--version", version, "--json", *extra)
        assert r.code == expect, f"deploy {version}: exit {r.code} (expected {expect})\n{r.out[-3000:]}\n{r.err[-3000:]}"
        return r.json

    def status(self) -> dict:
        return self.cli("status", "--json", check=True).json

    def pid(self, name: str) -> int | None:
        try:
            return int((self.state / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def write_config(self, **overrides) -> None:
        cfg = yaml.safe_load(self.cfg_path.read_text())
        _merge(cfg, overrides)
        self.cfg_path.write_text(yaml.safe_dump(cfg))


def _merge(base: dict, over: dict) -> None:
    """Deep merge, except that a new ``strategy`` or ``router`` block replaces the old one whole."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("strategy", "router"):
            _merge(base[k], v)
        else:
            base[k] = v


def make_config(dir: Path, listen: int, ports: list[int], **overrides) -> Path:
    cfg = {
        "app": "e2e",
        "listen": f"127.0.0.1:{listen}",
        "run": {"command": APP, "ports": ",".join(map(str, ports)), "stop_timeout": "10s"},
        "health": {"path": "/health", "expect_body": "UP", "interval": "100ms", "startup_timeout": "10s", "healthy_threshold": 2},
        "strategy": {"type": "blue-green", "keep_previous": "10m"},
        "drain_timeout": "15s",
        "hold_timeout": "10s",
        "dashboard": {"enabled": False},
    }
    _merge(cfg, overrides)
    path = dir / "nonstop.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _descendants_of_state(state: Path) -> set[int]:
    """PIDs the stack started: agent and proxy (pid files) and instances (the store)."""
    pids: set[int] = set()
    for name in ("agent", "proxy"):
        try:
            pids.add(int((state / f"{name}.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    db = state / "nonstop.db"
    if db.exists():
        import sqlite3

        con = sqlite3.connect(db)
        try:
            for (pid,) in con.execute("SELECT pid FROM instances WHERE pid IS NOT NULL AND state != 'stopped'"):
                pids.add(pid)
        except sqlite3.Error:
            pass
        finally:
            con.close()
    return pids


def _factory(root: Path, stacks: list[Stack]):
    def make(n_ports: int = 2, up: bool = True, env: dict[str, str] | None = None, **overrides) -> Stack:
        """``env``: variables for the CLI and so the agent (a container engine's ``DOCKER_HOST``, …)."""
        d = root / f"stack{len(stacks)}"
        d.mkdir()
        listen, *ports = stack_ports(n_ports + 1)
        cfg_path = make_config(d, listen, ports, **overrides)
        st = Stack(d, cfg_path, listen, ports, env=dict(env or {}))
        stacks.append(st)
        if up:
            st.cli("up", "--detach", "--timeout", "60", check=True)
        return st

    return make


def _tear_down(stacks: list[Stack]) -> None:
    """``nonstop down``, then end by PID whatever the stack started that is still alive."""
    for st in stacks:
        pids = _descendants_of_state(st.state)
        try:
            st.cli("down", timeout=60)
        except subprocess.TimeoutExpired:
            pass
        pids |= _descendants_of_state(st.state)
        for pid in pids:
            try:
                p = psutil.Process(pid)
                if "nonstop" in " ".join(p.cmdline()):
                    os.killpg(os.getpgid(pid), signal.SIGKILL) if os.getpgid(pid) == pid else p.kill()
            except (psutil.Error, ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator:
    stacks: list[Stack] = []
    yield _factory(tmp_path, stacks)
    _tear_down(stacks)


@pytest.fixture(scope="module")
def module_stack_factory(tmp_path_factory) -> Iterator:
    """``stack_factory`` for stacks that several tests of one module share (each leaves it as it found it)."""
    stacks: list[Stack] = []
    yield _factory(tmp_path_factory.mktemp("stacks"), stacks)
    _tear_down(stacks)


@pytest.fixture
def stack(stack_factory) -> Stack:
    return stack_factory()


@pytest.fixture
def ca(tmp_path: Path):
    """A test certificate authority (trustme), its certificate written to ``tmp_path / "ca.pem"`` for clients
    to trust; ``tests/e2e/_https_helpers.py`` issues the site's certificates from it."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return ca
