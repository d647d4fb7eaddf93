"""Scheduler delays of a proxy under wrk -c50 (issue 16): ``perf sched`` for 3 s in the middle of a 6 s run.

    .venv/bin/python bench/tail/sched.py nginx,nonstop      # needs perf (linux-perf) and root

Each proxy runs under a name of its own (``ngxproxy``: a symlink to nginx; ``nsproxy``: the proxy's main thread
renames itself), so its task is told apart from the backend nginx in ``perf sched latency``, which lists per
task the run time, switches, and the average and longest wait between being woken and running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import backend_servers as b  # noqa: E402
from backend_servers import Server  # noqa: E402

LUA = """
done = function(summary, latency, requests)
  io.write(string.format('WRK_JSON {"requests": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def main() -> None:
    wd = Path(tempfile.mkdtemp(prefix="sched-"))
    (wd / "done.lua").write_text(LUA)
    os.symlink(b._which("nginx"), wd / "ngxproxy")
    backend = b.nginx("backend", wd, b.free_port())
    backend.start()
    try:
        for name in sys.argv[1].split(","):
            port = b.free_port()
            if name == "nginx":
                s = b.nginx("px", wd, port, backend=backend.port)
                s.cmd[0] = str(wd / "ngxproxy")
            else:
                # the proxy's main thread renames itself (/proc/self/comm), then runs `python -m nonstop.proxy`
                rename = ("import runpy, sys; open('/proc/self/comm', 'w').write('nsproxy'); "
                          "sys.argv[0] = 'nonstop proxy'; runpy.run_module('nonstop.proxy', run_name='__main__')")
                cmd = [sys.executable, "-c", rename, "--listen", f"127.0.0.1:{port}",
                       "--upstream", f"127.0.0.1:{backend.port}", "--admin-socket", str(wd / f"{name}.sock"),
                       "--routes-file", str(wd / f"{name}.json"), "--pid-file", str(wd / f"{name}.pid")]
                s = Server(name, cmd, port, wd, env=b._env())
            s.start()
            try:
                w = subprocess.Popen(["wrk", "-t1", "-c50", "-d6s", "--timeout", "5s", "-s", str(wd / "done.lua"),
                                      f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
                time.sleep(1.5)
                data = wd / f"{name}.perf"
                subprocess.run(["perf", "sched", "record", "-o", str(data), "--", "sleep", "3"], capture_output=True)
                out = w.communicate(timeout=60)[0]
            finally:
                s.stop()
            j = json.loads(next(line for line in out.splitlines() if line.startswith("WRK_JSON"))[9:])
            lat = subprocess.run(["perf", "sched", "latency", "-i", str(data), "--sort", "max"],
                                 capture_output=True, text=True).stdout
            print(f"== {name}: {j['requests'] / 6:.0f} req/s p50 {j['p50_us'] / 1000:.2f} "
                  f"p99 {j['p99_us'] / 1000:.2f} max {j['max_us'] / 1000:.2f} ms")
            for line in lat.splitlines():
                if any(k in line for k in ("ngxproxy", "nsproxy", "nginx", "wrk", "Task")):
                    print("  ", line.strip()[:130])
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
