"""bench/deploy.py's bookkeeping: round medians and spreads, engine timestamps (no deploy is run here)."""

from __future__ import annotations

from tests.testing.test_bench_proxy import ROOT, _load

bench = _load("bench_deploy", ROOT / "bench" / "deploy.py")


def test_rounds_are_matched_by_position_and_reported_as_medians_with_their_spread():
    def round_(wall: float, rb: float, rb_tuned: float) -> list[dict]:
        return [
            {"scenario": "nonstop blue-green (health 200ms x2)", "router": "embedded", "failed": 0, "served": 100,
             "deploy_wall_s": wall},
            {"scenario": "  warm rollback v2 → v1", "router": "embedded", "failed": 0, "served": 100, "deploy_wall_s": rb},
            {"scenario": "nonstop blue-green (health 25ms x1)", "router": "embedded", "failed": 1, "served": 90,
             "deploy_wall_s": wall},
            {"scenario": "  warm rollback v2 → v1", "router": "embedded", "failed": 0, "served": 90, "deploy_wall_s": rb_tuned},
        ]

    rows, spread = bench.medians([round_(2.0, 0.1, 0.5), round_(3.0, 0.2, 0.6), round_(2.5, 0.3, 0.7)])
    assert [r["deploy_wall_s"] for r in rows] == [2.5, 0.2, 2.5, 0.6]  # the two rollbacks kept apart
    assert rows[2]["failed"] == 3 and rows[2]["served"] == 270  # sums: a failure in any round shows
    assert spread[1] == ("- nonstop blue-green (health 200ms x2):warm rollback v2 → v1 [embedded]: "
                         "deploy_wall_s 0.1–0.3 (0.1, 0.2, 0.3)")
    assert bench.medians([round_(2.0, 0.1, 0.5)])[1] == []  # one round: no spread to tell


def test_engine_timestamps_to_epoch():
    assert bench._epoch("1970-01-01T00:00:01.5Z") == 1.5
    assert abs(bench._epoch("2026-12-01T10:43:54.052572123Z") - 1796121834.052572) < 1e-6
