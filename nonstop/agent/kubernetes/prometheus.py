"""Analysis figures from Prometheus: the canary's and the stable side's requests, 5xx and latency.

The queries (PromQL templates; ``kubernetes.prometheus_queries`` replaces
any of them) assume by default the app's own Micrometer metrics, as Spring
Boot Actuator exposes them on ``/actuator/prometheus``, scraped per pod with
the usual ``namespace`` and ``pod`` target labels:

- ``requests``: ``sum(increase(http_server_requests_seconds_count{…}[$window]))``
- ``errors``: the same with ``status=~"5.."``
- ``latency``: ``sum by (le) (increase(http_server_requests_seconds_bucket{…}[$window]))``
  (needs ``management.metrics.distribution.percentiles-histogram.http.server.requests=true``)

Placeholders: ``$namespace``, ``$pods`` (an anchored regex of the side's pod
names: ``<deployment>-<pod-template-hash>-<suffix>``), ``$window`` (the
analysis window, like ``45s``), ``$app``, ``$track``. A gateway's or an
ingress controller's metrics work too, given templates that select by pod.

``figures`` returns the snapshot shape ``nonstop.agent.analysis`` reads
(``{"releases": {name: {"requests", "by_class": {"5xx"}, "latency":
{"buckets", "counts"}}}}``) holding each side's *window* (Prometheus already
took the difference), so ``analysis.analyse(None, snapshot, …)`` gives the
verdict with the one set of rules nonstop has. The queries run are returned
with it: the driver shows them in the events.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any, Mapping

from nonstop.errors import NonstopError

__all__ = ["DEFAULT_QUERIES", "Side", "MetricsUnavailable", "pod_regex", "render_query", "parse_vector", "Prometheus"]

DEFAULT_QUERIES: dict[str, str] = {
    "requests": 'sum(increase(http_server_requests_seconds_count{namespace="$namespace",pod=~"$pods"}[$window]))',
    "errors": 'sum(increase(http_server_requests_seconds_count{namespace="$namespace",pod=~"$pods",status=~"5.."}[$window]))',
    "latency": 'sum by (le) (increase(http_server_requests_seconds_bucket{namespace="$namespace",pod=~"$pods"}[$window]))',
}


class MetricsUnavailable(NonstopError):
    """Prometheus could not be asked, or answered with an error; the analysis is inconclusive, never a pass."""


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the release name analysis uses, and the pods that serve it."""

    release: str
    track: str
    pods: str  # anchored regex of pod names


def pod_regex(deployment: str, pod_template_hash: str | None = None) -> str:
    """Pods of ``deployment`` (of one ReplicaSet when its pod-template-hash is given). Deployment pods are
    named ``<deployment>-<hash>-<suffix>``; the two segments keep ``<app>`` from matching ``<app>-canary``'s."""
    h = pod_template_hash or "[a-z0-9]+"
    # no escaping: app names are [a-z0-9-] (config load refuses others with runtime kubernetes)
    return f"{deployment}-{h}-[a-z0-9]+"


def render_query(template: str, *, namespace: str, side: Side, window: float, app: str) -> str:
    return string.Template(template).safe_substitute(
        namespace=namespace, pods=side.pods, window=f"{max(1, int(math.ceil(window)))}s", app=app, track=side.track
    )


def parse_vector(body: Mapping[str, Any]) -> list[tuple[dict, float]]:
    """The samples of a Prometheus ``/api/v1/query`` answer (an instant vector): (labels, value)."""
    if body.get("status") != "success":
        raise MetricsUnavailable(f"Prometheus: {body.get('errorType', 'error')}: {body.get('error', body)}")
    data = body.get("data") or {}
    if data.get("resultType") not in ("vector", "scalar"):
        raise MetricsUnavailable(f"Prometheus answered a {data.get('resultType')}, expected an instant vector")
    if data.get("resultType") == "scalar":
        return [({}, float(data["result"][1]))]
    out = []
    for s in data.get("result") or []:
        v = float(s["value"][1])
        out.append((dict(s.get("metric") or {}), 0.0 if math.isnan(v) else v))
    return out


def _buckets(samples: list[tuple[dict, float]]) -> tuple[list[float], list[int]]:
    """Cumulative ``le`` buckets → (upper bounds, per-bucket counts with +Inf last), as analysis reads them."""
    pairs = []
    inf = 0.0
    for labels, v in samples:
        le = labels.get("le")
        if le is None:
            continue
        if le in ("+Inf", "Inf"):
            inf = v
        else:
            pairs.append((float(le), v))
    pairs.sort()
    bounds = [b for b, _ in pairs]
    cumulative = [round(v) for _, v in pairs] + [round(max(inf, pairs[-1][1] if pairs else 0.0))]
    counts, prev = [], 0
    for c in cumulative:
        counts.append(max(0, c - prev))
        prev = max(prev, c)
    return bounds, counts


class Prometheus:
    """Asks one Prometheus server for the figures of canary and stable pods over a window."""

    def __init__(self, url: str, *, namespace: str, app: str, queries: Mapping[str, str] | None = None, transport: Any = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.app = app
        self.queries = {**DEFAULT_QUERIES, **(queries or {})}
        self._transport = transport
        self.timeout = timeout

    def queries_for(self, side: Side, window: float) -> dict[str, str]:
        return {
            k: render_query(t, namespace=self.namespace, side=side, window=window, app=self.app) for k, t in self.queries.items()
        }

    async def _query(self, client: Any, promql: str, at: float | None) -> list[tuple[dict, float]]:
        import httpx

        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            r = await client.get(f"{self.url}/api/v1/query", params=params)
        except httpx.HTTPError as e:
            raise MetricsUnavailable(f"cannot reach Prometheus at {self.url}: {e}") from None
        try:
            body = r.json()
        except ValueError:
            raise MetricsUnavailable(f"Prometheus at {self.url} answered HTTP {r.status_code}, not JSON") from None
        return parse_vector(body)

    async def figures(self, sides: list[Side], window: float, at: float | None = None) -> tuple[dict, dict[str, dict[str, str]]]:
        """(snapshot for ``analysis.analyse(None, snapshot, …)``, the queries asked per release)."""
        import httpx

        snap: dict[str, Any] = {"releases": {}}
        asked: dict[str, dict[str, str]] = {}
        async with httpx.AsyncClient(transport=self._transport, timeout=self.timeout) as client:
            for side in sides:
                q = self.queries_for(side, window)
                asked[side.release] = q
                req = sum(v for _, v in await self._query(client, q["requests"], at))
                err = sum(v for _, v in await self._query(client, q["errors"], at))
                bounds, counts = _buckets(await self._query(client, q["latency"], at))
                snap["releases"][side.release] = {
                    "requests": int(round(req)),
                    "by_class": {"5xx": int(round(err))},
                    "latency": {"buckets": bounds, "counts": counts},
                }
        return snap, asked
