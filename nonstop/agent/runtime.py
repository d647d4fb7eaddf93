"""Process runtime: app instances as plain OS processes.

An instance is a command started in its own session (``start_new_session``),
so it has its own process group, survives the agent, and can be stopped as
a whole (the app and anything it spawned). The agent records ``pid`` and the
process's start time; every later look at the pid (``alive``, ``stop``,
``adopt``) checks that start time first, so a recycled pid never gets
signalled.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

from nonstop.config import PLACEHOLDERS, Command, split_command
from nonstop.errors import ConfigError, InstanceError

__all__ = [
    "PLACEHOLDERS",
    "render",
    "InstanceSpec",
    "ProcessHandle",
    "ProcessRuntime",
    "signal_number",
    "port_in_use",
]


# `{name}` is a placeholder; `{{` / `}}` are literal braces; `${name}` is left
# alone (a shell variable, meaningful with shell: true).
_TOKEN = re.compile(r"\{\{|\}\}|\$\{[^}]*\}|\{([^{}]*)\}")


def _substitute(arg: str, values: dict[str, str], quote: bool) -> str:
    def one(m: re.Match) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        if tok.startswith("$"):
            return tok
        name = m.group(1)
        if name in values:
            v = str(values[name])
            return shlex.quote(v) if quote else v
        if name in PLACEHOLDERS:
            raise ConfigError(f"placeholder {{{name}}} has no value here", field="command")
        known = ", ".join("{" + k + "}" for k in sorted(set(PLACEHOLDERS) | set(values)))
        raise ConfigError(f"unknown placeholder {{{name}}} in command; known: {known}", field="command")

    return _TOKEN.sub(one, arg)


def render(cmd: Command, values: dict[str, str], *, shell: bool) -> list[str]:
    """The argv of a configured command with its placeholders filled in.

    The command is split first (``config.split_command``) and each argument
    substituted after, so a value with spaces stays one argument. With
    ``shell`` the command is one ``sh -c`` script and values are shell-quoted
    into it. An unknown ``{x}`` raises ``ConfigError`` naming it.
    """
    argv = split_command(cmd, shell=shell)
    if shell and not isinstance(cmd, list):
        # ["/bin/sh", "-c", script]: only the script carries placeholders.
        return argv[:2] + [_substitute(argv[2], values, quote=True)]
    return [_substitute(a, values, quote=False) for a in argv]


def signal_number(name: str | int) -> int:
    """``"SIGTERM"``, ``"TERM"`` or ``15`` → 15."""
    if isinstance(name, int):
        return name
    n = name.upper()
    if not n.startswith("SIG"):
        n = "SIG" + n
    sig = getattr(signal, n, None)
    if not isinstance(sig, signal.Signals):
        raise ConfigError(f"unknown signal {name!r}", field="run.stop_signal")
    return int(sig)


@dataclass
class InstanceSpec:
    """Everything needed to start one instance; built by the agent from the config."""

    id: str
    release: str
    version: str
    port: int
    argv: list[str]
    env: dict = field(default_factory=dict)
    cwd: str | None = None
    log_path: Path = Path("instance.log")
    stop_signal: str = "SIGTERM"
    stop_timeout: float = 30.0


@dataclass
class ProcessHandle:
    """A running (or once running) instance process: pid plus its start time (the pid-reuse guard)."""

    pid: int
    create_time: float
    port: int
    started_at: float  # epoch seconds


def port_in_use(port: int) -> bool:
    """True when something listens on ``port`` (any address). A bind with
    SO_REUSEADDR, so sockets in TIME_WAIT do not count."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
        finally:
            s.close()
    return False


def _same_start(a: float, b: float) -> bool:
    # psutil derives start times from the boot time (whole seconds in
    # /proc/stat), which can read one second off after a clock adjustment;
    # the tick part stays exact. So: equal to the tick, or off by whole seconds.
    d = abs(a - b)
    return d < 0.02 or (d < 2.5 and abs(d - round(d)) < 0.02)


class ProcessRuntime:
    """Starts, watches and stops instance processes; owns the ``Popen`` objects
    of the instances started by this agent process (to reap them and read
    their exit codes). Adopted instances (started by an earlier agent) are
    watched through psutil only."""

    poll_interval = 0.05

    def __init__(self, *, check_port: bool = True) -> None:
        self._children: dict[int, subprocess.Popen] = {}
        # Refuse to start on a port something already listens on: that
        # something would answer the new instance's health checks.
        self.check_port = check_port

    # -- start -------------------------------------------------------------------
    def start(self, spec: InstanceSpec) -> ProcessHandle:
        if not spec.argv:
            raise InstanceError(f"instance {spec.id}: empty command")
        if spec.cwd is not None and not os.path.isdir(spec.cwd):
            raise InstanceError(
                f"instance {spec.id}: working directory {spec.cwd} does not exist",
                detail={"instance": spec.id, "cwd": spec.cwd},
            )
        if self.check_port and spec.port > 0 and port_in_use(spec.port):
            raise InstanceError(
                f"instance {spec.id}: port {spec.port} is already in use by another process "
                "(a leftover instance, or another program); it would answer this instance's health checks",
                detail={"instance": spec.id, "port": spec.port},
            )
        log_path = Path(spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **{k: str(v) for k, v in spec.env.items()}, "PORT": str(spec.port)}
        now = time.time()
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        shown = shlex.join(spec.argv).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        with open(log_path, "ab") as log:
            # One line per start, whatever the argv holds (an inline script's newlines are escaped).
            log.write(
                f"=== nonstop {stamp} start instance={spec.id} release={spec.release} port={spec.port} "
                f"argv={shown}\n".encode()
            )
            log.flush()
            try:
                proc = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except FileNotFoundError:
                msg = f"instance {spec.id}: cannot start {spec.argv[0]!r}: no such executable"
                if "/" not in spec.argv[0]:
                    msg += " on PATH"
                log.write(f"=== nonstop: {msg}\n".encode())
                raise InstanceError(msg, detail={"instance": spec.id, "argv": spec.argv}) from None
            except PermissionError:
                msg = f"instance {spec.id}: cannot start {spec.argv[0]!r}: permission denied (not executable?)"
                log.write(f"=== nonstop: {msg}\n".encode())
                raise InstanceError(msg, detail={"instance": spec.id, "argv": spec.argv}) from None
            except OSError as e:
                msg = f"instance {spec.id}: cannot start {spec.argv[0]!r}: {e.strerror or e}"
                log.write(f"=== nonstop: {msg}\n".encode())
                raise InstanceError(msg, detail={"instance": spec.id, "argv": spec.argv}) from None
        self._children[proc.pid] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:  # pragma: no cover - exited and reaped before we looked
            create_time = now
        return ProcessHandle(pid=proc.pid, create_time=create_time, port=spec.port, started_at=now)

    # -- watch -------------------------------------------------------------------
    def _proc(self, handle: ProcessHandle) -> psutil.Process | None:
        """The live psutil process of ``handle``, or None (gone, zombie, or pid reused)."""
        if handle.create_time is None:
            return None  # cannot tell it from a recycled pid: never treat it as ours
        child = self._children.get(handle.pid)
        if child is not None and child.poll() is not None:
            return None  # our child exited; poll() reaped it
        try:
            p = psutil.Process(handle.pid)
            if not _same_start(p.create_time(), handle.create_time):
                return None
            if p.status() == psutil.STATUS_ZOMBIE:
                if child is not None:
                    child.poll()
                return None
            return p
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
        except psutil.AccessDenied:  # pragma: no cover - another user's process: never ours to signal
            return None

    def alive(self, handle: ProcessHandle) -> bool:
        """True while the very process of ``handle`` runs (same pid AND same start time; zombies are dead)."""
        return self._proc(handle) is not None

    def exit_code(self, handle: ProcessHandle) -> int | None:
        """The exit status of an instance this runtime started, once it exited
        (negative: killed by that signal). None when unknown (still running, or adopted)."""
        child = self._children.get(handle.pid)
        if child is None:
            return None
        return child.poll()

    def adopt(self, pid: int, create_time: float, port: int) -> ProcessHandle | None:
        """A handle for an instance an earlier agent started, if that very process still runs."""
        h = ProcessHandle(pid=pid, create_time=create_time, port=port, started_at=create_time)
        return h if self.alive(h) else None

    # -- stop --------------------------------------------------------------------
    def _group(self, handle: ProcessHandle) -> int | None:
        """The process group to signal: the instance's own group when it leads one."""
        try:
            pgid = os.getpgid(handle.pid)
        except ProcessLookupError:
            return None
        return pgid if pgid == handle.pid else None

    def _signal(self, handle: ProcessHandle, pgid: int | None, sig: int) -> None:
        try:
            if pgid is not None:
                os.killpg(pgid, sig)
            else:
                os.kill(handle.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _group_members(pgid: int) -> list[psutil.Process]:
        """Live (non-zombie) processes still in group ``pgid``."""
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        out = []
        for p in psutil.process_iter(["status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                    out.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return out

    def _done(self, handle: ProcessHandle, pgid: int | None) -> bool:
        if self.alive(handle):
            return False
        return pgid is None or not self._group_members(pgid)

    async def stop(self, handle: ProcessHandle, signal_name: str = "SIGTERM", timeout: float = 30.0) -> str:
        """Stop an instance and its process group: ``signal_name``, then SIGKILL
        after ``timeout``. Returns ``"exited"`` (went on the signal),
        ``"killed"`` (needed SIGKILL) or ``"gone"`` (was not running: never
        signals a pid whose start time does not match)."""
        sig = signal_number(signal_name)
        if not self.alive(handle):
            return "gone"
        pgid = self._group(handle)
        self._signal(handle, pgid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._done(handle, pgid):
                return "exited"
            await asyncio.sleep(self.poll_interval)
        if self._done(handle, pgid):
            return "exited"
        # Timed out: SIGKILL the group (re-checked: the leader may be gone, the group not).
        if self.alive(handle):
            self._signal(handle, pgid, signal.SIGKILL)
        elif pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        kill_deadline = time.monotonic() + 5.0
        while time.monotonic() < kill_deadline and not self._done(handle, pgid):
            await asyncio.sleep(self.poll_interval)
        return "killed"

    # -- logs --------------------------------------------------------------------
    @staticmethod
    def tail(log_path: str | Path, lines: int = 50) -> str:
        """The last ``lines`` lines of a log file ("" when there is none)."""
        if lines <= 0:
            return ""
        try:
            with open(log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                size, data = 4096, b""
                while True:
                    start = max(0, end - size)
                    f.seek(start)
                    data = f.read(end - start)
                    if start == 0 or data.count(b"\n") > lines:
                        break
                    size *= 4
        except OSError:
            return ""
        text = data.decode("utf-8", "replace")
        out = text.splitlines()[-lines:]
        return "\n".join(out)
