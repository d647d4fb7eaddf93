"""The dashboard's sampler: rates, error share and p99 from cumulative snapshots, in a ring buffer."""

from __future__ import annotations

import pytest

from nonstop.agent.sampler import Sampler, quantile

BOUNDS = [0.01, 0.1, 1.0]


def S(ok=0, err=0, counts=None):
    counts = counts if counts is not None else [ok + err, 0, 0, 0]
    return {"requests": ok + err, "by_class": {"2xx": ok, "5xx": err}, "latency": {"buckets": BOUNDS, "counts": counts, "sum": 0.0}}


def snap(**rels):
    return {"releases": rels, "targets": {}}


def test_first_tick_has_no_rate_then_rates_come_from_deltas():
    s = Sampler(window=3)
    a = s.add(100.0, snap(v1=S(ok=50)), {"v1": 100})
    assert a.releases["v1"].rps is None and a.releases["v1"].weight == 100
    b = s.add(101.0, snap(v1=S(ok=150)), {"v1": 100})
    assert b.releases["v1"].rps == pytest.approx(100)
    assert b.releases["v1"].requests == 100
    c = s.add(103.0, snap(v1=S(ok=250)), {"v1": 100})
    assert c.releases["v1"].rps == pytest.approx(50)  # 100 requests in 2 s


def test_error_rate_and_p99_over_the_window():
    s = Sampler(window=2)
    s.add(0, snap(v2=S(ok=0, counts=[0, 0, 0, 0])), {"v2": 10})
    s.add(1, snap(v2=S(ok=9, err=1, counts=[9, 0, 0, 1])), {"v2": 10})
    x = s.add(2, snap(v2=S(ok=18, err=2, counts=[18, 0, 0, 2])), {"v2": 10})
    r = x.releases["v2"]
    assert r.error_rate == pytest.approx(0.1)
    assert r.errors == 1 and r.requests == 10
    assert r.p99 == 1.0  # 2 of 20 above 1 s: p99 is past the last bound
    # the window slides: the next 20 requests are all fast and fine
    s.add(3, snap(v2=S(ok=28, err=2, counts=[28, 0, 0, 2])), {"v2": 10})
    y = s.add(4, snap(v2=S(ok=38, err=2, counts=[38, 0, 0, 2])), {"v2": 10})
    assert y.releases["v2"].error_rate == 0.0
    assert y.releases["v2"].p99 <= 0.01


def test_a_counter_reset_gives_no_figure_for_that_tick_only():
    s = Sampler(window=3)
    s.add(0, snap(v1=S(ok=1000)), {"v1": 100})
    s.add(1, snap(v1=S(ok=1100)), {"v1": 100})
    r = s.add(2, snap(v1=S(ok=5)), {"v1": 100}).releases["v1"]  # the proxy restarted
    assert r.rps is None and r.error_rate is None
    r = s.add(3, snap(v1=S(ok=25)), {"v1": 100}).releases["v1"]
    assert r.rps == pytest.approx(20)


def test_a_new_release_counts_from_zero_and_a_gone_one_keeps_its_weight_row():
    s = Sampler(window=3)
    s.add(0, snap(v1=S(ok=100)), {"v1": 100})
    x = s.add(1, snap(v1=S(ok=190), v2=S(ok=8, err=2)), {"v1": 90, "v2": 10})
    assert x.releases["v2"].rps == pytest.approx(10)
    assert x.releases["v2"].error_rate == pytest.approx(0.2)
    y = s.add(2, snap(v1=S(ok=290)), {"v1": 100, "v2": 0})
    assert y.releases["v2"].rps is None and y.releases["v2"].weight == 0


def test_missing_stats_and_ring_size():
    s = Sampler(size=3)
    s.add(0, snap(v1=S(ok=1)), {"v1": 100})
    s.add(1, None, {"v1": 100})
    x = s.add(2, snap(v1=S(ok=3)), {"v1": 100})
    assert x.releases["v1"].rps is None  # no figure across a gap
    s.add(3, snap(v1=S(ok=4)), {"v1": 100})
    assert [smp.ts for smp in s.samples] == [1, 2, 3]
    js = s.to_json()
    assert js[-1]["releases"]["v1"]["rps"] == 1.0 and set(js[-1]) == {"ts", "releases"}


def test_quantile():
    assert quantile((1.0, 2.0), [0, 0, 0], 0.99) is None
    assert quantile((1.0, 2.0), [10, 0, 0], 0.5) == pytest.approx(0.5)
    assert quantile((1.0, 2.0), [0, 10, 0], 0.5) == pytest.approx(1.5)
    assert quantile((1.0, 2.0), [0, 0, 1], 0.99) == 2.0
