"""Process runtime: app instances as plain OS processes.

An instance is a command started in its own session (``start_new_session``),
so it has its own process group, survives the agent, and can be stopped as
a whole (the app and anything it spawned). Its ``Handle`` is its pid and the
process's start time; every later look at the pid (``alive``, ``stop``,
``adopt``) checks that start time first, so a recycled pid never gets
signalled.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shlex
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

from nonstop.agent.commands import signal_number
from nonstop.agent.runtimes.base import Handle, InstanceSpec, Runtime, StopResult
from nonstop.errors import InstanceError

__all__ = ["ProcessRuntime", "port_in_use", "process_handle"]


def process_handle(pid: int, create_time: float | None, started_at: float) -> Handle:
    return Handle("process", {"pid": pid, "create_time": create_time}, started_at)


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


class ProcessRuntime(Runtime):
    """Starts, watches and stops instance processes; owns the ``Popen`` objects
    of the instances started by this agent process (to reap them and read
    their exit codes). Adopted instances (started by an earlier agent) are
    watched through psutil only."""

    name = "process"
    poll_interval = 0.05

    def __init__(self, *, check_port: bool = True) -> None:
        self._children: dict[int, subprocess.Popen] = {}
        # Refuse to start on a port something already listens on: that
        # something would answer the new instance's health checks.
        self.check_port = check_port

    # -- start -------------------------------------------------------------------
    async def start(self, spec: InstanceSpec) -> Handle:
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
                    list(spec.argv),
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
                raise InstanceError(msg, detail={"instance": spec.id, "argv": list(spec.argv)}) from None
            except PermissionError:
                msg = f"instance {spec.id}: cannot start {spec.argv[0]!r}: permission denied (not executable?)"
                log.write(f"=== nonstop: {msg}\n".encode())
                raise InstanceError(msg, detail={"instance": spec.id, "argv": list(spec.argv)}) from None
            except OSError as e:
                msg = f"instance {spec.id}: cannot start {spec.argv[0]!r}: {e.strerror or e}"
                log.write(f"=== nonstop: {msg}\n".encode())
                raise InstanceError(msg, detail={"instance": spec.id, "argv": list(spec.argv)}) from None
        self._children[proc.pid] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:  # pragma: no cover - exited and reaped before we looked
            create_time = now
        return process_handle(proc.pid, create_time, now)

    # -- watch -------------------------------------------------------------------
    @staticmethod
    def _ids(handle: Handle) -> tuple[int, float | None]:
        return int(handle.ref["pid"]), handle.ref.get("create_time")

    def _proc(self, handle: Handle) -> psutil.Process | None:
        """The live psutil process of ``handle``, or None (gone, zombie, or pid reused)."""
        pid, create_time = self._ids(handle)
        if create_time is None:
            return None  # cannot tell it from a recycled pid: never treat it as ours
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            return None  # our child exited; poll() reaped it
        try:
            p = psutil.Process(pid)
            if not _same_start(p.create_time(), create_time):
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

    def running(self, handle: Handle) -> bool:
        """True while the very process of ``handle`` runs (same pid AND same start time; zombies are dead)."""
        return self._proc(handle) is not None

    async def alive(self, handle: Handle) -> bool:
        return self.running(handle)

    async def exit_code(self, handle: Handle) -> int | None:
        """The exit status of an instance this runtime started, once it exited
        (negative: killed by that signal). None when unknown (still running, or adopted)."""
        child = self._children.get(self._ids(handle)[0])
        if child is None:
            return None
        return child.poll()

    # -- stop --------------------------------------------------------------------
    def _group(self, handle: Handle) -> int | None:
        """The process group to signal: the instance's own group when it leads one."""
        pid = self._ids(handle)[0]
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return None
        return pgid if pgid == pid else None

    def _signal(self, handle: Handle, pgid: int | None, sig: int) -> None:
        try:
            if pgid is not None:
                os.killpg(pgid, sig)
            else:
                os.kill(self._ids(handle)[0], sig)
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

    def _done(self, handle: Handle, pgid: int | None) -> bool:
        if self.running(handle):
            return False
        return pgid is None or not self._group_members(pgid)

    async def stop(self, handle: Handle, signal_name: str = "SIGTERM", timeout: float = 30.0) -> StopResult:
        """Stop an instance and its process group: ``signal_name``, then SIGKILL
        after ``timeout``. Returns ``"exited"`` (went on the signal),
        ``"killed"`` (needed SIGKILL) or ``"gone"`` (was not running: never
        signals a pid whose start time does not match)."""
        sig = signal_number(signal_name)
        if not self.running(handle):
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
        if self.running(handle):
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

