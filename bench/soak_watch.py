"""What bench/soak.py watches on the machine: the stack's processes (``PidBook``), their memory and fds,
the state dir's size, its logs, and the ports. Read-only, except ``PidBook.kill_left``, which ends by
pid (start time checked) what the soak itself started and found still running after `nonstop down`.
"""

from __future__ import annotations

import shlex
import signal
import socket
import time
from pathlib import Path

import psutil


def port_busy(port: int) -> bool:
    """Whether something still listens on ``port`` (a server could not bind it; TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            return False
        except OSError:
            return True


class PidBook:
    """Every process the soak saw belong to its stack: pid -> (start time, role), to find what is left.

    The start time tells a process the soak saw from a later one that got the same pid.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker  # the temp dir: in the command line of the agent, the proxy, the instances
        self.seen: dict[int, tuple[float, str]] = {}

    def note(self, pid: int | None, role: str) -> None:
        if not pid or pid in self.seen:
            return
        try:
            self.seen[pid] = (psutil.Process(pid).create_time(), role)
        except psutil.Error:
            pass

    def note_status(self, st: dict | None) -> None:
        """The pids `nonstop status --json` names: agent, proxy, instances."""
        if not st:
            return
        self.note((st.get("agent") or {}).get("pid"), "agent")
        self.note(((st.get("router") or {}).get("detail") or {}).get("pid"), "proxy")
        for inst in st.get("instances") or []:
            self.note(inst.get("pid"), f"instance {inst.get('id')}")

    def scan(self) -> None:
        """Anything whose command line names the temp dir (instances, the agent, the proxy, their helpers)."""
        for p in psutil.process_iter(["pid", "cmdline"]):
            if self.marker in " ".join(p.info["cmdline"] or ()):
                self.note(p.info["pid"], "cmdline: " + shlex.join(p.info["cmdline"])[:120])

    def alive(self) -> list[tuple[int, str]]:
        """(pid, what it is) of every process seen that still exists, zombies included."""
        left = []
        for pid, (created, role) in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    left.append((pid, f"{role} (pid {pid}, {p.status()})"))
            except psutil.Error:
                pass
        return left

    def wait_gone(self, timeout: float) -> list[tuple[int, str]]:
        """What is still alive after waiting up to ``timeout`` for everything to go."""
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def kill_left(self, left: list[tuple[int, str]]) -> None:
        """SIGKILL, by pid, each of ``left`` that is still the process the soak saw."""
        for pid, _ in left:
            try:
                p = psutil.Process(pid)
                if p.create_time() == self.seen[pid][0]:
                    p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass


def figures(pid: int | None) -> tuple[int | None, int | None, int | None]:
    """(RSS, USS, open fds) of a process; Nones when it is gone."""
    if not pid:
        return None, None, None
    try:
        p = psutil.Process(pid)
        m = p.memory_full_info()
        return m.rss, m.uss, p.num_fds()
    except psutil.Error:
        return None, None, None


def children(agent_pid: int | None, proxy_pid: int | None) -> tuple[int, int]:
    """(the app's instance processes alive: the agent's children but the proxy, unreaped children of
    either: zombies)."""
    instances = zombies = 0
    for parent in (agent_pid, proxy_pid):
        try:
            kids = psutil.Process(parent).children() if parent else []
        except psutil.Error:
            kids = []
        for k in kids:
            try:
                status = k.status()
            except psutil.Error:
                continue
            if status == psutil.STATUS_ZOMBIE:
                zombies += 1
            elif parent == agent_pid and k.pid != proxy_pid:
                instances += 1
    return instances, zombies


def log_problems(state: Path) -> list[str]:
    """Tracebacks in any log of the state dir, and ERROR / CRITICAL lines of the agent's (the proxy's
    lines carry no level): a soak that passes while something crashed and was recovered is no pass."""
    found = []
    for log in sorted((state / "logs").glob("*.log")):
        for n, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            if "Traceback" in line or (log.name == "agent.log" and (" ERROR " in line or " CRITICAL " in line)):
                found.append(f"{log.name}:{n}: {line.strip()[:200]}")
    return found
