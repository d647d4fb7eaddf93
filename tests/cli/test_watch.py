"""The live deploy view: the fold of events into where a deployment stands, and its rendering."""

from __future__ import annotations

import io

from rich.console import Console

from nonstop.cli.watch import DeployState, DeployView, render_state

EVENTS = [
    {"ts": 100.0, "type": "start", "message": "deploy started strategy=canary from=v1", "strategy": "canary", "from_release": "v1"},
    {"ts": 100.1, "type": "release", "message": "release v2 stored", "release": "v2"},
    {"ts": 100.2, "type": "step", "message": "starting 1 canary instance(s) of v2 beside v1", "phase": "starting"},
    {"ts": 100.3, "type": "instance_starting", "message": "starting v2@8082", "instance": "v2@8082"},
    {"ts": 100.9, "type": "instance_healthy", "message": "v2@8082 healthy", "instance": "v2@8082"},
    {"ts": 101.0, "type": "step", "message": "step 1/2: 20% of traffic to v2", "phase": "canary", "weight": 20,
     "canary_step": 1, "canary_steps": 2},
    {"ts": 101.1, "type": "weight", "message": "v2 20%, v1 80%", "weight": 20, "release": "v2"},
    {"ts": 102.1, "type": "analysis_failed", "message": "analysis fail at 20%: [5xx] 50%", "verdict": "fail",
     "canary": {"requests": 10, "errors": 5, "error_rate": 0.5, "p99": 0.004},
     "stable": {"requests": 40, "errors": 0, "error_rate": 0.0, "p99": 0.0031}},
    {"ts": 102.2, "type": "waiting", "message": "waiting for a passing analysis", "waiting_for": "a passing analysis"},
]


def text_of(renderable, width=140) -> str:
    c = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    c.print(renderable)
    return c.export_text()


def test_fold():
    st = DeployState()
    for ev in EVENTS:
        st.add(ev)
    assert (st.release, st.strategy, st.from_release) == ("v2", "canary", "v1")
    assert (st.weight, st.canary_step, st.canary_steps) == (20, 1, 2)
    assert st.failures == 1 and st.analysis["verdict"] == "fail"
    assert st.waiting_for == "a passing analysis"
    assert st.instances == {"v2@8082": "healthy"}
    assert round(st.elapsed, 1) == 2.2
    st.add({"ts": 105.0, "type": "result", "message": "rolled back", "ok": False, "state": "rolled_back", "release": "v2"})
    assert st.result["state"] == "rolled_back" and st.waiting_for is None


def test_panel_shows_weight_step_and_analysis():
    st = DeployState()
    for ev in EVENTS:
        st.add(ev)
    out = text_of(render_state(st))
    assert "v2  canary  from v1  2.2s" in out
    assert " 20%   step 1/2" in out and "██████░" in out
    assert "fail  canary 5xx 50.0% (5/10), p99 4ms" in out
    assert "stable 5xx 0.0% (0/40), p99 3ms" in out and "(1 failed)" in out
    assert "for a passing analysis" in out


def test_blue_green_has_no_weight_bar():
    st = DeployState()
    st.add({"ts": 1.0, "type": "start", "message": "deploy started strategy=blue-green from=-", "strategy": "blue-green", "from_release": None})
    st.add({"ts": 1.5, "type": "step", "message": "switching 100% of traffic to v3", "phase": "switch"})
    out = text_of(render_state(st))
    assert "weight" not in out and "from" not in out and "switching 100%" in out


def test_view_prints_lines_as_text_not_markup():
    buf = io.StringIO()
    c = Console(file=buf, force_terminal=True, width=120, color_system=None)
    v = DeployView(c)
    for ev in EVENTS:
        v.event(ev)
    v.event({"ts": 105.0, "type": "result", "message": "deploy rolled_back in 5.0s: [bold]x", "ok": False})
    v.close()
    out = buf.getvalue()
    assert "analysis fail at 20%: [5xx] 50%" in out
    assert "✗ deploy rolled_back in 5.0s: [bold]x" in out
