"""What bench/proxy.py computes from its runs and how it prints them; no I/O.

A run is rounds × tables × rows: each ``Sample`` is one row measured once, in one round, for one
table (a connection count, the TLS handshakes, the idle-connection memory). ``summarise`` turns a
table's samples into one ``RowSummary`` per row: each figure the median over rounds (with every
round's value kept), and each ratio to nginx computed **per round** (the row against the nginx row
with the same worker count measured in the same round) before its median and min–max are taken,
so a round in which the whole machine was slow cancels out instead of widening the spread.
A ratio whose spread crosses 1.0 is flagged: the rounds disagree on which side of nginx it is.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Sequence, TypeVar

T = TypeVar("T")

# metric names, shared by the runner that fills samples and the columns that print them
RATE, P50, P99, ERRORS = "rate", "p50_ms", "p99_ms", "errors"
PROXY_CPU, BACKEND_CPU, CLIENT_CPU, LOAD_CORE = "proxy_us", "backend_us", "client_us", "load_core_pct"
RSS, USS, RSS_IDLE, KB_PER_CONN = "rss_mb", "uss_mb", "rss_idle_mb", "kb_per_conn"

CROSS = "†"


@dataclass(frozen=True)
class Sample:
    """One row measured once (one round, one table), or why it could not be."""

    target: str
    kind: str  # direct | nginx | haproxy | nonstop
    workers: int
    round: int  # 1-based
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Spread:
    """One figure over rounds: median, min, max, and each round's value (None: no value that round)."""

    median: float
    lo: float
    hi: float
    values: tuple[float | None, ...]

    @property
    def crosses_one(self) -> bool:
        return self.lo < 1.0 < self.hi

    def ratio_text(self) -> str:
        """``median (min–max)``, flagged when the spread crosses 1.0; one number when all rounds agree."""
        if round(self.lo, 2) == round(self.hi, 2):
            return f"{self.median:.2f}"
        return f"{self.median:.2f} ({self.lo:.2f}–{self.hi:.2f})" + (CROSS if self.crosses_one else "")


def spread(values: Sequence[float | None]) -> Spread | None:
    """The median and min–max of the values present; None when no round gave one."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), tuple(values))


def rotated(items: Sequence[T], rnd: int) -> list[T]:
    """The order of round ``rnd`` (0-based): the plan turned by one place per round, so no row is always
    first (fresh machine) or last (after everything else warmed the caches and heated the CPU)."""
    if not items:
        return []
    k = rnd % len(items)
    return list(items[k:]) + list(items[:k])


@dataclass(frozen=True)
class RowSummary:
    """One row of one table over all rounds: figures and ratios as spreads, errors, failed rounds."""

    target: str
    kind: str
    workers: int
    figures: dict[str, Spread]
    ratios: dict[str, Spread]
    errors: int  # summed over rounds: a single error matters
    failures: tuple[tuple[int, str], ...]  # (round, why) for each round that did not measure
    rounds: int

    @property
    def measured(self) -> bool:
        return bool(self.figures)


def reference_for(kind: str, workers: int) -> int | None:
    """The worker count of the nginx row a row is compared with; None: not compared."""
    if kind == "direct":
        return 1
    return workers


def summarise(samples: Sequence[Sample], order: Sequence[str], rounds: int,
              ratio_metrics: Sequence[str]) -> list[RowSummary]:
    """One summary per target in ``order`` (targets with no sample are left out)."""
    by_target: dict[str, dict[int, Sample]] = {}
    for s in samples:
        by_target.setdefault(s.target, {})[s.round] = s
    refs = {s.workers: {} for s in samples if s.kind == "nginx"}
    for s in samples:
        if s.kind == "nginx" and s.error is None:
            refs[s.workers][s.round] = s
    out = []
    for name in order:
        runs = by_target.get(name)
        if not runs:
            continue
        first = next(iter(runs.values()))
        ok = {r: s for r, s in runs.items() if s.error is None}
        keys = dict.fromkeys(k for s in ok.values() for k in s.metrics if k != ERRORS)
        figures = {k: sp for k in keys if (sp := spread([_get(ok, r, k) for r in range(1, rounds + 1)]))}
        ratios: dict[str, Spread] = {}
        ref_workers = reference_for(first.kind, first.workers)
        ref = refs.get(ref_workers, {}) if ref_workers is not None else {}
        for k in ratio_metrics:
            per_round = [_ratio(_get(ok, r, k), _get(ref, r, k)) for r in range(1, rounds + 1)]
            if (sp := spread(per_round)) is not None:
                ratios[k] = sp
        errors = int(sum(s.metrics.get(ERRORS, 0) for s in ok.values()))
        failures = tuple(sorted((r, s.error) for r, s in runs.items() if s.error is not None))
        out.append(RowSummary(name, first.kind, first.workers, figures, ratios, errors, failures, rounds))
    return out


def _get(runs: dict[int, Sample], rnd: int, key: str) -> float | None:
    s = runs.get(rnd)
    return None if s is None else s.metrics.get(key)


def _ratio(value: float | None, ref: float | None) -> float | None:
    if value is None or not ref:
        return None
    return value / ref


# -- tables -------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One printed column: a figure's median, a ratio's spread, or the error count."""

    head: str
    source: str  # figure | ratio | errors
    key: str = ""
    fmt: str = ".2f"


LOAD_COLUMNS = (
    Column("req/s", "figure", RATE, ",.0f"), Column("p50 ms", "figure", P50), Column("p99 ms", "figure", P99),
    Column("errors", "errors"), Column("proxy CPU µs/req", "figure", PROXY_CPU, ".1f"),
    Column("backend CPU µs/req", "figure", BACKEND_CPU, ".1f"), Column("wrk CPU µs/req", "figure", CLIENT_CPU, ".1f"),
    Column("wrk+backend % of a core", "figure", LOAD_CORE, ".0f"),
    Column("proxy RSS MB", "figure", RSS, ".1f"), Column("proxy USS MB", "figure", USS, ".1f"),
    Column("× nginx req/s", "ratio", RATE), Column("× nginx p99", "ratio", P99),
)
HANDSHAKE_COLUMNS = (
    Column("handshakes/s", "figure", RATE, ",.0f"), Column("p50 ms", "figure", P50), Column("p99 ms", "figure", P99),
    Column("errors", "errors"), Column("proxy CPU µs/handshake", "figure", PROXY_CPU, ".1f"),
    Column("client CPU %", "figure", CLIENT_CPU, ".0f"), Column("proxy RSS MB", "figure", RSS, ".1f"),
    Column("× nginx handshakes/s", "ratio", RATE), Column("× nginx p99", "ratio", P99),
)
HOLD_COLUMNS = (
    Column("RSS idle MB", "figure", RSS_IDLE, ".1f"), Column("RSS held MB", "figure", RSS, ".1f"),
    Column("USS held MB", "figure", USS, ".1f"), Column("KB per connection", "figure", KB_PER_CONN, ".1f"),
    Column("× nginx RSS held", "ratio", RSS),
)
COLUMNS = {"load": LOAD_COLUMNS, "handshakes": HANDSHAKE_COLUMNS, "hold": HOLD_COLUMNS}
RATIO_METRICS = {kind: tuple(c.key for c in cols if c.source == "ratio") for kind, cols in COLUMNS.items()}


def _cell(row: RowSummary, col: Column) -> str:
    if col.source == "errors":
        return str(row.errors)
    if col.source == "ratio":
        sp = row.ratios.get(col.key)
        return "-" if sp is None else sp.ratio_text()
    sp = row.figures.get(col.key)
    return "-" if sp is None else format(sp.median, col.fmt)


def table(rows: Sequence[RowSummary], columns: Sequence[Column], markdown: bool = False) -> str:
    """The medians table; rows that never measured say why; notes for flagged ratios and failed rounds."""
    head = ["target", *(c.head for c in columns)]
    body: list[list[str]] = []
    for r in rows:
        if not r.measured:
            why = r.failures[-1][1] if r.failures else "no result"
            body.append([r.target, "skipped: " + why])
        else:
            body.append([r.target, *(_cell(r, c) for c in columns)])
    text = _grid(head, body, markdown)
    notes = notes_for(rows, columns)
    return text + ("\n\n" if markdown and notes else "\n" if notes else "") + "\n".join(notes)


def notes_for(rows: Sequence[RowSummary], columns: Sequence[Column]) -> list[str]:
    crossing = [f"{r.target} {c.head.replace('× nginx ', '')}" for r in rows for c in columns
                if c.source == "ratio" and (sp := r.ratios.get(c.key)) is not None and sp.crosses_one]
    out = []
    if crossing:
        out.append(f"{CROSS} spread crosses 1.0 (the rounds disagree on which side of nginx it is): "
                   + "; ".join(crossing))
    for r in rows:
        if r.measured and r.failures:
            out.append(f"{r.target}: " + "; ".join(f"round {n} failed: {why}" for n, why in r.failures))
    return out


def per_round_table(rows: Sequence[RowSummary], kind: str, markdown: bool = False) -> str:
    """Every round's values: for load and handshakes ``rate · p99 · ×rate · ×p99``, for hold the RSS."""
    n = max((r.rounds for r in rows), default=0)
    head = ["target", *(f"round {i}" for i in range(1, n + 1))]
    body = []
    for r in rows:
        body.append([r.target, *(_round_cell(r, kind, i) for i in range(n))])
    return _grid(head, body, markdown)


def _round_cell(r: RowSummary, kind: str, i: int) -> str:
    def val(src: dict[str, Spread], key: str) -> float | None:
        sp = src.get(key)
        return None if sp is None else sp.values[i]

    if kind == "hold":
        v = val(r.figures, RSS)
        return "-" if v is None else f"{v:.1f} MB"
    rate, p99 = val(r.figures, RATE), val(r.figures, P99)
    if rate is None:
        return "-"
    parts = [f"{rate:,.0f}", f"{p99:.2f} ms"]
    rr, pr = val(r.ratios, RATE), val(r.ratios, P99)
    if rr is not None and pr is not None:
        parts += [f"×{rr:.2f}", f"×{pr:.2f}"]
    return " · ".join(parts)


def _grid(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in body:
            lines.append("| " + " | ".join(b + [""] * (len(head) - len(b))) + " |")
        return "\n".join(lines)
    full = [b for b in body if len(b) == len(head)]
    widths = [max([len(head[i]), *(len(b[i]) for b in (body if i == 0 else full))]) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    for b in body:
        if len(b) != len(head):
            lines.append(b[0].ljust(widths[0]) + "  " + "  ".join(b[1:]))
        else:
            lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(lines)
