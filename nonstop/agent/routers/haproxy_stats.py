"""HAProxy stats, two sources: the managed JSON access log, and ``show stat`` (external mode).

- ``haproxy_record``: one line of the managed access log → a ``StatsBook`` record.
- ``sum_stat`` / ``stat_snapshot`` / ``add_snapshots``: ``show stat`` server lines folded into
  the ``StatsSnapshot`` shape, without a latency histogram (``show stat`` has none).
"""

from __future__ import annotations

import json
from typing import Any

from nonstop.agent.routers.haproxy_api import ServerStat

__all__ = ["haproxy_record", "sum_stat", "stat_snapshot", "add_snapshots"]


def haproxy_record(line: bytes, app: str) -> dict[str, Any] | None:
    try:
        d = json.loads(line)
        if d.get("app") != app:
            return None
        status = int(d["status"])
        seconds = max(0, int(d.get("ta_ms", 0))) / 1000
    except (ValueError, KeyError, TypeError):
        return None
    rel = d.get("release")
    target = d.get("target") or ""
    if target.startswith("-") or ":" not in target or d.get("server") in ("<NOSRV>", "-", None):
        target = None
    # HAProxy's own answers end abnormally ("SC", "sH", ...); the app's own 502 ends "--".
    proxy_error = status in (502, 503, 504) and not str(d.get("termination", "--")).startswith("-")
    return {
        "release": None if rel in (None, "", "-") else rel,
        "target": target,
        "status": status,
        "seconds": seconds,
        "proxy_error": proxy_error,
    }


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
