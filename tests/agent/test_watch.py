"""The watch after a switch as pure decisions, and its verdict against a baseline."""

from __future__ import annotations

from nonstop.agent import analysis as an
from nonstop.agent.strategies import watch as wm
from nonstop.config import RollingAnalysis, WatchAnalysis


def S(requests: int, e5: int = 0, slow: int = 0) -> dict:
    # two latency buckets: <= 10 ms, <= 1 s, then +Inf
    return {"requests": requests, "by_class": {"5xx": e5},
            "latency": {"buckets": [0.01, 1.0], "counts": [requests - slow, slow, 0]}}


def snap(**rels) -> dict:
    return {"releases": rels}


def cfg(**kw) -> WatchAnalysis:
    return WatchAnalysis.model_validate({"watch": "60s", "interval": "5s", "min_requests": 50, **kw})


# -- the machine ----------------------------------------------------------------------
def test_blue_green_watch_passes_only_at_its_end_and_breaches_at_the_failure_limit():
    p = wm.WatchPlan(watch=60, failure_limit=2)
    s = wm.begin(1000.0)
    assert wm.decide(p, s, 1000.0) == wm.Keep(1060.0)
    s = wm.observe(p, s, "pass", 1005.0, "ok")
    assert wm.decide(p, s, 1059.9) == wm.Keep(1060.0)  # a pass does not end a blue-green watch
    s = wm.observe(p, s, "fail", 1010.0, "5xx 30%")
    assert isinstance(wm.decide(p, s, 1010.0), wm.Keep)
    s = wm.observe(p, s, "fail", 1015.0, "5xx 31.2% (312/1000) > 1.0%")
    act = wm.decide(p, s, 1015.0)
    assert isinstance(act, wm.Breached) and not act.by_user
    assert act.reason == "5xx 31.2% (312/1000) > 1.0% at +15.0s (2 failed check(s), failure_limit 2)"
    assert wm.observe(p, s, "pass", 1020.0) == s  # ended: late verdicts change nothing


def test_a_watch_without_traffic_passes_not_judged_and_rolling_goes_on_at_the_first_pass():
    p = wm.WatchPlan(watch=60)
    s = wm.observe(p, wm.begin(0.0), "inconclusive", 5.0)
    act = wm.decide(p, s, 60.0)
    assert isinstance(act, wm.Passed) and "not judged" in act.reason
    r = wm.WatchPlan(watch=30, until_pass=True)
    s = wm.observe(r, wm.begin(0.0), "pass", 5.0, "v2 5xx 0.0%")
    assert wm.decide(r, s, 5.0) == wm.Passed("passed at +5.0s: v2 5xx 0.0%")


def test_the_user_ends_a_watch():
    p = wm.WatchPlan(watch=60)
    s = wm.control(wm.begin(0.0), "promote", 3.0)
    assert isinstance(wm.decide(p, s, 3.0), wm.Passed)
    s = wm.control(wm.begin(0.0), "abort", 3.0)
    act = wm.decide(p, s, 3.0)
    assert isinstance(act, wm.Breached) and act.by_user
    assert wm.control(wm.begin(0.0), "pause", 1.0) == wm.begin(0.0)


# -- the verdict ---------------------------------------------------------------------------
def test_absolute_limits_name_the_figures_and_show_the_baseline():
    base = an.Figures(1000, 10, 0.008)
    v = an.watch_verdict(snap(v2=S(0)), snap(v2=S(1000, 312)), release="v2", baseline=base, cfg=cfg(), seconds=6)
    assert v.verdict == "fail"
    assert v.summary.startswith("5xx 31.2% (312/1000) > 1.0%")
    assert "(baseline 5xx 1.0% (10/1000), p99 8ms)" in v.summary
    v = an.watch_verdict(snap(v2=S(0)), snap(v2=S(20, 20)), release="v2", baseline=base, cfg=cfg(), seconds=6)
    assert v.verdict == "inconclusive" and v.needed == 30 and "v2 received 20 request(s) in 6s" in v.summary


def test_a_relative_limit_lets_an_app_keep_its_usual_error_rate():
    base = an.Figures(1000, 50, 0.008)  # this app always answers 5% 5xx
    c = cfg(max_error_rate="baseline + 2%")
    v = an.watch_verdict(None, snap(v2=S(1000, 60)), release="v2", baseline=base, cfg=c)
    assert v.verdict == "pass", v.summary  # 6% <= 5% + 2%
    v = an.watch_verdict(None, snap(v2=S(1000, 80)), release="v2", baseline=base, cfg=c)
    assert v.verdict == "fail" and "5xx 8.0% (80/1000) > 7.0% = baseline + 2.0%" in v.summary, v.summary
    # the same app judged on an absolute 1%: rolled back for its usual rate
    assert an.watch_verdict(None, snap(v2=S(1000, 50)), release="v2", baseline=base, cfg=cfg()).verdict == "fail"
    # no baseline (the previous release had no traffic): the margin alone
    assert an.watch_verdict(None, snap(v2=S(1000, 30)), release="v2", baseline=None, cfg=c).verdict == "fail"


def test_latency_limits_absolute_and_relative():
    c = cfg(max_p99="baseline * 3")
    base = an.Figures(1000, 0, 0.2)
    v = an.watch_verdict(None, snap(v2=S(1000, 0, slow=500)), release="v2", baseline=base, cfg=c)
    assert v.verdict == "fail" and "p99" in v.summary and "= baseline × 3" in v.summary, v.summary
    v = an.watch_verdict(None, snap(v2=S(1000, 0)), release="v2", baseline=base, cfg=c)
    assert v.verdict == "pass"
    v = an.watch_verdict(None, snap(v2=S(1000, 0, slow=500)), release="v2", baseline=None, cfg=cfg(max_p99="100ms"))
    assert v.verdict == "fail" and "> 100ms" in v.summary


def test_rolling_analysis_defaults_to_a_short_watch_per_batch():
    assert RollingAnalysis().watch == 30.0 and WatchAnalysis().watch == 120.0
