"""The agent's ``/metrics``: Prometheus text rendered from plain snapshots, no I/O.

``render(MetricsInput)`` takes what the agent already has — its ``status()``
picture, one cumulative ``router.stats()`` snapshot, the stored deployments —
and returns the text exposition (format 0.0.4). Keeping it pure means the
names, labels and values are tested without an agent, a proxy or a socket.

Names follow Prometheus conventions: ``nonstop_`` prefix, counters end in
``_total``, durations are seconds, ratios are 0..1. Request figures come
from the router's cumulative counters, so ``rate()`` works on them as on any
counter; they restart from 0 when the proxy process restarts (a counter
reset, which ``rate()`` handles).

Two views of the same requests, as two metric names (so that summing one
never double-counts the other):

- ``nonstop_requests_total{release, code_class}`` — per release;
- ``nonstop_target_requests_total{release, target, code_class}`` — per
  target (an instance's ``host:port``), labelled with the release that
  target serves (from the stats' ``pairs`` when the router gives them,
  otherwise from the routing table and the instances).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MetricsInput", "render", "CONTENT_TYPE", "DEPLOYMENT_BUCKETS"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Deployments take seconds to tens of minutes (canary pauses).
DEPLOYMENT_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
OUTCOMES = ("promoted", "aborted", "rolled_back", "failed")


@dataclass
class MetricsInput:
    """Everything one scrape needs, gathered by the caller.

    ``status`` is ``Agent.status()``; ``stats`` a ``StatsSnapshot``
    (``{"releases": {name: S}, "targets": {addr: S}}``, optionally
    ``"pairs": [{"release", "target", **S}]``); ``deployments`` the stored
    ones as dicts with ``strategy``, ``state``, ``outcome``, ``seconds``.
    """

    status: Mapping[str, Any]
    stats: Mapping[str, Any] | None
    deployments: Iterable[Mapping[str, Any]] = ()
    version: str = ""
    stats_error: str | None = None  # the router could not give stats this time
    extra: list["Family"] = field(default_factory=list)  # e.g. webhook delivery counters


class Family:
    """One metric family: HELP, TYPE and its samples, in order."""

    def __init__(self, name: str, type: str, help: str) -> None:
        self.name = name
        self.type = type
        self.help = help
        self.samples: list[tuple[str, dict[str, str], float]] = []

    def add(self, value: float, suffix: str = "", **labels: Any) -> "Family":
        self.samples.append((self.name + suffix, {k: str(v) for k, v in labels.items()}, value))
        return self

    def histogram(self, bounds: Iterable[float], counts: list[int], total: float, **labels: Any) -> "Family":
        """``counts`` per bucket (not cumulative), one more than ``bounds`` (the +Inf bucket)."""
        cum = 0
        bounds = list(bounds)
        for le, n in zip(bounds, counts):
            cum += n
            self.add(cum, "_bucket", **labels, le=_fmt(float(le)))
        cum += sum(counts[len(bounds):])
        self.add(cum, "_bucket", **labels, le="+Inf")
        self.add(total, "_sum", **labels)
        self.add(cum, "_count", **labels)
        return self

    def text(self) -> list[str]:
        out = [f"# HELP {self.name} {_esc_help(self.help)}", f"# TYPE {self.name} {self.type}"]
        for name, labels, value in self.samples:
            if labels:
                lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{lab}}} {_fmt(value)}")
            else:
                out.append(f"{name} {_fmt(value)}")
        return out


def render(m: MetricsInput) -> str:
    """The whole exposition for one scrape."""
    st = m.status
    fams: list[Family] = []
    fams += _agent(m)
    fams += _traffic(st)
    fams += _instances(st)
    fams += _requests(m.stats or {}, _Owners(st))
    fams += _deployments(m.deployments, st)
    fams += m.extra
    lines: list[str] = []
    for f in fams:
        lines += f.text()
    return "\n".join(lines) + "\n"


# -- families --------------------------------------------------------------------


def _agent(m: MetricsInput) -> list[Family]:
    st = m.status
    router = (st.get("router") or {}).get("type", "")
    info = Family("nonstop_agent_info", "gauge", "The agent: nonstop version, app and router type (always 1).")
    info.add(1, app=st.get("app", ""), version=m.version, router=router)
    started = Family("nonstop_agent_start_time_seconds", "gauge", "When the agent process started (Unix time).")
    started.add(float((st.get("agent") or {}).get("started_at") or 0))
    up = Family("nonstop_router_stats_up", "gauge", "1 when the router gave request statistics on this scrape, else 0.")
    up.add(0 if (m.stats is None or m.stats_error) else 1)
    return [info, started, up]


def _traffic(st: Mapping[str, Any]) -> list[Family]:
    live = Family("nonstop_live_release_info", "gauge", "The release that is live (always 1; absent when none is).")
    if st.get("live_release"):
        live.add(1, release=st["live_release"])
    w = Family("nonstop_traffic_weight_ratio", "gauge", "Share of new users routed to each release (0..1).")
    for r in st.get("routes") or []:
        w.add(r.get("weight", 0) / 100.0, release=r["release"])
    return [live, w]


def _instances(st: Mapping[str, Any]) -> list[Family]:
    up = Family("nonstop_instance_up", "gauge", "1 when the instance's process is alive, else 0.")
    healthy = Family("nonstop_instance_healthy", "gauge", "1 when the instance passes its health check, else 0.")
    routed = Family("nonstop_instance_routed", "gauge", "1 when the instance is in the routing table, else 0.")
    uptime = Family("nonstop_instance_uptime_seconds", "gauge", "Seconds since the instance started.")
    restarts = Family("nonstop_instance_restarts_total", "counter", "Times the agent restarted the instance after it died.")
    for i in st.get("instances") or []:
        lab = {"instance": i["id"], "release": i["release"], "port": i.get("port", "")}
        up.add(1 if i.get("alive") else 0, **lab)
        healthy.add(1 if (i.get("alive") and i.get("state") == "healthy") else 0, **lab)
        routed.add(1 if i.get("routed") else 0, **lab)
        uptime.add(float(i.get("uptime") or 0), **lab)
        restarts.add(int(i.get("restarts") or 0), **lab)
    return [up, healthy, routed, uptime, restarts]


class _Owners:
    """target addr -> release: the routing table first, then instances by port (draining ones are no longer routed)."""

    def __init__(self, st: Mapping[str, Any]) -> None:
        self.by_addr = {t: r["release"] for r in st.get("routes") or [] for t in r.get("targets") or []}
        self.by_port = {str(i.get("port")): i["release"] for i in st.get("instances") or []}

    def release_of(self, addr: str) -> str:
        return self.by_addr.get(addr) or self.by_port.get(addr.rpartition(":")[2], "")


def _requests(stats: Mapping[str, Any], owners: _Owners) -> list[Family]:
    req = Family("nonstop_requests_total", "counter", "Requests answered through the router, by release and status class.")
    treq = Family(
        "nonstop_target_requests_total", "counter", "Requests answered through the router, by target (instance address), release and status class."
    )
    perr = Family("nonstop_proxy_errors_total", "counter", "Upstream failures seen by the router (connect, reset, timeout), by release.")
    tperr = Family("nonstop_target_proxy_errors_total", "counter", "Upstream failures seen by the router, by target.")
    infl = Family("nonstop_in_flight_requests", "gauge", "Requests in flight, by release.")
    tinfl = Family("nonstop_target_in_flight_requests", "gauge", "Requests in flight, by target.")
    lat = Family("nonstop_request_duration_seconds", "histogram", "Time from request head to end of response, by release.")
    tlat = Family("nonstop_target_request_duration_seconds", "histogram", "Time from request head to end of response, by target.")

    for name, s in sorted((stats.get("releases") or {}).items()):
        _one(s, req, perr, infl, lat, release=name)
    if stats.get("pairs"):
        targets = [(p["release"], p["target"], p) for p in stats["pairs"]]
    else:
        targets = [(owners.release_of(addr), addr, s) for addr, s in (stats.get("targets") or {}).items()]
    for rel, addr, s in sorted(targets, key=lambda x: (x[0], x[1])):
        _one(s, treq, tperr, tinfl, tlat, release=rel, target=addr)
    return [req, treq, perr, tperr, infl, tinfl, lat, tlat]


def _one(s: Mapping[str, Any], req: Family, perr: Family, infl: Family, lat: Family, **labels: str) -> None:
    by = s.get("by_class") or {}
    for cls in CLASSES:
        req.add(int(by.get(cls, 0)), **labels, code_class=cls)
    perr.add(int(s.get("proxy_errors", 0)), **labels)
    infl.add(int(s.get("in_flight", 0)), **labels)
    h = s.get("latency")
    if h and h.get("buckets") is not None:
        lat.histogram(h["buckets"], list(h.get("counts") or []), float(h.get("sum", 0.0)), **labels)


def _deployments(deps: Iterable[Mapping[str, Any]], st: Mapping[str, Any]) -> list[Family]:
    total = Family("nonstop_deployments_total", "counter", "Finished deployments (rollbacks included), by strategy and outcome.")
    dur = Family("nonstop_deployment_duration_seconds", "histogram", "How long finished deployments took, by strategy.")
    active = Family("nonstop_deployment_in_progress", "gauge", "1 while a deployment runs (with its release, strategy and state), else 0.")
    counts: dict[tuple[str, str], int] = {}
    hist: dict[str, tuple[list[int], float]] = {}
    for d in deps:
        outcome = d.get("outcome") or d.get("state")
        if outcome not in OUTCOMES:
            continue
        strat = d.get("strategy") or ""
        counts[(strat, outcome)] = counts.get((strat, outcome), 0) + 1
        secs = d.get("seconds")
        if secs is None and d.get("finished_at") and d.get("started_at"):
            secs = d["finished_at"] - d["started_at"]
        if secs is not None:
            c, s = hist.get(strat) or ([0] * (len(DEPLOYMENT_BUCKETS) + 1), 0.0)
            c[_bucket(DEPLOYMENT_BUCKETS, float(secs))] += 1
            hist[strat] = (c, s + float(secs))
    # Every outcome of every strategy seen, even at 0, so rate() and alerts see the series from the start.
    for strat in sorted({k[0] for k in counts}):
        for outcome in OUTCOMES:
            total.add(counts.get((strat, outcome), 0), strategy=strat, outcome=outcome)
    for strat, (c, s) in sorted(hist.items()):
        dur.histogram(DEPLOYMENT_BUCKETS, c, s, strategy=strat)
    d = st.get("deployment")
    if d:
        active.add(1, release=d.get("release", ""), strategy=d.get("strategy", ""), state=d.get("state", ""))
    else:
        active.add(0)
    return [total, dur, active]


# -- formatting ------------------------------------------------------------------------


def _bucket(bounds: tuple[float, ...], v: float) -> int:
    for i, b in enumerate(bounds):
        if v <= b:
            return i
    return len(bounds)


def _fmt(v: float) -> str:
    if isinstance(v, (bool, int)):
        return str(int(v))
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _esc_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")
