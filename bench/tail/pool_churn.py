"""Upstream connection churn of a proxy under wrk -c500 (issue 16): does the proxy's idle pool reopen connections?

    .venv/bin/python bench/tail/pool_churn.py nginx,nonstop,nginx,nonstop

For each proxy in turn (one worker, in front of the same nginx backend): wrk -t1 -c500 for 6 s; halfway,
how many connections to the backend are established (``ss``); at the end, how many *new* TIME_WAIT
sockets to the backend the run left (connections the proxy closed, each opened again for a later
request): the set of TIME_WAIT sockets after the run minus the set before, so the ones of an earlier
run that expire meanwhile (after 60 s) do not hide this run's. Loopback only.

Until issue 16's fix this script subtracted the counts instead, and runs that followed another run by
less than a minute came out near zero (nonstop: −155 to 17) while the proxy closed ~10,000.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backend_servers as b  # noqa: E402


def _sockets(state: str, port: int) -> set[str]:
    out = subprocess.run(["ss", "-tanH", "state", state, f"( dport = :{port} )"], capture_output=True, text=True).stdout
    return {" ".join(line.split()[-2:]) for line in out.splitlines() if line.strip()}  # local and peer address


def main() -> None:
    wd = Path(tempfile.mkdtemp(prefix="pool-churn-"))
    backend = b.nginx("backend", wd, b.free_port())
    backend.start()
    helptext = b.nonstop_help()
    try:
        for kind in sys.argv[1].split(","):
            port = b.free_port()
            s = (b.nginx("px", wd, port, backend=backend.port) if kind == "nginx"
                 else b.nonstop("ns", wd, port, backend.port, help_text=helptext))
            s.start()
            try:
                before = _sockets("time-wait", backend.port)
                w = subprocess.Popen(["wrk", "-t1", "-c500", "-d6s", "--latency", "--timeout", "5s",
                                      f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
                time.sleep(3)
                established = len(_sockets("established", backend.port))
                out = w.communicate(timeout=60)[0]
                added = len(_sockets("time-wait", backend.port) - before)
            finally:
                s.stop()
            figures = [line.strip() for line in out.splitlines() if "99%" in line or "Requests/sec" in line]
            print(f"{kind}: {established} upstream connections mid-run, {added} new TIME_WAIT to the backend; "
                  + "; ".join(figures))
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
