"""nonstop as systemd runs it: the listening socket owned by the service manager, passed by LISTEN_FDS.

``systemd-socket-activate`` (Debian's systemd package) binds the public address and execs the agent
(``nonstop up`` in the foreground, as the unit ``nonstop service install`` writes does) with the socket
passed by the sd_listen_fds protocol, without systemd as PID 1. The agent hands it to the proxy it
starts; a kill -9 of that proxy under load refuses no connection while a new one takes the same socket.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import warm
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import wait_for
from tests.e2e.helpers import alive as _alive
from tests.e2e.helpers import assert_only_the_dead_process_lost
from tests.e2e.test_faults import LOAD

ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


def test_the_agent_serves_on_the_socket_systemd_passed_and_a_proxy_crash_refuses_nothing(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = stack_factory(up=False, run={"command": RUN_COMMAND})
    log = open(tmp_path / "activate.log", "wb")
    agent = subprocess.Popen(
        [ACTIVATE, "-l", f"127.0.0.1:{st.listen}", "--fdname=http", sys.executable, "-m", "nonstop",
         "-c", str(st.cfg_path), "up"],
        cwd=st.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        # systemd-socket-activate starts the service at the first connection (that connection waits in the
        # backlog meanwhile, and is answered by the proxy the agent starts)
        wait_for(lambda: _connects(st.listen), timeout=10, what="the socket systemd-socket-activate binds")
        first = socket.create_connection(("127.0.0.1", st.listen), timeout=30)
        first.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_for(lambda: st.cli("status", "--json").code == 0, timeout=60, interval=0.2, what="the agent")
        assert st.status()["agent"]["pid"] == agent.pid  # the activated process is the agent itself
        st.deploy("v1", "--artifact", str(good))
        reply = first.recv(65536)  # the very first connection, queued since before the agent ran
        first.close()
        assert reply.startswith(b"HTTP/1.1 "), reply
        with LoadClient(st.url, **LOAD) as load:
            warm(load, 100, stack=st)
            old = st.pid("proxy")
            t_kill = time.monotonic()
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: st.pid("proxy") not in (None, old) and _alive(st.pid("proxy")), timeout=30,
                     interval=0.05, what="a new proxy")
            warm(load, 150, stack=st)
        result = load.result
        refused = [r for r in result.failures if "refused" in (r.error or "").lower()]
        print(f"\nsocket activation, kill -9 of the proxy: {result.failed} failed of {result.total}, refused {len(refused)}")
        assert refused == [], result.format()
        assert_only_the_dead_process_lost(result, t_kill, LOAD["keepalive"] + LOAD["post"])
        assert st.cli("down").code == 0
        agent.wait(30)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(10)
        log.close()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
