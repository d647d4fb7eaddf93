"""Benchmark nonstop's proxy against nginx and HAProxy, side by side in one run (issues 2 and 16).

    .venv/bin/python bench/proxy.py                                  # 5 rounds, 50 connections, 10 s each
    .venv/bin/python bench/proxy.py --pin                            # each proxy on core 1, the load on core 0
    .venv/bin/python bench/proxy.py --connections 50,500,2000 --hold 1000 --record --note "quiet machine"
    .venv/bin/python bench/proxy.py --tls                            # the same over HTTPS, plus new handshakes
    .venv/bin/python bench/proxy.py --only direct,nginx,nonstop --rounds 2 --duration 1 --warmup 1

One backend (nginx answering ``return 200 "ok"``, one worker) serves every row; in front of it, in
turn: nothing ("backend direct"), nginx, HAProxy, ``nonstop proxy`` with one worker, and nginx and
nonstop with ``--multi`` workers. ``--rounds`` (default 5) interleaves the rows: each round runs every
row once, in an order turned by one place per round, so no row is always first or last. In each
round a row's proxy is started fresh, then measured for every table: ``--hold N`` idle keep-alive
connections (memory), each ``--connections`` count (a wrk warm-up, then the measured run), and with
``--tls`` new full TLS handshakes. Each count is its own table.

Per row and table: every figure is the median over rounds (each round's value is kept and printed);
each ratio to nginx (nginx with the same worker count) is computed per round, against the nginx run
of the same round, and printed as ``median (min–max)``; a ratio whose spread crosses 1.0 is flagged
(†). Figures: req/s, p50/p99 (wrk's ``done()`` hook, ``--timeout 5s``), wrk errors (summed over
rounds), CPU µs per request of the proxy's process tree, of the backend and of wrk (psutil and the
children's rusage, measured run only), and the proxy tree's RSS and USS read just before wrk ends.

``--pin``: every thread of a 1-worker proxy's process tree runs on core 1 (started there, checked
before each measured run); wrk, the TLS client, the backend and this script on core 0. Rows with
more workers run their proxy on both cores (two workers cannot each have a core of their own on a
2-core machine), sharing core 0 with the load; the output says so. ``backend direct`` has wrk and the
backend on core 0 together.

Limits: RLIMIT_NOFILE is raised to the hard limit before any server starts (every server inherits
it); nginx gets ``worker_rlimit_nofile`` and ``worker_connections`` ≥ 2 × the most connections,
HAProxy ``maxconn`` ≥ them, every listener the same backlog (2048, nonstop's). nonstop needs no flag.
Idle upstream connections: nginx ``keepalive 4096`` (nonstop's bound, ``pool.MAX_IDLE``; HAProxy keeps
every one by default), so no proxy closes connections its next requests must open again (issue 16).

``--tls``: the proxies serve HTTPS (a self-signed ECDSA P-256 certificate made at start, key 0600; the
TLS 1.2 ciphers of nonstop, TLS 1.3 suites OpenSSL's, session tickets at each server's default) to a
plain-HTTP backend; ``backend direct`` is left out. Two measurements: wrk over https (keep-alive),
and ``bench/tlsload.py``'s new connections: a full handshake (the client never offers a session, so
nothing is resumed), one request with ``Connection: close``, the answer to its end.

Rows that cannot run say why and the rest goes on. Every process started is stopped by PID at the
end. Loopback only. ``--record`` appends a section to bench/RESULTS.md (older sections are never
rewritten).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

# bench/ is a directory of scripts, not a package; appended (not prepended) so it shadows nothing.
sys.path.append(str(Path(__file__).resolve().parent))
import backend_servers as backends  # noqa: E402
import proxy_report as report  # noqa: E402
from backend_servers import Sizing, StartError  # noqa: E402
from proxy_runs import LOAD_CPUS, Bench, Target, load_key, measure_row, table_keys  # noqa: E402
from tlsload import make_cert  # noqa: E402

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
WRK_LUA_VARY = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/?n=" .. n)
end
"""


class UsageError(Exception):
    """A flag that cannot work on this machine or with the others given; exit 2."""


def targets(multi: int, only: set[str] | None, tls: bool = False) -> list[Target]:
    out = [Target("backend direct", "direct", 1), Target("nginx", "nginx", 1), Target("haproxy", "haproxy", 1),
           Target("nonstop", "nonstop", 1)]
    if multi > 1:
        out += [Target(f"nginx x{multi}", "nginx", multi), Target(f"nonstop x{multi}", "nonstop", multi)]
    if tls:
        out = [t for t in out if t.kind != "direct"]  # the backend speaks plain HTTP
    if only:
        out = [t for t in out if t.kind in only or t.name in only]
    return out


def parse_counts(text: str) -> tuple[int, ...]:
    """``50,500,2000`` → (50, 500, 2000); each a positive whole number, no repeats."""
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--connections: {text!r} is not a comma list of whole numbers (e.g. 50,500,2000)") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise UsageError(f"--connections: {text!r}: give positive counts, each once")
    return counts


def raise_nofile(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE to its hard limit (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UsageError(f"this run needs {needed} open files (2 per connection in a proxy, plus margin) but the "
                         f"hard limit is {hard}: lower --connections/--hold or raise it (ulimit -Hn, limits.conf)")
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def pin_text(pin: bool, multi: int) -> str:
    if not pin:
        return "not pinned: the scheduler spreads wrk, the backend and each proxy over both cores"
    text = ("--pin: each 1-worker proxy's whole process tree (every thread, checked before each measured run) on "
            "core 1; wrk, the TLS client, the backend and the bench on core 0; backend direct: wrk and backend "
            "share core 0")
    if multi > 1:
        text += (f"; the x{multi} rows run their proxy on cores 0 and 1 ({multi} workers cannot each have a core "
                 "of their own on 2 cores), sharing core 0 with the load")
    return text


def check_pin() -> None:
    have = os.sched_getaffinity(0)
    if not {0, 1} <= have:
        raise UsageError(f"--pin needs cores 0 and 1 (this process may use {sorted(have)})")


def titles(args: argparse.Namespace) -> dict[str, str]:
    scheme = "HTTPS" if args.tls else "HTTP"
    target = "; issue 16 asks ≥ 0.8× nginx" if args.tls else ""
    out = {load_key(c): f"{scheme} keep-alive, {c} connections (wrk -t{args.threads} -c{c}, {args.duration} s){target}"
           for c in args.counts}
    out["handshakes"] = (f"HTTPS new connections: full handshake + one request each (bench/tlsload.py, "
                         f"{args.handshake_threads} threads, {args.duration} s){target}")
    out["hold"] = (f"proxy memory with {args.hold} idle keep-alive connections open (one request each); "
                   "issue 16 asks RSS ≤ 40 MB at 1,000")
    return out


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


def resolved(args: argparse.Namespace) -> str:
    """Every setting the run used, defaults included, as flags."""
    flags = [f"--duration {args.duration}", f"--warmup {args.warmup}", f"--connections {args.connections}",
             f"--threads {args.threads}", f"--rounds {args.rounds}", f"--multi {args.multi}", f"--hold {args.hold}"]
    if args.only:
        flags.append(f"--only {args.only}")
    flags += [f for f, on in (("--vary", args.vary), ("--pin", args.pin), ("--tls", args.tls)) if on]
    if args.tls:
        flags.append(f"--handshake-threads {args.handshake_threads}")
    return " ".join(flags)


def facts(env: dict, args: argparse.Namespace, sizing: Sizing, orders: list[list[str]], tls: dict[str, str],
          key_type: str) -> list[str]:
    """The lines that say how this run was made (printed, and recorded)."""
    lines = [
        f"nonstop proxy: {env['proxy_commit']}; hot path: {env['hot_path']}",
        "requests: " + ("every one different (`--vary`: /?n=1, /?n=2, …)" if args.vary
                        else "the same `GET /` repeated (wrk default)"),
        f"pinning: {pin_text(args.pin, args.multi)}",
        f"limits: RLIMIT_NOFILE {sizing.nofile} (bench and every server); nginx worker_connections "
        f"{sizing.worker_connections}; HAProxy maxconn {sizing.maxconn}; listen backlog {backends.BACKLOG} everywhere",
        f"rounds: {args.rounds}, order turned by one per round: "
        + "; ".join(f"{i + 1}: {', '.join(o)}" for i, o in enumerate(orders)),
    ]
    if args.tls:
        lines.append(f"TLS: {key_type} certificate; negotiated (Python's client): "
                     + "; ".join(f"{k} {v}" for k, v in tls.items()))
    lines.append(f"{env['nginx']}; {env['haproxy']}; {env['wrk'].split(' Copyright')[0]}; Python {env['python']}")
    if "load_after" in env:
        lines.append("load average (1, 5, 15 min) before → after: " + ", ".join(f"{x:.2f}" for x in env["load_before"])
                     + " → " + ", ".join(f"{x:.2f}" for x in env["load_after"]))
    if args.note:
        lines.append(args.note)
    return lines


def render(summaries: dict[str, list[report.RowSummary]], names: dict[str, str], markdown: bool) -> str:
    parts = []
    for key, rows in summaries.items():
        kind = key.split()[0]
        cols = report.COLUMNS[kind]
        head = f"### {names[key]}" if markdown else f"== {names[key]}"
        note = "medians over rounds; × nginx: per-round ratio to nginx of the same round, median (min–max)"
        per = ("per round (rate · p99 · × nginx rate · × nginx p99):" if kind != "hold" else "per round (RSS held):")
        parts.append(f"{head}\n\n{note}\n\n{report.table(rows, cols, markdown)}\n\n{per}\n\n"
                     f"{report.per_round_table(rows, kind, markdown)}")
    return "\n\n".join(parts)


def record(text: str, env: dict, args: argparse.Namespace, lines: list[str]) -> None:
    command = "bench/proxy.py " + " ".join(shlex.quote(a) for a in args.argv)
    section = (f"\n## {env['date']} — commit {env['commit']}\n\n`{command.strip()}`\n\n"
               f"(every setting: `{resolved(args)}`)\n\n" + "\n".join(f"- {ln}" for ln in lines) + f"\n\n{text}\n")
    with RESULTS.open("a") as f:  # append only: earlier sections are the lead's to edit
        f.write(section)
    print(f"appended to {RESULTS}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="measured seconds per row and table (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds before each measured run (default 2)")
    p.add_argument("--connections", default="50", help="wrk -c, a comma list: one table each (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1: one of the 2 cores)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians and spreads over them (default 5)")
    p.add_argument("--multi", type=int, default=2, help="workers for the multi-worker rows; 0 or 1: none")
    p.add_argument("--only", default="", help="comma list of targets: direct,nginx,haproxy,nonstop (or row names)")
    p.add_argument("--vary", action="store_true", help="a different path for every request (no repeated bytes)")
    p.add_argument("--pin", action="store_true", help="each proxy on core 1, wrk and the backend on core 0")
    p.add_argument("--hold", type=int, default=0, help="also measure proxy memory with N idle keep-alive connections")
    p.add_argument("--tls", action="store_true", help="over HTTPS, plus new full handshakes per second")
    p.add_argument("--handshake-threads", type=int, default=8, help="--tls: concurrent handshake loops (default 8)")
    p.add_argument("--record", action="store_true", help=f"append the results as markdown to {RESULTS.name}")
    p.add_argument("--note", default="", help="a line added to the record (e.g. what else ran)")
    p.add_argument("--json", action="store_true", help="print every sample and summary as JSON too")
    p.add_argument("--keep-tmp", action="store_true", help="keep the generated configs and logs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.counts = parse_counts(args.connections)
        if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.hold < 0 or args.handshake_threads < 1:
            raise UsageError("--rounds, --duration and --handshake-threads must be ≥ 1; --warmup and --hold ≥ 0")
        if shutil.which("wrk") is None:
            raise UsageError("wrk not found (Debian package 'wrk')")
        if args.pin:
            check_pin()
        nofile = raise_nofile(2 * max(*args.counts, args.hold) + 512)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.pin:
        os.sched_setaffinity(0, LOAD_CPUS)  # the bench, and so wrk, tlsload and the backend, on core 0
    sizing = Sizing(max(*args.counts, args.hold), nofile)
    env = environment()
    only = {x.strip() for x in args.only.split(",") if x.strip()} or None
    plan = targets(args.multi, only, args.tls)
    if not plan:
        print(f"error: --only {args.only!r} leaves no row to run", file=sys.stderr)
        return 2
    nonstop_help, nonstop_error = None, None
    if any(t.kind == "nonstop" for t in plan):
        try:
            nonstop_help = backends.nonstop_help()
        except StartError as e:
            nonstop_error = str(e)
            print(f"note: {e}; the nonstop rows are skipped", file=sys.stderr)

    workdir = Path(tempfile.mkdtemp(prefix="nonstop-bench-"))
    lua = workdir / "report.lua"
    lua.write_text((WRK_LUA_VARY if args.vary else "") + _WRK_LUA)
    tls = make_cert(workdir) if args.tls else None
    backend = backends.nginx("backend", workdir, backends.free_port(), workers=1, sizing=sizing,
                             cpus=LOAD_CPUS if args.pin else None)
    bench = Bench(args.duration, args.warmup, args.counts, args.threads, args.hold, tls, args.handshake_threads,
                  args.pin, sizing, backend, workdir, lua, nonstop_help, nonstop_error)
    samples: dict[str, list[report.Sample]] = {k: [] for k in table_keys(bench)}
    orders: list[list[str]] = []
    negotiated: dict[str, str] = {}
    try:
        backend.start()
        for rnd in range(args.rounds):
            order = report.rotated(plan, rnd)
            orders.append([t.name for t in order])
            for t in order:
                print(f"[round {rnd + 1}/{args.rounds}] {t.name} ...", file=sys.stderr, flush=True)
                got, tls_info = measure_row(bench, t, rnd + 1, lambda m: print(f"  {m}", file=sys.stderr, flush=True))
                for key, s in got.items():
                    samples[key].append(s)
                    if s.error and key == next(iter(got)):
                        print(f"  skipped: {s.error}", file=sys.stderr)
                if tls_info:
                    negotiated.setdefault(t.name, tls_info)
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
    names = [t.name for t in plan]
    summaries = {k: report.summarise(v, names, args.rounds, report.RATIO_METRICS[k.split()[0]])
                 for k, v in samples.items()}
    lines = facts(env, args, sizing, orders, negotiated, tls.key_type if tls else "")
    print("\n".join(lines) + "\n")
    print(render(summaries, titles(args), markdown=False))
    if args.json:
        print(json.dumps({"samples": {k: [asdict(s) for s in v] for k, v in samples.items()},
                          "summaries": {k: [asdict(r) for r in v] for k, v in summaries.items()}}, indent=2))
    if args.record:
        record(render(summaries, titles(args), markdown=True), env, args, lines)
    # Only the reference rows must run; nonstop rows fail soft while the proxy is being written.
    return 1 if any(not r.measured for rows in summaries.values() for r in rows if r.kind != "nonstop") else 0


if __name__ == "__main__":
    sys.exit(main())
