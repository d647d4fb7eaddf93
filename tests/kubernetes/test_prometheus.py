"""Prometheus figures → the snapshot analysis.py judges, against a loopback Prometheus fake speaking the real
``/api/v1/query`` JSON (tests/kubernetes/fakeapi.py), and the watch gate's limits from a baseline."""

from __future__ import annotations

import asyncio

import pytest

from nonstop.agent import analysis as an
from nonstop.agent.kubernetes.prometheus import MetricsUnavailable, Prometheus, Side, parse_vector, pod_regex, render_query
from nonstop.agent.kubernetes.watch import Analyst, Watcher
from nonstop.config import CanaryAnalysis, WatchAnalysis

from tests.kubernetes.fakeapi import serve_prometheus

CANARY = Side("v2", "canary", pod_regex("roomescape-canary"))
STABLE = Side("v1", "main", pod_regex("roomescape"))


def answer(q: str):
    canary = "-canary-" in q
    if "_bucket" in q:
        # canary: 1000 requests, 980 under 0.1 s, all under 1 s; stable: all under 0.05 s
        if canary:
            return [({"le": "0.05"}, 500.0), ({"le": "0.1"}, 980.0), ({"le": "1.0"}, 1000.0), ({"le": "+Inf"}, 1000.0)]
        return [({"le": "0.05"}, 2000.0), ({"le": "0.1"}, 2000.0), ({"le": "1.0"}, 2000.0), ({"le": "+Inf"}, 2000.0)]
    if 'status=~"5.."' in q:
        return [({}, 20.0 if canary else 2.0)]
    return [({}, 1000.0 if canary else 2000.0)]


@pytest.fixture
def prom():
    served, seen = serve_prometheus(answer)
    yield served.url, seen
    served.close()


def test_figures_become_the_snapshot_analysis_judges(prom):
    url, seen = prom
    p = Prometheus(url, namespace="roomescape", app="roomescape")
    snap, asked = asyncio.run(p.figures([CANARY, STABLE], 45.2))
    c = an.window(None, snap, "v2")
    assert (c.requests, c.errors) == (1000, 20) and 0.1 < c.p99 <= 1.0
    s = an.window(None, snap, "v1")
    assert (s.requests, s.errors) == (2000, 2) and s.p99 <= 0.05
    assert asked["v2"]["requests"] == 'sum(increase(http_server_requests_seconds_count{namespace="roomescape",pod=~"roomescape-canary-[a-z0-9]+-[a-z0-9]+"}[46s]))'
    assert asked["v2"] ["errors"].count('status=~"5.."') == 1 and len(seen) == 6
    v = an.analyse(None, snap, canary="v2", stable="v1", cfg=CanaryAnalysis(max_error_rate=0.01, max_p99=0.5), seconds=45)
    assert v.verdict == "fail" and "5xx rate 2.0% (20/1000) > 1.0%" in v.summary and "p99" in v.summary


def test_custom_query_templates_replace_the_defaults():
    p = Prometheus("http://p:9090", namespace="shop", app="shop", queries={"requests": 'sum(increase(envoy_rq_total{pod=~"$pods"}[$window]))'})
    q = p.queries_for(Side("v2", "canary", pod_regex("shop-canary")), 30)
    assert q["requests"] == 'sum(increase(envoy_rq_total{pod=~"shop-canary-[a-z0-9]+-[a-z0-9]+"}[30s]))'
    assert "http_server_requests_seconds_bucket" in q["latency"]  # the other defaults stay
    assert render_query("$track/$app/$namespace", namespace="n", side=CANARY, window=0.2, app="a") == "canary/a/n"


def test_prometheus_errors_are_inconclusive_never_a_pass():
    with pytest.raises(MetricsUnavailable, match="bad_data"):
        parse_vector({"status": "error", "errorType": "bad_data", "error": "parse error"})
    with pytest.raises(MetricsUnavailable, match="matrix"):
        parse_vector({"status": "success", "data": {"resultType": "matrix", "result": []}})
    assert parse_vector({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]}}) == [({}, 0.0)]
    events = []

    async def emit(t, m, **d):
        events.append((t, m))

    dead = Prometheus("http://127.0.0.1:9", namespace="n", app="a", timeout=1)
    v = asyncio.run(Analyst(dead, emit).judge(CANARY, STABLE, 30, CanaryAnalysis(), at=0, label="at 10%"))
    assert v.verdict == "inconclusive" and "cannot reach Prometheus" in v.summary
    assert events and events[0][0] == "analysis"


def test_watch_limits_resolve_against_the_baseline(prom):
    url, _seen = prom
    p = Prometheus(url, namespace="roomescape", app="roomescape")

    async def emit(*a, **k):
        pass

    w = Watcher(Analyst(p, emit), None, WatchAnalysis(max_error_rate="baseline + 0.01", max_p99="baseline * 2"), CANARY, STABLE)
    asyncio.run(w.measure_baseline())
    lim = w.limits()
    assert lim.max_error_rate == pytest.approx(0.001 + 0.01)  # stable: 2/2000
    assert lim.max_p99 == pytest.approx(2 * w.baseline.p99)
