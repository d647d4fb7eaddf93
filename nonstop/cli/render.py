"""Human output: deployment progress and the status picture (rich; respects NO_COLOR).

On a terminal, tables fit its width by folding long cells onto more lines
(never cutting them: an instance id keeps its port). Into a pipe or a file
they are plain text, one line per row, nothing wrapped or cut, no trailing
blanks: ``nonstop history | grep failed`` finds whole reasons.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

_ICON = {
    "start": "▶",
    "step": "…",
    "release": "✓",
    "instance_starting": "…",
    "instance_healthy": "✓",
    "switched": "⇄",
    "draining": "…",
    "drained": "✓",
    "kept_warm": "✓",
    "instance_stopped": "■",
    "smoke_passed": "✓",
    "analysis": "≈",
    "weight": "⇄",
    "error": "✗",
}


class Progress:
    """Prints each event as a line, with a spinner on the current step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.t0 = time.monotonic()
        self._status = console.status("waiting for the agent…") if console.is_terminal else None
        if self._status:
            self._status.start()

    def event(self, ev: dict) -> None:
        t = ev.get("type")
        msg = ev.get("message", "")
        el = f"[dim]{time.monotonic() - self.t0:6.1f}s[/]"
        if t == "result":
            self.close()
            if ev.get("ok"):
                self.console.print(f"{el} [green]✓ {msg}[/]")
            else:
                self.console.print(f"{el} [red]✗ {msg}[/]")
                detail = ev.get("detail") or {}
                for check in detail.get("checks", []):
                    self.console.print(f"         health: {check}")
                if detail.get("log_tail"):
                    self.console.print("         log tail:")
                    for line in str(detail["log_tail"]).splitlines()[-15:]:
                        self.console.print(f"           {line}", markup=False, highlight=False)
                if detail.get("smoke_output"):
                    self.console.print("         smoke output:")
                    for line in str(detail["smoke_output"]).splitlines()[-15:]:
                        self.console.print(f"           {line}", markup=False, highlight=False)
            return
        icon = _ICON.get(t, "·")
        style = "red" if t in ("error", "analysis_failed") else ("yellow" if t in ("paused", "waiting") else "")
        line = f"{el} {icon} {msg}"
        self.console.print(f"[{style}]{line}[/]" if style else line)
        if self._status and t == "step":
            self._status.update(msg)

    def close(self) -> None:
        if self._status:
            self._status.stop()
            self._status = None


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = time.time() - ts
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m"


def table(console: Console, columns: tuple[str, ...], rows: list[tuple[str, ...]], title: str | None = None) -> None:
    """Print a table: rich on a terminal (long cells fold), aligned plain text elsewhere."""
    if console.is_terminal:
        t = Table(title=title, box=None, pad_edge=False, title_justify="left")
        for col in columns:
            t.add_column(col, overflow="fold")
        for row in rows:
            t.add_row(*row)
        console.print(t)
        return
    widths = [max([len(col), *(len(r[i]) for r in rows)]) for i, col in enumerate(columns)]
    lines = [title] if title else []
    for cells in (columns, *rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    console.out("\n".join(lines), highlight=False)


def status(console: Console, st: dict) -> None:
    console.print(f"[bold]{st['app']}[/] on http://{st['listen']}   router: {st['router']['type']}   live: [bold]{st.get('live_release') or '-'}[/]")
    if st.get("dashboard"):
        console.print(f"dashboard: {st['dashboard']}")
    if st.get("routes"):
        split = "  ".join(f"{r['release']} {r['weight']}% → {', '.join(r['targets'])}" for r in st["routes"])
        console.print(f"traffic: {split}")
    else:
        console.print("traffic: [yellow]no route (requests are held, then 503)[/]")
    rows = []
    instances = st.get("instances", [])
    containers = any(i.get("container") for i in instances)  # a container runtime: its id, not a pid
    for i in instances:
        state = i["state"] if i["alive"] else f"{i['state']} (dead)"
        if i.get("crash_loop"):
            state += ", CRASH LOOP"
        if i.get("warm_until"):
            state += f", warm {max(0, i['warm_until'] - time.time()):.0f}s"
        runs = (i.get("container") or "-") if containers else str(i["pid"])
        rows.append((i["id"], i["release"], runs, state, "yes" if i["routed"] else "no", _dur(i["uptime"]), str(i["restarts"])))
    table(console, ("instance", "release", "container" if containers else "pid", "state", "routed", "uptime", "restarts"), rows)
    d = st.get("deployment")
    if d:
        line = f"deployment #{d['id']}: {d['strategy']} → {d['release']}  state {d['state']}  phase {d.get('phase') or '-'}  started {_ago(d['started_at'])}"
        console.print(f"[yellow]{line}[/]")
        if d.get("canary"):
            cn = d["canary"]
            got = cn.get("received") or {}
            recv = (
                f" (received {got['share']:.1%} of {got['requests']:,} in the last window)"
                if got.get("share") is not None else ""
            )
            console.print(
                f"  canary weight {cn.get('weight')}%{recv}  step {cn.get('step')}/{cn.get('steps')}  "
                f"failed checks {cn.get('failures', 0)}/{cn.get('failure_limit', '-')}  waiting for: {cn.get('waiting_for') or '-'}"
            )
            for a in cn.get("analysis", [])[-3:]:
                style = {"pass": "green", "fail": "red"}.get(a.get("verdict"), "yellow")
                console.print(f"  analysis: [{style}]{a.get('verdict')}[/]  {a.get('summary') or a.get('reason') or ''}")
        if d.get("rolling"):
            rl = d["rolling"]
            console.print(
                f"  rolling batch {rl.get('batch')}/{rl.get('batches')}  old {rl.get('old')}  new {rl.get('new')}  "
                f"floor {rl.get('floor')}  {rl.get('doing') or ''}"
            )
        for key in ("watch", "batch_watch"):
            w = d.get(key)
            if not w:
                continue
            base = w.get("baseline")
            base_words = (
                f"baseline {base['requests']} req, 5xx {base['error_rate']:.1%}" if base and base.get("error_rate") is not None
                else "no baseline"
            )
            console.print(
                f"  watching {w.get('release')}: {w.get('remaining', 0):.0f}s left  "
                f"failed checks {w.get('failures', 0)}/{w.get('failure_limit', '-')}  {base_words}"
            )
            for a in w.get("analysis", [])[-3:]:
                style = {"pass": "green", "fail": "red"}.get(a.get("verdict"), "yellow")
                console.print(f"  analysis +{a.get('after', 0):g}s: [{style}]{a.get('verdict')}[/]  {a.get('summary') or ''}")
    else:
        console.print("no deployment in progress")


def history(console: Console, h: dict) -> None:
    by = any(d.get("holder") for d in h["deployments"])  # a cluster's history: who ran each (CI job, laptop)
    deployments = [
        (str(d["id"]), d["release"], d["strategy"], d.get("from_release") or "-", d.get("outcome") or d["state"],
         _dur(d.get("seconds")), _ago(d["started_at"]), *((d.get("holder") or "-",) if by else ()), _one_line(d.get("reason") or ""))
        for d in h["deployments"]
    ]
    cols = ("#", "release", "strategy", "from", "outcome", "took", "started", *(("by",) if by else ()), "reason")
    table(console, cols, deployments, "deployments")
    releases = [
        (rel["id"] + (" (live)" if rel["live"] else ""), rel["version"], rel["status"], _ago(rel["created_at"]))
        for rel in h["releases"]
    ]
    table(console, ("release", "version", "status", "created"), releases, "releases")
    if h.get("offline"):
        console.out(f"(the agent is not running: read from {h['offline']})", highlight=False)


def _one_line(text: str) -> str:
    """A reason on one row: a build's log tail has newlines (the whole of it is in `history --json`)."""
    return " ⏎ ".join(line.strip() for line in text.splitlines() if line.strip())


def kube_status(console: Console, st: dict) -> None:
    """``nonstop status`` for runtime kubernetes: the cluster's picture."""
    k = st.get("cluster") or {}
    console.print(f"[bold]{st['app']}[/] in namespace {k.get('namespace')} of cluster {k.get('context') or '-'} "
                  f"({k.get('server') or '-'})   live: [bold]{st.get('live_release') or '-'}[/]   strategy: {st.get('strategy') or '-'}")
    if not k.get("reachable", True):
        console.print(f"[red]the cluster does not answer: {k.get('error')}[/]", markup=True, highlight=False)
    if st.get("dashboard"):
        console.print(f"dashboard: {st['dashboard']}")
    svc, route = st.get("service") or {}, st.get("route")
    if route:
        console.print("traffic: HTTPRoute " + str(route.get("name")) + " → "
                      + ", ".join(f"{b['name']} {b['weight']}" for b in route.get("backends") or []), markup=False)
    elif svc:
        sel = ", ".join(f"{a}={b}" for a, b in (svc.get("selector") or {}).items())
        console.print(f"traffic: Service {svc.get('name')} selects {sel}", markup=False)
    if st.get("routes"):
        console.print("weights: " + "  ".join(f"{r['release']} {r['weight']}% ({len(r['targets'])} pod(s))" for r in st["routes"]))
    rows = [(d["name"], d.get("track") or "-", d.get("release") or "-", f"{d.get('ready', 0)}/{d.get('replicas', 0)}",
             str(d.get("available", 0)), str(d.get("updated", 0))) for d in st.get("deployments") or []]
    table(console, ("deployment", "track", "release", "ready", "available", "updated"), rows)
    pods = []
    for i in st.get("instances") or []:
        state = i["state"] + (", CRASH LOOP" if i.get("crash_loop") else "")
        if i.get("warm_until"):
            state += f", warm {max(0, i['warm_until'] - time.time()):.0f}s"
        pods.append((i["id"], i["release"] or "-", state, "yes" if i["routed"] else "no", _dur(i.get("uptime")), str(i["restarts"])))
    if pods:
        table(console, ("pod", "release", "state", "routed", "age", "restarts"), pods)
    w = st.get("warm")
    if w:
        console.print(f"warm: {w.get('release')} on {w.get('track')} until {time.strftime('%H:%M:%S', time.localtime(w.get('until') or 0))} "
                      "(`nonstop rollback` within it is one switch)")
    lock = st.get("lock")
    if lock:
        console.print(f"lock: held by {lock.get('holder')} for {lock.get('release')} ({lock.get('strategy')})"
                      + (" — expired" if lock.get("expired") else ""), markup=False)
    d = st.get("deployment")
    if not d:
        console.print("no deployment in progress")
        return
    who = f" by {d['holder']}" if d.get("remote") else ""
    ident = f"#{d['id']}" if d.get("id") is not None else f"(cluster #{d.get('cluster_id')})"
    line = (f"deployment {ident}{who}: {d['strategy']} → {d['release']}  state {d['state']}  "
            f"stage {d.get('stage') or d.get('phase') or '-'}  started {_ago(d.get('started_at'))}")
    console.print(f"[yellow]{line}[/]" if not d.get("remote") else line, markup=not d.get("remote"), highlight=False)
    cn = d.get("canary")
    if cn:
        got = cn.get("received") or {}
        recv = f" (received {got['share']:.1%} of {got['requests']:,})" if got.get("share") is not None else ""
        console.print(f"  canary weight {cn.get('weight')}%{recv}  step {cn.get('step')}/{cn.get('steps')}  failed checks "
                      f"{cn.get('failures', 0)}/{cn.get('failure_limit', '-')}  waiting for: {cn.get('waiting_for') or '-'}")
    wt = d.get("watch")
    if wt:
        console.print(f"  watching {wt.get('release')}: {wt.get('remaining', 0):.0f}s left  failed checks "
                      f"{wt.get('failures', 0)}/{wt.get('failure_limit', '-')}")
