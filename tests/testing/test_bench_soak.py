"""bench/soak.py: one tiny real soak (real agent, proxy, instances and load), and its verdicts' arithmetic.

The real run is ``--duration 30s --every 6s --rollback-every 3``: five actions (deploy, deploy,
rollback, deploy, deploy) under both loads, a sample every 5 s, ``nonstop down``, and every check the
hour-long soak makes; it takes ~45 s. The flatness and schedule tests are pure (made-up samples).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# bench/ is scripts, not a package: load by path
report = _load("soak_report", ROOT / "bench" / "soak_report.py")
soak = _load("bench_soak", ROOT / "bench" / "soak.py")

CHECKS = {"no failed request", "every deploy and rollback exit 0, the expected release live", "proxy RSS flat",
          "agent RSS flat", "proxy fds back to the start", "agent fds back to the start",
          "same agent and proxy processes throughout", "no process left after down", "ports free after down",
          "no traceback or error in the logs", "the dashboard's /metrics answered 200 every sample",
          "nonstop down exit 0", "no unreaped child at the end"}


@pytest.fixture(scope="module")
def tiny_soak(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    results = tmp_path_factory.mktemp("soak") / "RESULTS.md"
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "30s", "--every", "6s", "--sample", "5s",
         "--rollback-every", "3", "--idle", "5", "--json", "--record", "--results", str(results)],
        capture_output=True, text=True, timeout=150, env={**os.environ, "NO_COLOR": "1"})
    assert out.stdout, out.stderr[-3000:]
    return out, json.loads(out.stdout), results


def test_a_tiny_soak_passes_every_check_and_loses_nothing(tiny_soak):
    out, res, _ = tiny_soak
    assert out.returncode == 0, out.stderr[-3000:]
    assert res["ok"] is True
    assert {v["name"] for v in res["verdicts"]} == CHECKS
    assert all(v["ok"] for v in res["verdicts"]), res["verdicts"]
    assert res["failed_requests"] == 0 and res["failures"] == []
    for load in res["loads"]:
        assert load["summary"]["failed"] == 0
        assert load["summary"]["served"] > 200, load["summary"]  # ~50 req/s each for 30 s
        assert set(load["summary"]["by_version"]) >= {"v3", "v4", "v6"}  # every deploy took traffic
    assert set(res["loads"][1]["summary"]["by_kind"]) == {"keepalive", "post"}  # load B: no new connection per request


def test_the_actions_are_deploys_and_every_third_a_rollback_to_the_previous_release(tiny_soak):
    _, res, _ = tiny_soak
    acts = [(a["kind"], a["version"], a["expect_live"], a["live"], a["code"]) for a in res["actions"]]
    assert acts == [("deploy", "v3", "v3", "v3", 0), ("deploy", "v4", "v4", "v4", 0),
                    ("rollback", None, "v3", "v3", 0), ("deploy", "v5", "v5", "v5", 0),
                    ("deploy", "v6", "v6", "v6", 0)]
    assert all(a["seconds"] > 0 for a in res["actions"])
    summary = res["actions_summary"]
    assert (summary["deploy"]["count"], summary["rollback"]["count"]) == (4, 1)
    assert summary["deploy"]["failed"] == summary["rollback"]["failed"] == 0


def test_the_series_has_a_sample_each_interval_and_idle_ones_around_it(tiny_soak):
    _, res, _ = tiny_soak
    samples = res["samples"]
    assert samples[0]["label"] == "start" and samples[-1]["label"] == "end"
    timed = [s for s in samples if not s["label"]]
    assert len(timed) == 7  # 0, 5, … 30 s
    for s in samples:
        assert s["proxy_rss"] > 0 and s["agent_rss"] > 0 and s["proxy_fds"] > 0 and s["agent_fds"] > 0
        assert s["instances"] in (1, 2) and s["state_bytes"] > 0 and s["metrics"] == 200
    assert samples[0]["served"] == 0 and samples[-1]["served"] > 400
    assert {"early_mb", "late_mb", "growth_mb", "growth_pct", "trend_mb_per_h"} <= set(res["flatness"]["proxy"])


def test_nothing_the_soak_started_is_left(tiny_soak):
    _, res, _ = tiny_soak
    roles = set(res["processes_seen"].values())
    assert {"agent", "proxy"} <= roles and any(r.startswith("instance ") for r in roles)
    for pid in map(int, res["processes_seen"]):
        try:
            p = psutil.Process(pid)
            assert res["dir"] not in " ".join(p.cmdline()), f"{pid} still runs: {p.cmdline()}"
        except psutil.Error:
            pass  # gone, as it should be
    assert not any(res["dir"] in " ".join(p.info["cmdline"] or ()) for p in psutil.process_iter(["cmdline"]))
    assert res["left"] == [] and not Path(res["dir"]).exists()


def test_record_appends_the_series_and_the_verdicts(tiny_soak):
    _, res, results = tiny_soak
    text = results.read_text()
    assert text.startswith("\n### bench/soak.py — ")
    assert "| min | proxy RSS MB |" in text and "| start (idle) |" in text and "| end (idle) |" in text
    assert "- deploys: 4, 0 failed" in text and "- rollbacks: 1, 0 failed" in text
    assert "Overall: **PASS**." in text and "**0 failed**" in text


# -- the arithmetic, on made-up samples --------------------------------------------------------------

def _samples(rss_mb) -> list:
    return [report.Sample(t=i * 60.0, proxy_pid=1, agent_pid=2, proxy_rss=int(mb * report.MB), proxy_uss=None,
                          agent_rss=int(50 * report.MB), agent_uss=None, proxy_fds=10, agent_fds=10, instances=2,
                          zombies=0, state_bytes=1, logs_bytes=1, served=0, failed=0, load1=0.0)
            for i, mb in enumerate(rss_mb)]


def test_flatness_compares_minutes_5_to_15_with_the_last_10():
    flat = _samples([20 + (5 if i < 5 else 0) for i in range(61)])  # warm-up spike, then steady
    f = report.flatness(flat, "proxy_rss", 3600, 5.0)
    assert f["ok"] and f["growth_mb"] == 0 and (f["early_samples"], f["late_samples"]) == (11, 11)
    leak = _samples([20 + i * 0.2 for i in range(61)])  # 12 MB an hour
    f = report.flatness(leak, "proxy_rss", 3600, 5.0)
    assert not f["ok"] and f["growth_mb"] == pytest.approx(9.0) and f["trend_mb_per_h"] == pytest.approx(12.0)
    assert f["growth_pct"] == pytest.approx(9.0 / 22.0 * 100, abs=0.1)


def test_a_window_without_samples_takes_the_nearest_one():
    s = _samples([10] * 11)  # minutes 0-10 of an hour: the early window holds 5-10, the late one none
    assert [x.t / 60 for x in report.window(s, report.EARLY, 3600)] == [5, 6, 7, 8, 9, 10]
    assert [x.t / 60 for x in report.window(s, report.LATE, 3600)] == [10]


def test_the_schedule_puts_actions_between_samples():
    sched = soak._schedule(180, 60, 60)
    assert sched == [(0, "sample"), (30.0, "action"), (60, "sample"), (90.0, "action"), (120, "sample"),
                     (150.0, "action"), (180, "sample")]
    assert soak._schedule(25, 10, 10)[-1] == (25, "sample")  # the end is always sampled


def test_a_failure_is_placed_in_or_after_its_action():
    a = report.Action(1, "deploy", "v3", "v3", 0.0, mono=(100.0, 101.0))
    b = report.Action(2, "rollback", None, "v2", 0.0, mono=(160.0, 160.5))
    assert report.nearest_action([a, b], 99.0) == "before the first action"
    assert report.nearest_action([a, b], 100.5) == "during action 1 (deploy v3)"
    assert report.nearest_action([a, b], 161.0) == "0.50s after action 2 (rollback)"
