"""System calls, context switches and CPU per request of a proxy tree under wrk --vary (issue 16).

    .venv/bin/python bench/tail/wakeups.py nginxx1,nonstopx1,nginxx2,nonstopx2,nginxx1,nonstopx1,nginxx2,nonstopx2

Each ``KINDxN`` in turn (nginx or nonstop with N workers, in front of one nginx backend): wrk -t1 -c50,
every request a different path, 2 s warm-up, then 8 s; from 2 s into it, ``perf stat`` counts for 4 s
over every process of the proxy's tree: system calls (the ``raw_syscalls:sys_enter`` tracepoint),
``epoll_wait`` calls, context switches, CPU migrations and task-clock (CPU time). Each is divided by
the requests answered in those 4 s (wrk's rate × 4). Software counters and tracepoints only: this VM
has no hardware counters. Loopback only; every server is stopped by PID.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import backend_servers as b  # noqa: E402
from proxy import WRK_LUA_VARY  # noqa: E402

EVENTS = "raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,context-switches,cpu-migrations,task-clock"


def main() -> None:
    wd = Path(tempfile.mkdtemp(prefix="wakeups-"))
    lua = wd / "vary.lua"
    lua.write_text(WRK_LUA_VARY)
    backend = b.nginx("backend", wd, b.free_port())
    backend.start()
    helptext = b.nonstop_help()
    try:
        for kind in sys.argv[1].split(","):
            name, workers = kind.rsplit("x", 1)
            w = int(workers)
            port = b.free_port()
            if name == "nginx":
                s = b.nginx(f"px{w}", wd, port, workers=w, backend=backend.port)
            else:
                s = b.nonstop(f"ns{w}", wd, port, backend.port, workers=w, help_text=helptext)
            s.start()
            try:
                url = f"http://127.0.0.1:{port}/"
                subprocess.run(["wrk", "-t1", "-c50", "-d2s", "-s", str(lua), url], capture_output=True)
                wp = subprocess.Popen(["wrk", "-t1", "-c50", "-d8s", "-s", str(lua), url], stdout=subprocess.PIPE, text=True)
                time.sleep(2)
                pids = ",".join(str(p.pid) for p in s.processes())
                st = subprocess.run(["perf", "stat", "-x,", "-e", EVENTS, "-p", pids, "--", "sleep", "4"], capture_output=True, text=True).stderr
                out = wp.communicate()[0]
            finally:
                s.stop()
            rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            reqs = rate * 4
            vals = {}
            for line in st.splitlines():
                parts = line.split(",")
                if len(parts) > 3 and parts[0].replace(".", "").isdigit():
                    vals[parts[2]] = float(parts[0])
            ep = vals.get("syscalls:sys_enter_epoll_wait", 0) + vals.get("syscalls:sys_enter_epoll_pwait", 0)
            print(f"{kind:9s} {rate:8.0f} req/s | per request: syscalls {vals['raw_syscalls:sys_enter']/reqs:.2f}, epoll_wait {ep/reqs:.3f}, "
                  f"ctx switches {vals['context-switches']/reqs:.3f}, migrations {vals['cpu-migrations']/reqs:.4f}, CPU {vals['task-clock']*1e3/reqs:.1f} µs", flush=True)
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
