"""HAProxy's ``show stat`` (external mode, where no access log of ours is written).

- ``sum_stat`` / ``stat_snapshot`` / ``add_snapshots``: ``show stat`` server lines folded into
  the ``StatsSnapshot`` shape, without a latency histogram (``show stat`` has none).
"""

from __future__ import annotations

import json
from typing import Any

from nonstop.agent.routers.haproxy_api import ServerStat

__all__ = ["sum_stat", "stat_snapshot", "add_snapshots"]


def sum_stat(a: ServerStat | None, b: ServerStat) -> ServerStat:
    if a is None:
        return b
    return ServerStat(
        backend=b.backend,
        name=b.name,
        addr=b.addr,
        status=b.status,
        weight=b.weight,
        scur=a.scur + b.scur,
        stot=a.stot + b.stot,
        by_class={k: a.by_class.get(k, 0) + v for k, v in b.by_class.items()},
        other=a.other + b.other,
        econ=a.econ + b.econ,
        eresp=a.eresp + b.eresp,
        rtime_ms=b.rtime_ms,
        ttime_ms=b.ttime_ms,
    )


def stat_snapshot(s: ServerStat) -> dict[str, Any]:
    """``show stat`` has no histogram: latency carries HAProxy's moving average only; quantiles are unknown."""
    return {
        "requests": s.requests,
        "by_class": dict(s.by_class),
        "proxy_errors": s.econ + s.eresp,
        "in_flight": s.scur,
        "latency": None,  # unknown: readers treat a missing histogram as "no latency figures"
        "avg_response_ms": s.rtime_ms,
        "p50": None,
        "p90": None,
        "p99": None,
    }


def add_snapshots(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return json.loads(json.dumps(b))
    out = json.loads(json.dumps(a))
    out["requests"] += b["requests"]
    out["proxy_errors"] += b["proxy_errors"]
    out["in_flight"] += b["in_flight"]
    for k, v in b["by_class"].items():
        out["by_class"][k] = out["by_class"].get(k, 0) + v
    return out
