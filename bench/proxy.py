"""Benchmark nonstop's proxy against nginx and HAProxy, side by side in one run (issue 2).

    .venv/bin/python bench/proxy.py                       # defaults sized for 2 cores
    .venv/bin/python bench/proxy.py --duration 10 --connections 50 --rounds 3 --record

One backend (nginx answering ``return 200 "ok"``, one worker) serves every row; in front of it, in
turn: nothing ("backend direct"), nginx, HAProxy, ``nonstop proxy`` with one worker, and nginx and
nonstop with ``--multi`` workers. Each proxy is started fresh, warmed up, then measured with wrk
(``--latency``, numbers read through a Lua ``done()`` hook, not scraped). For each row: req/s,
p50/p99, wrk errors, CPU µs per request of the proxy's process tree (psutil, measured run only) and
of the backend's, and the ratio to nginx with the same worker count.

Fairness, on a 2-core machine where wrk, backend and proxy share the cores: the headline compares
one nginx worker, one HAProxy thread and one nonstop worker; all keep connections alive to clients
and to the backend and set the same X-Forwarded-* headers; access logs are off. With ``--rounds``
the rows are interleaved round by round and the median (by req/s) is reported, which evens out
the noise of other work on the machine.

Rows that cannot run (``nonstop proxy`` not written yet, no ``--workers``) say why and the rest goes
on. Every process started is stopped by PID at the end. Loopback only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# bench/ is a directory of scripts, not a package; appended (not prepended) so it shadows nothing.
sys.path.append(str(Path(__file__).resolve().parent))
import backend_servers as backends  # noqa: E402
from backend_servers import Server, StartError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

# wrk calls done() once at the end; printing JSON from it avoids scraping wrk's human output.
_WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
# --vary: every request has its own path (/?n=1, /?n=2, ...), as real traffic would, so nothing that
# remembers exact request bytes can help; wrk then builds each request in Lua (the same cost for every row).
_WRK_LUA_VARY = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/?n=" .. n)
end
"""


@dataclass
class Row:
    """One measured target (or why it could not be measured)."""

    target: str
    workers: int
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    proxy_us: float | None = None  # CPU µs per request of the proxy process tree
    backend_us: float | None = None
    error: str | None = None
    rps_runs: tuple[float, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # direct | nginx | haproxy | nonstop
    workers: int


def run_wrk(port: int, seconds: int, connections: int, threads: int, lua: Path) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",  # wrk takes whole seconds "--latency", "--timeout", "5s",
           "-s", str(lua), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise RuntimeError(f"wrk gave no result (exit {out.returncode}): {out.stderr.strip() or out.stdout[-300:]}")


def measure(target: Target, backend: Server, args: argparse.Namespace, workdir: Path, lua: Path,
            nonstop_help: str | None, nonstop_error: str | None) -> Row:
    row = Row(target.name, target.workers)
    server: Server | None = None
    try:
        port = backends.free_port()
        if target.kind == "nginx":
            server = backends.nginx(f"nginx-proxy-{target.workers}", workdir, port, workers=target.workers,
                                    backend=backend.port)
        elif target.kind == "haproxy":
            server = backends.haproxy("haproxy", workdir, port, backend.port, threads=target.workers)
        elif target.kind == "nonstop":
            if nonstop_help is None:
                raise StartError(nonstop_error or "nonstop proxy unavailable")
            server = backends.nonstop(f"nonstop-{target.workers}", workdir, port, backend.port,
                                      workers=target.workers, help_text=nonstop_help)
        if server is not None:
            server.start()
        wrk_port = server.port if server is not None else backend.port
        run_wrk(wrk_port, args.warmup, args.connections, args.threads, lua)
        cpu0 = (server.cpu_seconds() if server else 0.0, backend.cpu_seconds())
        res = run_wrk(wrk_port, args.duration, args.connections, args.threads, lua)
        cpu1 = (server.cpu_seconds() if server else 0.0, backend.cpu_seconds())
        n = max(1, res["requests"])
        row.requests = res["requests"]
        row.rps = res["requests"] / (res["duration_us"] / 1e6)
        row.p50_ms = res["p50_us"] / 1000
        row.p99_ms = res["p99_us"] / 1000
        row.errors = sum(res[k] for k in ("connect", "read", "write", "status", "timeout"))
        row.proxy_us = (cpu1[0] - cpu0[0]) / n * 1e6 if server else None
        row.backend_us = (cpu1[1] - cpu0[1]) / n * 1e6
    except (StartError, RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        row.error = str(e)
    finally:
        if server is not None:
            server.stop()
    return row


def median_row(rows: list[Row]) -> Row:
    ok = [r for r in rows if r.error is None]
    if not ok:
        return rows[-1]
    ok.sort(key=lambda r: r.rps)
    mid = ok[(len(ok) - 1) // 2]  # a real run, not an average of runs: its p99 and CPU belong together
    mid.rps_runs = tuple(round(r.rps) for r in ok)
    return mid


def targets(multi: int, only: set[str] | None) -> list[Target]:
    out = [Target("backend direct", "direct", 1), Target("nginx", "nginx", 1), Target("haproxy", "haproxy", 1),
           Target("nonstop", "nonstop", 1)]
    if multi > 1:
        out += [Target(f"nginx x{multi}", "nginx", multi), Target(f"nonstop x{multi}", "nonstop", multi)]
    if only:
        out = [t for t in out if t.kind in only or t.name in only]
    return out


def ratios(rows: list[Row]) -> dict[str, tuple[float | None, float | None]]:
    """Per target: (req/s ratio, p99 ratio) to the nginx row with the same worker count."""
    ref = {r.workers: r for r in rows if r.target.startswith("nginx") and r.error is None}
    out: dict[str, tuple[float | None, float | None]] = {}
    for r in rows:
        base = ref.get(r.workers) or ref.get(1)
        if r.error is None and base is not None and base.rps and base.p99_ms:
            out[r.target] = (r.rps / base.rps, r.p99_ms / base.p99_ms)
        else:
            out[r.target] = (None, None)
    return out


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[Row], markdown: bool = False) -> str:
    rat = ratios(rows)
    head = ["target", "req/s", "p50 ms", "p99 ms", "errors", "proxy CPU µs/req", "backend CPU µs/req",
            "× nginx req/s", "× nginx p99"]
    body = []
    for r in rows:
        if r.error is not None:
            body.append([r.target, "skipped: " + r.error] + [""] * 7)
            continue
        rr, pr = rat[r.target]
        body.append([r.target, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors),
                     _f(r.proxy_us, ".1f"), _f(r.backend_us, ".1f"), _f(rr, ".2f"), _f(pr, ".2f")])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in body:
            if b[1].startswith("skipped"):
                lines.append(f"| {b[0]} | {b[1]} |" + " |" * 7)
            else:
                lines.append("| " + " | ".join(b) + " |")
        return "\n".join(lines)
    measured = [b for b in body if not b[1].startswith("skipped")]
    widths = [max([len(head[i]), *(len(b[i]) for b in (body if i == 0 else measured))]) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    for b in body:
        if b[1].startswith("skipped"):
            lines.append(b[0].ljust(widths[0]) + "  " + b[1])
        else:
            lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=backends.ROOT,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def environment() -> dict:
    """What the numbers depend on: commit, proxy commit, tools, and how busy the machine was."""
    proxy_commit = _git("log", "-1", "--format=%h %cI %s", "--", "nonstop/proxy") or "none"
    dirty = _git("status", "--porcelain", "--", "nonstop/proxy")
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "proxy_commit": proxy_commit + (" (+ uncommitted changes)" if dirty else ""),
        "python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]),
        "haproxy": _version(["haproxy", "-v"]),
        "wrk": _version(["wrk", "-v"]),
        "nproc": os.cpu_count(),
        "hot_path": _hot_path(),
        "load_before": os.getloadavg(),
    }


def _hot_path() -> str:
    """Whether `python -m nonstop.proxy` runs the Cython-compiled hot path (nonstop.proxy.build)."""
    out = subprocess.run([sys.executable, "-c", "from nonstop.proxy import build; print(build.summary())"],
                         capture_output=True, text=True, cwd=backends.ROOT, env=backends._env(), timeout=60)
    return out.stdout.strip() or f"unknown ({out.stderr.strip()[-200:]})"


def record(rows: list[Row], env: dict, args: argparse.Namespace) -> None:
    load = ", ".join(f"{x:.2f}" for x in env["load_before"]) + " → " + ", ".join(f"{x:.2f}" for x in env["load_after"])
    runs = ""
    if args.rounds > 1:
        runs = "\n\nreq/s of each round (median reported): " + "; ".join(
            f"{r.target} {'/'.join(map(str, r.rps_runs))}" for r in rows if r.error is None)
    text = f"""
## {env['date']} — commit {env['commit']}

`bench/proxy.py --duration {args.duration} --warmup {args.warmup} --connections {args.connections} \
--threads {args.threads} --rounds {args.rounds} --multi {args.multi}{' --vary' if args.vary else ''}`

- nonstop proxy: {env['proxy_commit']}; hot path: {env['hot_path']}
- requests: {'every one different (`--vary`: /?n=1, /?n=2, …)' if args.vary else 'the same `GET /` repeated (wrk default)'}
- {env['nginx']}; {env['haproxy']}; {env['wrk'].split(' Copyright')[0]}; Python {env['python']}
- load average (1, 5, 15 min) before → after: {load}{'' if not args.note else chr(10) + '- ' + args.note}

{table(rows, markdown=True)}{runs}
"""
    with RESULTS.open("a") as f:
        f.write(text)
    print(f"appended to {RESULTS}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="measured seconds per row (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each row (default 2)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1: one of the 2 cores)")
    p.add_argument("--rounds", type=int, default=1, help="repeat all rows, report the median (default 1)")
    p.add_argument("--multi", type=int, default=2, help="workers for the multi-worker rows; 0 or 1: none")
    p.add_argument("--only", default="", help="comma list of targets: direct,nginx,haproxy,nonstop")
    p.add_argument("--vary", action="store_true", help="a different path for every request (no repeated bytes)")
    p.add_argument("--record", action="store_true", help=f"append the results as markdown to {RESULTS.name}")
    p.add_argument("--note", default="", help="a line added to the record (e.g. what else ran)")
    p.add_argument("--json", action="store_true", help="print rows as JSON too")
    p.add_argument("--keep-tmp", action="store_true", help="keep the generated configs and logs")
    args = p.parse_args(argv)

    if shutil.which("wrk") is None:
        print("wrk not found (Debian package 'wrk')", file=sys.stderr)
        return 2
    env = environment()
    only = {x.strip() for x in args.only.split(",") if x.strip()} or None
    plan = targets(args.multi, only)
    nonstop_help, nonstop_error = None, None
    if any(t.kind == "nonstop" for t in plan):
        try:
            nonstop_help = backends.nonstop_help()
        except StartError as e:
            nonstop_error = str(e)
            print(f"note: {e}; the nonstop rows are skipped", file=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="nonstop-bench-"))
    lua = workdir / "report.lua"
    lua.write_text((_WRK_LUA_VARY if args.vary else "") + _WRK_LUA)
    backend = backends.nginx("backend", workdir, backends.free_port(), workers=1)
    results: dict[str, list[Row]] = {t.name: [] for t in plan}
    try:
        backend.start()
        for rnd in range(args.rounds):
            for t in plan:
                print(f"[round {rnd + 1}/{args.rounds}] {t.name} ...", file=sys.stderr, flush=True)
                row = measure(t, backend, args, workdir, lua, nonstop_help, nonstop_error)
                results[t.name].append(row)
                if row.error:
                    print(f"  skipped: {row.error}", file=sys.stderr)
                else:
                    print(f"  {row.rps:,.0f} req/s, p99 {row.p99_ms:.2f} ms", file=sys.stderr)
    except StartError as e:
        print(f"backend did not start: {e}", file=sys.stderr)
        return 1
    finally:
        backend.stop()
        if args.keep_tmp:
            print(f"configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    env["load_after"] = os.getloadavg()
    rows = [median_row(results[t.name]) for t in plan]
    print(table(rows))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    if args.record:
        record(rows, env, args)
    # Only the reference rows must run; nonstop rows fail soft while the proxy is being written.
    return 1 if any(r.error for r in rows if not r.target.startswith("nonstop")) else 0


if __name__ == "__main__":
    sys.exit(main())
