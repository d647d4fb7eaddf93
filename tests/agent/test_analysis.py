"""Canary analysis as a pure function: two cumulative snapshots + thresholds → verdict."""

from __future__ import annotations

import pytest

from nonstop.agent.analysis import P99_FLOOR, Figures, analyse, quantile, window
from nonstop.config import AnalysisConfig

BOUNDS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]


def S(requests: int, e5: int = 0, lat: dict[float, int] | None = None) -> dict:
    """One release's cumulative stats; ``lat`` maps a bucket bound (or inf) to a count."""
    counts = [0] * (len(BOUNDS) + 1)
    lat = lat if lat is not None else {0.005: requests}
    for le, n in lat.items():
        counts[BOUNDS.index(le) if le != float("inf") else len(BOUNDS)] += n
    return {
        "requests": requests,
        "by_class": {"1xx": 0, "2xx": requests - e5, "3xx": 0, "4xx": 0, "5xx": e5},
        "proxy_errors": 0,
        "in_flight": 0,
        "latency": {"buckets": BOUNDS, "counts": counts, "sum": 0.0, "count": sum(counts)},
    }


def snap(**releases: dict) -> dict:
    return {"revision": 1, "targets": {}, "releases": releases}


def cfg(**kw) -> AnalysisConfig:
    return AnalysisConfig(**{"min_requests": 50, "max_error_rate": 0.01, **kw})


def test_window_is_the_difference_of_two_snapshots():
    a = snap(v2=S(100, 5), v1=S(1000, 1))
    b = snap(v2=S(300, 25), v1=S(2000, 2))
    assert window(a, b, "v2") == Figures(requests=200, errors=20, p99=window(None, snap(v2=S(200)), "v2").p99)
    assert window(a, b, "v1").requests == 1000 and window(a, b, "v1").errors == 1


def test_window_of_a_release_not_seen_yet():
    assert window(snap(), snap(), "v2") == Figures(0, 0, None)
    assert window(None, snap(v2=S(10)), "v2").requests == 10


def test_counters_going_down_mean_the_proxy_restarted():
    a = snap(v2=S(500, 10))
    b = snap(v2=S(60, 1))
    assert window(a, b, "v2").requests == 60 and window(a, b, "v2").errors == 1


def test_p99_from_histogram_deltas():
    # Before the window: 1000 fast requests. In the window: 98 fast, 2 in (0.5, 1.0].
    a = snap(v2=S(1000, lat={0.001: 1000}))
    b = snap(v2=S(1100, lat={0.001: 1098, 1.0: 2}))
    f = window(a, b, "v2")
    assert f.requests == 100
    # rank 99 of 100: the first of the two slow ones, halfway into (0.5, 1.0]
    assert f.p99 == pytest.approx(0.75)
    # the cumulative p99 would have hidden them: 1100 requests, 2 slow, rank 1089 is fast
    assert window(None, b, "v2").p99 < 0.001 + 1e-9


def test_quantile_edges():
    assert quantile(BOUNDS, [0] * 9, 0.99) is None
    assert quantile(BOUNDS, [0] * 8 + [5], 0.99) == BOUNDS[-1]  # all in +Inf: the highest finite bound
    assert quantile(BOUNDS, [10] + [0] * 8, 0.5) == pytest.approx(0.0005)


def test_too_few_requests_is_inconclusive_and_says_how_many_more():
    v = analyse(snap(v2=S(0)), snap(v2=S(20, 20), v1=S(500)), canary="v2", stable="v1", cfg=cfg(), seconds=5)
    assert v.verdict == "inconclusive"
    assert v.needed == 30
    assert v.summary == "canary received 20 request(s) in 5s, 3.8% of 520 (min_requests 50): waiting for 30 more"
    # even 100% errors are not judged on too little traffic (that is min_requests' job)


def test_pass_with_figures():
    v = analyse(snap(), snap(v2=S(100), v1=S(900)), canary="v2", stable="v1", cfg=cfg())
    assert v.verdict == "pass"
    assert v.summary.startswith("received 10.0%; canary 5xx 0.0% (0/100), p99 ")
    assert "stable 5xx 0.0% (0/900)" in v.summary
    j = v.to_json()
    assert j["verdict"] == "pass" and j["canary"]["requests"] == 100 and j["stable"]["requests"] == 900
    assert j["received"] == {"canary": 100, "stable": 900, "requests": 1000, "share": 0.1}


def test_absolute_error_rate_breach():
    v = analyse(snap(), snap(v2=S(150, 50), v1=S(900)), canary="v2", stable="v1", cfg=cfg())
    assert v.verdict == "fail"
    assert v.failed == ("canary 5xx rate 33.3% (50/150) > 1.0% (max_error_rate)",)
    assert "canary 5xx 33.3% (50/150)" in v.summary


def test_error_rate_at_the_limit_passes():
    v = analyse(snap(), snap(v2=S(100, 1)), canary="v2", stable=None, cfg=cfg(max_error_rate=0.01))
    assert v.verdict == "pass"


def test_relative_error_rate_tolerates_a_stable_that_already_errors():
    c = cfg(max_error_rate=0.01, max_error_rate_vs_stable=1.5)
    # stable at 10%: canary may have up to 1% + 1.5 × 10% = 16%
    ok = analyse(snap(), snap(v2=S(100, 12), v1=S(1000, 100)), canary="v2", stable="v1", cfg=c)
    assert ok.verdict == "pass"
    bad = analyse(snap(), snap(v2=S(100, 20), v1=S(1000, 100)), canary="v2", stable="v1", cfg=c)
    assert bad.verdict == "fail"
    assert "> 16.0% (max_error_rate 1.0% + 1.5 × stable 10.0%)" in bad.failed[0]


def test_relative_error_rate_falls_back_to_absolute_without_enough_stable_traffic():
    c = cfg(max_error_rate=0.01, max_error_rate_vs_stable=1.5)
    v = analyse(snap(), snap(v2=S(100, 12), v1=S(10, 5)), canary="v2", stable="v1", cfg=c)
    assert v.verdict == "fail" and "(max_error_rate)" in v.failed[0]


def test_absolute_p99_breach():
    v = analyse(snap(), snap(v2=S(100, lat={0.005: 90, 1.0: 10})), canary="v2", stable=None, cfg=cfg(max_p99=0.8))
    assert v.verdict == "fail"
    assert v.failed[0].startswith("canary p99 ") and v.failed[0].endswith("> max_p99 800ms")


def test_relative_p99_breach_and_floor():
    c = cfg(max_p99_vs_stable=2.0)
    slow = analyse(snap(), snap(v2=S(100, lat={0.1: 100}), v1=S(500, lat={0.01: 500})), canary="v2", stable="v1", cfg=c)
    assert slow.verdict == "fail" and "× stable p99" in slow.failed[0]
    # 5ms vs 1ms is 5×, but under P99_FLOOR: bucket noise, not judged
    fast = analyse(snap(), snap(v2=S(100, lat={0.005: 100}), v1=S(500, lat={0.001: 500})), canary="v2", stable="v1", cfg=c)
    assert fast.verdict == "pass"
    assert P99_FLOOR > 0.005


def test_several_breaches_are_all_reported():
    v = analyse(snap(), snap(v2=S(100, 50, lat={5.0: 100})), canary="v2", stable=None, cfg=cfg(max_p99=1.0))
    assert v.verdict == "fail" and len(v.failed) == 2


def test_skew_says_when_the_share_received_is_far_from_the_weight():
    from nonstop.agent.analysis import skew

    assert skew(20, 0, 199) is None  # too few requests to tell
    assert skew(20, 0, 200) == "the canary received 0.0% of 200 requests at weight 20%"
    assert skew(20, 1000, 0) == "the canary received 100.0% of 1,000 requests at weight 20%"
    assert skew(20, 190, 810) is None  # 19%: a fair draw
    assert skew(20, 155, 845) is None  # 15.5%: within 4 sd (~51 of 1000) of the weight
    assert skew(20, 140, 860) is not None  # 14%: 60 off, more than 4 sd and 5 points
    assert skew(20, 100, 900) is not None  # 10% of 1000: far off
    assert skew(20, 600, 400, match=True) is None  # match rules send more on purpose
    assert skew(20, 0, 1000, match=True) is not None
    assert skew(0, 0, 1000) is None and skew(100, 1000, 0) is None
