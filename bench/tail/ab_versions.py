"""Same-sitting A/B of nonstop's proxy across checkouts, nginx alongside, 1 and 2 workers (issue 16).

    git worktree add /tmp/v010 v0.1.0 && (cd /tmp/v010 && ../path/to/.venv/bin/python setup.py build_ext --inplace)
    .venv/bin/python bench/tail/ab_versions.py --tree v0.1.0=/tmp/v010 --tree main=. --rounds 5 --duration 8

Every ``--tree NAME=PATH`` is a checkout with its proxy built in place; its rows run ``python -m
nonstop.proxy`` with ``PYTHONPATH=PATH``. Rows: nginx and each tree with 1 worker, then with 2 workers
(``--workers 2``); rounds interleaved, the order turned by one per round; wrk -t1 -c50 (``--connections``) --latency
--timeout 5s, 2 s warm-up, then the measured run; halfway through it, how many client connections each
worker holds. Ratios to the same round's nginx with the same worker count: median (min–max), † when
the rounds disagree on the side of 1.0. Loopback only; every server is stopped by PID.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import backend_servers as b  # noqa: E402
from proxy import WRK_LUA_VARY  # noqa: E402
import psutil  # noqa: E402

DONE_LUA = """
done = function(summary, latency, requests)
  io.write(string.format('WRK_JSON {"requests": %d, "p99_us": %d}\\n', summary.requests, latency:percentile(99)))
end
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH of a checkout with its proxy built")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=8, help="measured seconds per row")
    p.add_argument("--vary", action="store_true", help="a different path for every request")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--workers", default="1,2", help="worker counts, a comma list (default 1,2)")
    args = p.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    wd = Path(tempfile.mkdtemp(prefix="ab-versions-"))
    lua = wd / "done.lua"
    lua.write_text(DONE_LUA + (WRK_LUA_VARY if args.vary else ""))
    helps: dict[str, str] = {}
    sizing = b.Sizing(connections=args.connections, nofile=20000)
    backend = b.nginx("backend", wd, b.free_port(), sizing=sizing)
    backend.start()

    def server(name: str, workers: int, port: int):
        if name == "nginx":
            return b.nginx(f"nginx{workers}", wd, port, workers=workers, backend=backend.port, sizing=sizing)
        env = {**b._env(), "PYTHONPATH": str(Path(trees[name]).resolve())}
        if name not in helps:
            helps[name] = subprocess.run([sys.executable, "-m", "nonstop.proxy", "--help"], capture_output=True,
                                         text=True, env=env, cwd=wd).stdout
        s = b.nonstop(f"{name}{workers}", wd, port, backend.port, workers=workers, help_text=helps[name])
        s.env = env
        return s

    def spread(s, port: int) -> list[int]:
        count: collections.Counter = collections.Counter()
        for proc in s.processes():
            try:
                for c in proc.net_connections(kind="tcp"):
                    if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED":
                        count[proc.pid] += 1
            except psutil.Error:
                pass
        return sorted(count.values(), reverse=True)

    def run(name: str, workers: int) -> tuple[float, float, list[int]]:
        port = b.free_port()
        s = server(name, workers, port)
        s.start()
        try:
            url = f"http://127.0.0.1:{port}/"
            subprocess.run(["wrk", "-t1", f"-c{args.connections}", "-d2s", url], capture_output=True, timeout=60)
            w = subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--latency", "--timeout", "5s",
                                  "-s", str(lua), url], stdout=subprocess.PIPE, text=True)
            time.sleep(args.duration / 2)
            conns = spread(s, port)
            out = w.communicate(timeout=args.duration + 60)[0]
            j = json.loads(next(line for line in out.splitlines() if line.startswith("WRK_JSON"))[9:])
        finally:
            s.stop()
        return j["requests"] / args.duration, j["p99_us"] / 1000, conns

    rows = [(n, w) for w in map(int, args.workers.split(",")) for n in ("nginx", *trees)]
    res: dict[tuple[str, int], list] = {r: [] for r in rows}
    try:
        for i in range(args.rounds):
            for r in rows[i % len(rows):] + rows[:i % len(rows)]:
                res[r].append(run(*r))
                rate, p99, conns = res[r][-1]
                print(f"round {i + 1} {r[0]} x{r[1]}: {rate:,.0f} req/s, p99 {p99:.2f} ms, connections {conns}",
                      flush=True)
    finally:
        backend.stop()

    def ratio(xs: list[float]) -> str:
        flag = " †" if min(xs) < 1 < max(xs) else ""
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f}){flag}"

    print(f"\n{'--vary' if args.vary else 'one GET / repeated'}, {args.connections} connections, "
          f"{args.rounds} rounds × {args.duration} s\n")
    print("| row | req/s median (rounds) | p99 ms median (rounds) | × nginx req/s | × nginx p99 | connections per worker |")
    print("|---|---|---|---|---|---|")
    for (name, workers), v in res.items():
        ng = res[("nginx", workers)]
        rr = [a[0] / n[0] for a, n in zip(v, ng)]
        pr = [a[1] / n[1] for a, n in zip(v, ng)]
        print(f"| {name}, {workers} worker{'s' if workers > 1 else ''} "
              f"| {statistics.median(x for x, _, _ in v):,.0f} ({', '.join(f'{x:,.0f}' for x, _, _ in v)}) "
              f"| {statistics.median(p for _, p, _ in v):.2f} ({', '.join(f'{p:.2f}' for _, p, _ in v)}) "
              f"| {'1' if name == 'nginx' else ratio(rr)} | {'1' if name == 'nginx' else ratio(pr)} "
              f"| {'; '.join('/'.join(map(str, c)) for _, _, c in v) if workers > 1 else ''} |")


if __name__ == "__main__":
    main()
