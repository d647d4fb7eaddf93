"""A live view of a deployment in the terminal: steps, weights and analysis, from the event stream alone.

``DeployView`` has ``Progress``'s interface (``event(ev)``, ``close()``), so
``nonstop deploy`` / ``rollback`` can use it on a terminal: each event is
still printed as a line (it scrolls up and stays in the scrollback), and a
panel pinned below it shows where the deployment stands — release and
strategy, elapsed time, the canary's weight as a bar and its step, the last
analysis (canary vs stable), what it waits for. It reads nothing but the
NDJSON events the agent already streams; ``DeployState`` is the pure fold
of those events, tested without a terminal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from nonstop.cli.render import _ICON

__all__ = ["DeployState", "DeployView"]

_VERDICT_STYLE = {"pass": "green", "fail": "red", "inconclusive": "yellow"}


@dataclass
class DeployState:
    """Where a deployment stands, folded from its events."""

    release: str | None = None
    strategy: str | None = None
    from_release: str | None = None
    phase: str | None = None
    step_text: str = ""
    weight: int | None = None
    canary_step: int | None = None
    canary_steps: int | None = None
    analysis: dict | None = None
    failures: int = 0
    waiting_for: str | None = None
    result: dict | None = None
    t0: float | None = None  # agent time of the first event
    last_ts: float | None = None
    instances: dict[str, str] = field(default_factory=dict)

    def add(self, ev: dict) -> "DeployState":
        t = ev.get("type")
        ts = ev.get("ts")
        if ts is not None:
            self.t0 = self.t0 if self.t0 is not None else ts
            self.last_ts = ts
        if t == "start":
            self.strategy = ev.get("strategy") or self.strategy
            self.from_release = ev.get("from_release")
        elif t == "release":
            self.release = ev.get("release") or self.release
        elif t == "step":
            self.phase = ev.get("phase") or self.phase
            self.step_text = ev.get("message", "")
            if ev.get("canary_steps"):
                self.canary_step, self.canary_steps = ev.get("canary_step"), ev.get("canary_steps")
            if ev.get("weight") is not None:
                self.weight = ev["weight"]
            self.waiting_for = None
        elif t == "weight":
            self.weight = ev.get("weight", self.weight)
        elif t == "switched":
            if ev.get("release") and ev.get("release") == self.release:
                self.weight = 100
        elif t in ("analysis", "analysis_failed"):
            self.analysis = ev
            if ev.get("verdict") == "fail":
                self.failures += 1
        elif t == "waiting":
            self.waiting_for = ev.get("waiting_for") or ev.get("message")
        elif t in ("instance_starting", "instance_healthy", "instance_stopped", "draining"):
            inst = ev.get("instance")
            if inst:
                self.instances[inst] = t.removeprefix("instance_")
        elif t == "result":
            self.result = ev
            self.release = ev.get("release") or self.release
            self.waiting_for = None
        return self

    @property
    def elapsed(self) -> float:
        if self.t0 is None or self.last_ts is None:
            return 0.0
        return self.last_ts - self.t0


def _bar(weight: int, width: int = 30) -> Text:
    full = round(width * max(0, min(100, weight)) / 100)
    t = Text()
    t.append("█" * full, style="bold cyan")
    t.append("░" * (width - full), style="dim")
    return t


def _figures(f: dict | None) -> str:
    if not f:
        return "-"
    rate = f.get("error_rate")
    rate_s = f"{rate:.1%}" if rate is not None else "-"
    p99 = f.get("p99")
    p99_s = "-" if p99 is None else (f"{p99 * 1000:.0f}ms" if p99 < 1 else f"{p99:.2f}s")
    return f"5xx {rate_s} ({f.get('errors', 0)}/{f.get('requests', 0)}), p99 {p99_s}"


def render_state(st: DeployState, now_elapsed: float | None = None) -> Table:
    """The pinned panel."""
    g = Table.grid(padding=(0, 2))
    g.add_column(style="dim", no_wrap=True)
    g.add_column()
    head = Text()
    head.append(st.release or "(building)", style="bold")
    head.append(f"  {st.strategy or '?'}", style="cyan")
    if st.from_release:
        head.append(f"  from {st.from_release}", style="dim")
    head.append(f"  {now_elapsed if now_elapsed is not None else st.elapsed:.1f}s", style="dim")
    g.add_row("deploying", head)
    if st.step_text:
        g.add_row("step", Text(st.step_text))
    if st.weight is not None and st.strategy in ("canary", "rolling"):
        w = _bar(st.weight)
        w.append(f" {st.weight:>3}%", style="bold")
        if st.canary_steps:
            w.append(f"   step {st.canary_step}/{st.canary_steps}", style="dim")
        g.add_row("weight", w)
    a = st.analysis
    if a:
        line = Text()
        verdict = a.get("verdict", "?")
        line.append(verdict, style=_VERDICT_STYLE.get(verdict, ""))
        got = a.get("received") or {}
        if got.get("share") is not None:
            line.append(f"  received {got['share']:.1%} of {got['requests']:,}")
        line.append(f"  canary {_figures(a.get('canary'))}")
        if a.get("stable"):
            line.append(f"  │  stable {_figures(a.get('stable'))}", style="dim")
        if st.failures:
            line.append(f"  ({st.failures} failed)", style="red")
        g.add_row("analysis", line)
    if st.waiting_for:
        g.add_row("waiting", Text(f"for {st.waiting_for}", style="yellow"))
    return g


class DeployView:
    """Prints each event as a line and keeps ``render_state`` pinned below (a terminal only)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.state = DeployState()
        self.t0 = time.monotonic()
        self._live = Live(self._panel(), console=console, refresh_per_second=4, transient=True, get_renderable=self._panel)
        self._live.start()

    def _panel(self):
        return Group(Text(""), render_state(self.state, time.monotonic() - self.t0))

    def event(self, ev: dict) -> None:
        self.state.add(ev)
        t = ev.get("type")
        line = Text(f"{time.monotonic() - self.t0:6.1f}s ", style="dim")
        msg = str(ev.get("message", ""))  # a Text, never markup: messages carry [brackets] from logs
        if t == "result":
            self.close()
            ok = ev.get("ok")
            line.append(f"{'✓' if ok else '✗'} {msg}", style="green" if ok else "red")
            self.console.print(line, highlight=False)
            return
        style = "red" if t in ("error", "analysis_failed") else ("yellow" if t in ("paused", "waiting") else "")
        line.append(f"{_ICON.get(t, '·')} {msg}", style=style)
        self.console.print(line, highlight=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
