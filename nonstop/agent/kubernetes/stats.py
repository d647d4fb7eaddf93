"""Request figures for the dashboard's charts and ``/metrics`` on a cluster: Prometheus, made cumulative.

On one host the router counts every request; on a cluster nobody in nonstop
sees them, so the figures come from the analysis source
(``kubernetes.prometheus``, the same queries as the canary analysis). The
dashboard's sampler wants cumulative counters per release; Prometheus gives
windows. ``Integrator`` (pure) turns one into the other: every refresh asks
for each serving release's last ``WINDOW`` seconds and the counters grow at
that rate until the next refresh. The charts therefore show Prometheus's
one-minute averages, refreshed every ``REFRESH`` seconds, not per-second
counts. Without ``kubernetes.prometheus`` there are no figures and
``stats()`` says so (the dashboard shows it; ``nonstop_router_stats_up`` is 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nonstop.agent.kubernetes.prometheus import MetricsUnavailable, Prometheus, Side
from nonstop.errors import NonstopError

__all__ = ["Integrator", "ClusterStats", "WINDOW", "REFRESH"]

WINDOW = 60.0  # seconds of Prometheus figures behind each rate
REFRESH = 5.0  # seconds between two asks


@dataclass
class _Rate:
    requests: float = 0.0
    errors: float = 0.0
    bounds: tuple[float, ...] = ()
    counts: tuple[float, ...] = ()


@dataclass
class Integrator:
    """Owns per-release cumulative counters grown at the rates of the last windows seen."""

    totals: dict[str, _Rate] = field(default_factory=dict)
    rates: dict[str, _Rate] = field(default_factory=dict)
    t: float | None = None

    def rate(self, window_snapshot: dict, seconds: float) -> None:
        """Take the rates of a windowed snapshot (``prometheus.figures``' shape) lasting ``seconds``."""
        out = {}
        for name, s in (window_snapshot.get("releases") or {}).items():
            lat = s.get("latency") or {}
            out[name] = _Rate(
                float(s.get("requests", 0)) / seconds,
                float((s.get("by_class") or {}).get("5xx", 0)) / seconds,
                tuple(float(b) for b in lat.get("buckets") or ()),
                tuple(float(c) / seconds for c in lat.get("counts") or ()),
            )
        self.rates = out

    def advance(self, now: float) -> dict:
        """The counters at ``now`` (the sampler's ``StatsSnapshot`` shape)."""
        dt = 0.0 if self.t is None else max(0.0, now - self.t)
        self.t = now
        for name, r in self.rates.items():
            tot = self.totals.get(name)
            if tot is None or tot.bounds != r.bounds:
                tot = self.totals[name] = _Rate(tot.requests if tot else 0.0, tot.errors if tot else 0.0, r.bounds, (0.0,) * len(r.counts))
            tot.requests += r.requests * dt
            tot.errors += r.errors * dt
            tot.counts = tuple(a + b * dt for a, b in zip(tot.counts, r.counts))
        releases = {}
        for name, tot in self.totals.items():
            releases[name] = {
                "requests": int(tot.requests),
                "by_class": {"5xx": int(tot.errors)},
                "in_flight": 0,
                "proxy_errors": 0,
                "latency": {"buckets": list(tot.bounds), "counts": [int(c) for c in tot.counts], "sum": 0.0},
            }
        return {"releases": releases, "targets": {}}


class ClusterStats:
    """The dashboard's ``router.stats()`` on a cluster: asks Prometheus for the serving releases' figures."""

    type = "kubernetes"

    def __init__(self, prometheus: Prometheus | None, sides: Callable[[], list[Side]], *,
                 clock: Callable[[], float] = time.time, refresh: float = REFRESH, window: float = WINDOW) -> None:
        self.prometheus = prometheus
        self.sides = sides
        self.clock = clock
        self.refresh = refresh
        self.window = window
        self.integrator = Integrator()
        self._asked: float | None = None

    async def stats(self) -> dict[str, Any]:
        if self.prometheus is None:
            raise NonstopError("no request figures on a cluster without kubernetes.prometheus")
        now = self.clock()
        if self._asked is None or now - self._asked >= self.refresh:
            self._asked = now
            sides = self.sides()
            try:
                snap, _q = await self.prometheus.figures(sides, self.window) if sides else ({"releases": {}}, {})
            except MetricsUnavailable:
                self.integrator.rates = {}
                raise
            self.integrator.rate(snap, self.window)
        return self.integrator.advance(now)

    async def stop(self) -> None:
        """Nothing runs: the cluster's Service or Gateway is the data plane, and it stays."""
