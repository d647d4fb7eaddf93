"""bench/soak.py's verdicts and tables: pure functions over what the soak recorded (no processes, no I/O).

A soak records three things — per-interval ``Sample`` rows (memory, fds, instances, state dir, load
counters), one ``Action`` per deploy or rollback, and the two load clients' results — and this module
turns them into the checks the issue asks for (flat RSS, fds back where they started, every action
exit 0, no request failed, nothing left running) and into the markdown section ``--record`` appends to
bench/RESULTS.md. Kept apart from the script so the arithmetic is testable without an hour of load.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# Where "early" and "late" are, as fractions of the run: minutes 5-15 and the last 10 of an hour. The
# first five minutes are warm-up (imports, first deploys, caches filling); a leak shows as the late
# window sitting above the early one, whatever the run's length.
EARLY = (5 / 60, 15 / 60)
LATE = (50 / 60, 1.0)

MB = 1024 * 1024


@dataclass
class Sample:
    """One look at the stack: ``t`` seconds since the load started (``label`` names the quiescent ones)."""

    t: float
    proxy_pid: int | None
    agent_pid: int | None
    proxy_rss: int | None  # bytes
    proxy_uss: int | None
    agent_rss: int | None
    agent_uss: int | None
    proxy_fds: int | None
    agent_fds: int | None
    instances: int  # the app's instance processes alive (the agent's children but the proxy)
    zombies: int  # exited children of the agent or the proxy not yet reaped
    state_bytes: int
    logs_bytes: int
    served: int  # both load clients, so far
    failed: int
    load1: float
    live: str | None = None  # the live release, as `nonstop status` told it
    label: str = ""  # "start" / "end" for the quiescent samples taken without load
    metrics: int | None = None  # the dashboard's GET /metrics status (None: no dashboard, or no answer)


@dataclass
class Action:
    """One deploy or rollback through the CLI, as it went."""

    index: int
    kind: str  # "deploy" | "rollback"
    version: str | None  # the version deployed (None for a rollback)
    expect_live: str | None  # the release that must be live afterwards
    at: float  # seconds since the load started
    seconds: float = 0.0  # the CLI's wall time
    code: int | None = None  # its exit code (None: it did not finish)
    agent_seconds: float | None = None  # the deployment's own duration, from --json
    live: str | None = None  # what status said was live afterwards
    reason: str = ""
    error: str = ""  # why this action counts as failed ("" when it did not)
    mono: tuple[float, float] = field(default=(0.0, 0.0), repr=False)  # monotonic start, end

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Verdict:
    """One check of the soak: its name, whether it passed, and the figures it was decided on."""

    name: str
    ok: bool
    detail: str


def window(samples: list[Sample], span: tuple[float, float], duration: float) -> list[Sample]:
    """The unlabelled samples whose time falls in ``span`` (fractions of ``duration``); the one nearest
    the span's middle when none does (a short run, or a coarse sampling interval)."""
    series = [s for s in samples if not s.label]
    if not series:
        return []
    lo, hi = span[0] * duration, span[1] * duration
    inside = [s for s in series if lo - 1e-6 <= s.t <= hi + 1e-6]
    if inside:
        return inside
    mid = (lo + hi) / 2
    return [min(series, key=lambda s: abs(s.t - mid))]


def _slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return None
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / den * 3600


def flatness(samples: list[Sample], key: str, duration: float, max_growth_mb: float) -> dict:
    """``key`` (``proxy_rss``, ``agent_uss`` …) late vs early: means, growth in MB and %, the trend
    after warm-up (MB per hour, least squares), and whether the growth stays within ``max_growth_mb``."""
    early = [getattr(s, key) for s in window(samples, EARLY, duration) if getattr(s, key) is not None]
    late = [getattr(s, key) for s in window(samples, LATE, duration) if getattr(s, key) is not None]
    if not early or not late:
        return {"key": key, "ok": False, "why": "no samples"}
    e, last = statistics.fmean(early) / MB, statistics.fmean(late) / MB
    growth = last - e
    trend = _slope_per_hour([(s.t, getattr(s, key) / MB) for s in samples
                             if not s.label and s.t >= EARLY[0] * duration and getattr(s, key) is not None])
    return {"key": key, "early_mb": round(e, 2), "late_mb": round(last, 2), "growth_mb": round(growth, 2),
            "growth_pct": round(growth / e * 100, 1) if e else None,
            "trend_mb_per_h": None if trend is None else round(trend, 2),
            "early_samples": len(early), "late_samples": len(late),
            "ok": growth <= max_growth_mb}


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def action_summary(actions: list[Action]) -> dict:
    """Per kind: how many, how many failed, p50 and max of the CLI's wall time."""
    out = {}
    for kind in ("deploy", "rollback"):
        mine = [a for a in actions if a.kind == kind]
        secs = [a.seconds for a in mine]
        out[kind] = {"count": len(mine), "failed": sum(1 for a in mine if not a.ok),
                     "p50_s": None if not secs else round(quantile(secs, 0.5), 3),
                     "max_s": None if not secs else round(max(secs), 3)}
    return out


def nearest_action(actions: list[Action], when: float) -> str:
    """Which action a moment (monotonic) falls in, or the last one before it and how long after."""
    before = [a for a in actions if a.mono[0] <= when]
    if not before:
        return "before the first action"
    a = before[-1]
    if when <= a.mono[1]:
        return f"during action {a.index} ({a.kind} {a.version or ''})".replace(" )", ")")
    return f"{when - a.mono[1]:.2f}s after action {a.index} ({a.kind}{' ' + a.version if a.version else ''})"


def verdicts(*, samples: list[Sample], actions: list[Action], duration: float, max_growth_mb: float,
             fd_slack: int, failed_requests: int, failure_reasons: dict[str, int], leftovers: list[str],
             busy_ports: list[int], dashboard: bool) -> tuple[list[Verdict], dict]:
    """Every check of the soak, and the flatness figures they were decided on."""
    out: list[Verdict] = []
    out.append(Verdict("no failed request", failed_requests == 0,
                       f"{failed_requests} failed" + ("" if not failure_reasons else ": " + "; ".join(
                           f"{n} x {why}" for why, n in sorted(failure_reasons.items(), key=lambda kv: -kv[1])))))
    bad = [a for a in actions if not a.ok]
    out.append(Verdict("every deploy and rollback exit 0, the expected release live", not bad and bool(actions),
                       f"{len(actions)} actions, {len(bad)} failed" + "".join(
                           f"; #{a.index} {a.kind} {a.version or ''}: {a.error}" for a in bad[:5])))
    flat = {}
    for who in ("proxy", "agent"):
        f = flatness(samples, f"{who}_rss", duration, max_growth_mb)
        flat[who] = f
        flat[who + "_uss"] = flatness(samples, f"{who}_uss", duration, max_growth_mb)
        if "growth_mb" not in f:
            out.append(Verdict(f"{who} RSS flat", False, f.get("why", "?")))
            continue
        out.append(Verdict(f"{who} RSS flat", f["ok"],
                           f"{f['early_mb']} MB (early window, {f['early_samples']} samples) → {f['late_mb']} MB "
                           f"(late, {f['late_samples']}): {f['growth_mb']:+.2f} MB ({f['growth_pct']:+.1f}%), "
                           f"trend {f['trend_mb_per_h']} MB/h; limit +{max_growth_mb:g} MB"))
    start = next((s for s in samples if s.label == "start"), None)
    end = next((s for s in samples if s.label == "end"), None)
    for who in ("proxy", "agent"):
        a = getattr(start, f"{who}_fds", None) if start else None
        b = getattr(end, f"{who}_fds", None) if end else None
        ok = a is not None and b is not None and b <= a + fd_slack
        out.append(Verdict(f"{who} fds back to the start", ok,
                           f"{a} before the load → {b} after it (both idle, {start.instances if start else '?'} → "
                           f"{end.instances if end else '?'} instances); slack {fd_slack}"))
    pids = {(s.agent_pid, s.proxy_pid) for s in samples if s.agent_pid and s.proxy_pid}
    unanswered = sum(1 for s in samples if not (s.agent_pid and s.proxy_pid))
    out.append(Verdict("same agent and proxy processes throughout", len(pids) == 1 and not unanswered,
                       "agent, proxy pids: " + "; ".join(f"{a}, {p}" for a, p in sorted(pids))
                       + (f"; {unanswered} samples without them (status did not answer)" if unanswered else "")))
    out.append(Verdict("no unreaped child at the end", end is not None and end.zombies == 0,
                       f"{end.zombies if end else '?'} zombies at the end (idle); at most "
                       f"{max((s.zombies for s in samples), default=0)} in any sample"))
    if dashboard:
        scrapes = [s.metrics for s in samples]
        out.append(Verdict("the dashboard's /metrics answered 200 every sample", all(m == 200 for m in scrapes),
                           f"{sum(m == 200 for m in scrapes)} of {len(scrapes)}"))
    out.append(Verdict("no process left after down", not leftovers,
                       "none" if not leftovers else "; ".join(leftovers[:10])))
    out.append(Verdict("ports free after down", not busy_ports,
                       "all free" if not busy_ports else "still bound: " + ", ".join(map(str, busy_ports))))
    return out, flat


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _mb(v: int | None) -> str:
    return "" if v is None else f"{v / MB:.1f}"


SERIES_COLS = ("min", "proxy RSS MB", "proxy USS MB", "agent RSS MB", "agent USS MB", "proxy fds", "agent fds",
               "instances", "zombies", "state dir MB", "logs KB", "served", "failed", "load 1m", "live")


def series_rows(samples: list[Sample]) -> list[list[str]]:
    rows = []
    for s in samples:
        when = s.label + " (idle)" if s.label else f"{s.t / 60:.1f}"
        rows.append([when, _mb(s.proxy_rss), _mb(s.proxy_uss), _mb(s.agent_rss), _mb(s.agent_uss),
                     str(s.proxy_fds), str(s.agent_fds), str(s.instances), str(s.zombies),
                     f"{s.state_bytes / MB:.2f}", f"{s.logs_bytes / 1024:.0f}", str(s.served), str(s.failed),
                     f"{s.load1:.2f}", s.live or ""])
    return rows


def sample_line(s: Sample) -> str:
    """The line printed as the soak goes."""
    when = f"[{s.label:>5}]" if s.label else f"[{s.t / 60:5.1f} min]"
    return (f"{when} proxy rss {_mb(s.proxy_rss)} uss {_mb(s.proxy_uss)} MB fds {s.proxy_fds} | "
            f"agent rss {_mb(s.agent_rss)} uss {_mb(s.agent_uss)} MB fds {s.agent_fds} | "
            f"instances {s.instances} zombies {s.zombies} | state {s.state_bytes / MB:.2f} MB | "
            f"served {s.served} failed {s.failed} | live {s.live} | load {s.load1:.2f}")


def markdown_table(cols: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def section(result: dict) -> str:
    """The markdown ``--record`` appends to bench/RESULTS.md."""
    env, acts, loads = result["environment"], result["actions_summary"], result["loads"]
    la = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    lines = [
        "", f"### bench/soak.py — {env['date']} — commit {env['commit']}", "",
        f"`{result['command']}` on {env['machine']}; hot path: {env['hot_path']}.", "",
        f"- app: {result['app']}; router embedded, blue-green, dashboard {'on' if result['dashboard'] else 'off'}",
        f"- {result['minutes']:g} minutes; an action every {result['every_s']:g} s (every "
        f"{ordinal(result['rollback_every'])} a `nonstop rollback`, the others `nonstop deploy --version vN`); "
        f"a sample every {result['sample_s']:g} s",
    ]
    for ld in loads:
        s = ld["summary"]
        lines.append(f"- load {ld['name']} ({ld['shape']}): {s['total']} requests, {s['served']} served, "
                     f"**{s['failed']} failed**; {s['rate_rps']} req/s, p50 {s['latency_p50_ms']} ms, "
                     f"p99 {s['latency_p99_ms']} ms, longest gap without a success "
                     f"{s['longest_gap_s'] * 1000:.0f} ms")
    lines.append(f"- load average (1, 5, 15 min) before → after: {la(env['load_before'])} → "
                 f"{la(env['load_after'])}")
    for kind in ("deploy", "rollback"):
        a = acts[kind]
        lines.append(f"- {kind}s: {a['count']}, {a['failed']} failed; CLI wall time p50 {_s(a['p50_s'])}, "
                     f"max {_s(a['max_s'])}")
    lines += ["", "Verdicts:", "",
              markdown_table(("check", "result", "figures"),
                             [[v["name"], "pass" if v["ok"] else "**FAIL**", v["detail"]] for v in result["verdicts"]]),
              "", f"Overall: **{'PASS' if result['ok'] else 'FAIL'}**.", ""]
    if result.get("failures"):
        lines += ["Failed requests (first 20):", ""]
        lines += [f"- load {f['load']} at {f['at_s']}s ({f['kind']}): {f['error']} — {f['when']}"
                  for f in result["failures"][:20]]
        lines.append("")
    lines += ["Series (the `start` and `end` rows are taken idle, before and after the load; RSS/USS in MB):", "",
              markdown_table(SERIES_COLS, series_rows([Sample(**s) for s in result["samples"]])), ""]
    return "\n".join(lines)
