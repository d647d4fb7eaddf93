"""ProcessRuntime with real processes: start, log, stop (signal → SIGKILL), groups, pid reuse, adoption."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import nonstop
from nonstop.agent.commands import render, signal_number
from nonstop.agent.logfiles import tail
from nonstop.agent.runtimes.base import Handle, InstanceSpec
from nonstop.agent.runtimes.process import ProcessRuntime, port_in_use, process_handle
from nonstop.errors import ConfigError, InstanceError

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(nonstop.__file__))

# Binds the port it is given, says so, then waits to be stopped.
SERVER = textwrap.dedent(
    """
    import os, socket, sys, time
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    print("listening on", sys.argv[1], "PORT env", os.environ["PORT"], "X", os.environ.get("X"), flush=True)
    time.sleep(60)
    """
)
STUBBORN = textwrap.dedent(
    """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)
    """
)
# The parent exits on SIGTERM; its child ignores SIGTERM (so only a group SIGKILL ends it).
SPAWNER = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child ready', flush=True); time.sleep(60)"])
    print("child", child.pid, flush=True)
    time.sleep(60)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def output(log: Path) -> str:
    """What the process printed (the log without nonstop's header lines, which quote the argv)."""
    try:
        return "\n".join(l for l in log.read_text().splitlines() if not l.startswith("=== nonstop"))
    except FileNotFoundError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class SyncRuntime:
    """The real ProcessRuntime, its coroutines run to completion one call at a time (the tests read
    like the calls the fleet makes); ``stop`` stays a coroutine (the tests ``asyncio.run`` it)."""

    def __init__(self, runtime: ProcessRuntime) -> None:
        self.runtime = runtime
        self.started: list[Handle] = []

    def start(self, spec: InstanceSpec) -> Handle:
        h = asyncio.run(self.runtime.start(spec))
        self.started.append(h)
        return h

    def alive(self, h: Handle) -> bool:
        return asyncio.run(self.runtime.alive(h))

    def exit_code(self, h: Handle):
        return asyncio.run(self.runtime.exit_code(h))

    def stop(self, h: Handle, sig: str, timeout: float):
        return self.runtime.stop(h, sig, timeout)

    def adopt(self, pid: int, create_time, port: int) -> Handle | None:
        h = process_handle(pid, create_time, 0)
        return h if asyncio.run(self.runtime.adopt(h)) else None

    @staticmethod
    def tail(path, lines: int = 50) -> str:
        return tail(path, lines)

    @property
    def _children(self):
        return self.runtime._children


def pid_of(h: Handle) -> int:
    return h.ref["pid"]


@pytest.fixture
def rt():
    """A runtime whose leftover processes are SIGKILLed (by their own group) at teardown."""
    runtime = SyncRuntime(ProcessRuntime())
    yield runtime
    for h in runtime.started:
        if runtime.alive(h):
            try:
                os.killpg(pid_of(h), signal.SIGKILL)
            except ProcessLookupError:
                pass
        child = runtime._children.get(pid_of(h))
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass


def spec(tmp_path: Path, argv: list[str], port: int = 0, **kw) -> InstanceSpec:
    return InstanceSpec(
        app="t",
        id=kw.pop("id", f"v1@{port}"),
        release="v1",
        version="v1",
        port=port,
        argv=argv,
        env=kw.pop("env", {}),
        cwd=kw.pop("cwd", str(tmp_path)),
        log_path=kw.pop("log_path", tmp_path / "logs" / "v1.log"),
        stop_signal="SIGTERM",
        stop_timeout=kw.pop("stop_timeout", 5.0),
    )


# -- render ------------------------------------------------------------------------

VALUES = {
    "port": "8081",
    "artifact": "/state/releases/v1/my app.jar",
    "release": "v1",
    "version": "v1",
    "instance": "v1@8081",
    "state_dir": "/state",
}


def test_render_substitutes_after_splitting():
    argv = render("java -jar {artifact} --server.port={port} --name=app-{release}", VALUES, shell=False)
    assert argv == ["java", "-jar", "/state/releases/v1/my app.jar", "--server.port=8081", "--name=app-v1"]


def test_render_list_command_and_escapes():
    argv = render(["run", "{instance}", "{{literal}}", "${HOME}", "{state_dir}/x"], VALUES, shell=False)
    assert argv == ["run", "v1@8081", "{literal}", "${HOME}", "/state/x"]


def test_render_shell_quotes_values_into_the_script():
    argv = render("exec java -jar {artifact} --port={port} >> $HOME/x", VALUES, shell=True)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[2] == "exec java -jar '/state/releases/v1/my app.jar' --port=8081 >> $HOME/x"


def test_render_unknown_placeholder_names_it():
    with pytest.raises(ConfigError, match=r"unknown placeholder \{prot\}.*\{port\}"):
        render("app --port={prot}", VALUES, shell=False)


def test_render_known_placeholder_without_value():
    with pytest.raises(ConfigError, match=r"\{artifact\} has no value"):
        render("java -jar {artifact} {port}", {"port": "1"}, shell=False)


def test_render_extra_values_like_host():
    assert render("check {host}:{port}", {"host": "127.0.0.1", "port": "9"}, shell=False) == ["check", "127.0.0.1:9"]


def test_signal_number():
    assert signal_number("SIGTERM") == signal.SIGTERM
    assert signal_number("int") == signal.SIGINT
    assert signal_number(9) == 9
    with pytest.raises(ConfigError):
        signal_number("SIGNOPE")


# -- start / alive / stop -------------------------------------------------------


def test_start_binds_port_logs_and_stops_gracefully(rt, tmp_path):
    port = free_port()
    s = spec(tmp_path, [PY, "-c", SERVER, str(port)], port, env={"X": "y z"})
    h = rt.start(s)
    assert h.runtime == "process" and h.ref["create_time"] > 0 and abs(h.started_at - time.time()) < 5
    assert rt.alive(h)
    wait_for(lambda: "listening" in output(s.log_path), what="listening line")
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    log = rt.tail(s.log_path)
    assert "listening on" in output(s.log_path)
    assert f"PORT env {port}" in log and "X y z" in log
    assert log.startswith("=== nonstop ") and f"port={port}" in log.splitlines()[0]
    assert os.getpgid(pid_of(h)) == pid_of(h)  # own process group (own session)
    assert os.getsid(pid_of(h)) == pid_of(h)
    assert rt.exit_code(h) is None
    t0 = time.monotonic()
    assert asyncio.run(rt.stop(h, "SIGTERM", 5)) == "exited"
    assert time.monotonic() - t0 < 2
    assert not rt.alive(h)
    assert rt.exit_code(h) == -signal.SIGTERM
    assert asyncio.run(rt.stop(h, "SIGTERM", 5)) == "gone"


def test_process_ignoring_sigterm_is_killed_after_timeout(rt, tmp_path):
    s = spec(tmp_path, [PY, "-c", STUBBORN])
    h = rt.start(s)
    wait_for(lambda: "ready" in output(s.log_path), what="ready")
    t0 = time.monotonic()
    assert asyncio.run(rt.stop(h, "SIGTERM", 0.3)) == "killed"
    assert 0.3 <= time.monotonic() - t0 < 3
    assert not rt.alive(h)
    assert rt.exit_code(h) == -signal.SIGKILL


def test_whole_process_group_is_stopped(rt, tmp_path):
    s = spec(tmp_path, [PY, "-c", SPAWNER])
    h = rt.start(s)
    wait_for(lambda: re.search(r"^child \d+$", output(s.log_path), re.M) and "child ready" in output(s.log_path), what="child")
    child_pid = int(re.search(r"^child (\d+)$", output(s.log_path), re.M).group(1))
    assert pid_alive(child_pid) and os.getpgid(child_pid) == pid_of(h)
    # the parent goes on SIGTERM at once, but its child ignores it: the group is SIGKILLed
    assert asyncio.run(rt.stop(h, "SIGTERM", 0.4)) == "killed"
    wait_for(lambda: not pid_alive(child_pid), timeout=3, what="child gone")
    assert not rt.alive(h)


def test_exited_process_is_dead_and_reaped_with_its_code(rt, tmp_path):
    h = rt.start(spec(tmp_path, [PY, "-c", "import sys; print('bye'); sys.exit(3)"]))
    wait_for(lambda: not rt.alive(h), what="exit")
    assert rt.exit_code(h) == 3
    assert not pid_alive(pid_of(h))  # reaped: no zombie left behind
    assert output(tmp_path / "logs" / "v1.log") == "bye"


def test_pid_reuse_guard_never_signals_a_different_process(rt, tmp_path):
    s = spec(tmp_path, [PY, "-c", STUBBORN])
    h = rt.start(s)
    wait_for(lambda: "ready" in output(s.log_path), what="ready")
    impostor = process_handle(pid_of(h), h.ref["create_time"] - 123.456, 0)
    assert not rt.alive(impostor)
    assert rt.adopt(pid_of(h), h.ref["create_time"] - 123.456, 0) is None
    assert asyncio.run(rt.stop(impostor, "SIGKILL", 0.1)) == "gone"
    unknown = process_handle(pid_of(h), None, 0)
    assert not rt.alive(unknown) and asyncio.run(rt.stop(unknown, "SIGKILL", 0.1)) == "gone"
    assert rt.alive(h) and pid_alive(pid_of(h))  # untouched


def test_log_appends_one_header_per_start(rt, tmp_path):
    log = tmp_path / "logs" / "v1.log"
    for word in ("first", "second"):
        h = rt.start(spec(tmp_path, [PY, "-c", f"print('{word}')"], log_path=log))
        wait_for(lambda: not rt.alive(h), what="exit")
    lines = log.read_text().splitlines()
    assert [l for l in lines if not l.startswith("===")] == ["first", "second"]
    assert sum(l.startswith("=== nonstop ") for l in lines) == 2
    assert rt.tail(log, 1) == "second"
    assert rt.tail(log, 0) == ""
    assert rt.tail(tmp_path / "missing.log") == ""


def test_tail_of_a_big_log(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("".join(f"line {i} " + "x" * 200 + "\n" for i in range(2000)))
    out = tail(log, 50).splitlines()
    assert len(out) == 50 and out[0].startswith("line 1950 ") and out[-1].startswith("line 1999 ")


def test_missing_executable_is_a_clear_error(rt, tmp_path):
    s = spec(tmp_path, ["no-such-binary-nonstop", "--port", "1"])
    with pytest.raises(InstanceError, match="no-such-binary-nonstop.*no such executable"):
        rt.start(s)
    assert "no such executable" in rt.tail(s.log_path)
    with pytest.raises(InstanceError, match="does not exist"):
        rt.start(spec(tmp_path, [PY, "-c", "pass"], cwd=str(tmp_path / "nope")))


def test_instance_survives_the_agent_and_is_adopted(rt, tmp_path):
    """An 'agent' process starts an instance and exits; a new runtime adopts and stops it."""
    agent = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        import asyncio
        from nonstop.agent.runtimes.base import InstanceSpec
        from nonstop.agent.runtimes.process import ProcessRuntime
        rt = ProcessRuntime()
        h = asyncio.run(rt.start(InstanceSpec(app="t", id="v1@1", release="v1", version="v1", port=1,
                     argv=(sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"),
                     env={{}}, cwd=None, log_path=Path({str(tmp_path / 'adopt.log')!r}),
                     stop_signal="SIGTERM", stop_timeout=5)))
        print(json.dumps(h.ref))
        """
    )
    out = subprocess.run(
        [PY, "-c", agent], capture_output=True, text=True, timeout=20, env={**os.environ, "PYTHONPATH": ROOT}
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    pid = info["pid"]
    try:
        assert pid_alive(pid)  # the agent is gone, the instance is not
        h = rt.adopt(pid, info["create_time"], 1)
        assert h is not None and rt.alive(h)
        assert rt.exit_code(h) is None  # not our child: unknown
        assert asyncio.run(rt.stop(h, "SIGTERM", 5)) == "exited"
        assert not rt.alive(h)
        assert rt.adopt(pid, info["create_time"], 1) is None
    finally:
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_refuses_a_port_something_already_listens_on(rt, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use(port)
        with pytest.raises(InstanceError, match=f"port {port} is already in use"):
            rt.start(spec(tmp_path, [PY, "-c", "pass"], port))
    assert not port_in_use(port)
    # opt out (a runtime for apps that share a port on purpose)
    assert ProcessRuntime(check_port=False).check_port is False
