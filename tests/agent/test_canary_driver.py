"""The canary driver against a fake Run: which splits it applies, how analysis windows move, how it ends.

No processes: a fake router serves scripted cumulative stats; durations are tens of milliseconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from nonstop.agent.strategies.run import Aborted
from nonstop.agent.strategies.canary import AnalysisFailed, CanaryDriver
from nonstop.agent.traffic import Side, Split
from nonstop.config import CanaryStrategy
from nonstop.errors import UsageError


def S(requests: int, e5: int = 0) -> dict:
    return {"requests": requests, "by_class": {"5xx": e5}, "latency": {"buckets": [0.01], "counts": [requests, 0]}}


@dataclass
class FakeRouter:
    """Stats grow by ``per_read`` canary requests (with ``errors`` 5xx) at each read."""

    per_read: int = 0
    errors: int = 0
    reads: int = 0

    async def stats(self) -> dict:
        n = self.reads * self.per_read
        self.reads += 1
        return {"releases": {"v2": S(n, self.reads * self.errors if n else 0), "v1": S(10 * n)}}


@dataclass
class FakeTraffic:
    split: Split = field(default_factory=lambda: Split(stable=Side("v1", ("a:1",))))
    applied: list[Split] = field(default_factory=list)

    async def set(self, split: Split) -> None:
        self.split = split
        self.applied.append(split)


class FakeDep:
    id = 1


class FakeStore:
    def __init__(self) -> None:
        self.states: list[str] = []

    def update_deployment(self, id, **kw):
        if "state" in kw:
            self.states.append(kw["state"])
        return FakeDep()


@dataclass
class Rel:
    id: str


class FakeRun:
    def __init__(self, router: FakeRouter) -> None:
        self.router = router
        self.traffic = FakeTraffic()
        self.release, self.stable = Rel("v2"), Rel("v1")
        self.store = FakeStore()
        self.dep = FakeDep()
        self.control: asyncio.Queue = asyncio.Queue()
        self.events: list[tuple[str, str, dict]] = []
        self.retired: list = []
        self.paused = False

    async def step(self, phase, message, **data):
        self.events.append(("step", message, {"phase": phase, **data}))

    async def emit(self, type, message, **data):
        self.events.append((type, message, data))

    def save(self, **data):
        self.store.update_deployment(self.dep.id, data=data)

    def set_paused(self, paused):
        if paused != self.paused:
            self.paused = paused
            self.store.update_deployment(self.dep.id, state="paused" if paused else "progressing")

    async def wait_control(self, timeout):
        try:
            return await asyncio.wait_for(self.control.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def stable_instances(self):
        return ["old-instance"]

    async def retire(self, recs, **kw):
        self.retired.extend(recs)

    def of(self, type_: str) -> list[tuple[str, str, dict]]:
        return [e for e in self.events if e[0] == type_]


def strategy(**kw) -> CanaryStrategy:
    base = {"type": "canary", "steps": [{"weight": 10, "pause": 0.05}, {"weight": 50, "pause": 0.05}],
            "analysis": {"interval": 0.02, "min_requests": 10, "failure_limit": 2}}
    base.update(kw)
    return CanaryStrategy.model_validate(base)


def drive(run: FakeRun, s: CanaryStrategy, *controls: tuple[float, str], timeout: float = 5.0) -> CanaryDriver:
    async def main():
        d = CanaryDriver(run, s, ("a:1",), ("a:2",))

        async def steer():
            for delay, action in controls:
                await asyncio.sleep(delay)
                d.check_control(action)
                run.control.put_nowait(action)

        st = asyncio.create_task(steer())
        try:
            await asyncio.wait_for(d.run(), timeout)
        finally:
            st.cancel()
        return d

    return asyncio.run(main())


def test_good_canary_applies_each_weight_then_makes_the_canary_stable():
    run = FakeRun(FakeRouter(per_read=10))
    drive(run, strategy())
    weights = [(sp.canary.release if sp.canary else None, sp.canary_weight, sp.stable.release) for sp in run.traffic.applied]
    assert weights == [("v2", 10, "v1"), ("v2", 50, "v1"), (None, 0, "v2")]
    assert run.traffic.applied[0].canary.addrs == ("a:2",) and run.traffic.applied[0].sticky is True
    assert run.retired == ["old-instance"]
    assert [e[2]["verdict"] for e in run.of("analysis")][:1] == ["pass"]


def test_inconclusive_windows_accumulate_until_min_requests():
    # 4 canary requests per read: 10 needed → the window keeps its start for 3 reads
    run = FakeRun(FakeRouter(per_read=4))
    d = drive(run, strategy(steps=[{"weight": 10, "pause": 0.01}]))
    verdicts = [(e[2]["verdict"], e[2]["canary"]["requests"]) for e in run.of("analysis")]
    assert verdicts[:3] == [("inconclusive", 4), ("inconclusive", 8), ("pass", 12)], verdicts
    assert d.state.phase == "promoted"
    waits = [e[1] for e in run.of("waiting")]
    assert any("waiting for 2 more requests to the canary" in w for w in waits), waits


def test_failing_analysis_rolls_back_with_figures():
    run = FakeRun(FakeRouter(per_read=10, errors=5))
    with pytest.raises(AnalysisFailed) as e:
        drive(run, strategy(steps=[{"weight": 10, "pause": 10}]))
    assert e.value.message.startswith("canary rolled back at 10%: analysis failed 2 time(s) (failure_limit 2): canary 5xx rate")
    assert e.value.detail["analysis"][-1]["verdict"] == "fail" and e.value.detail["failures"] == 2
    assert [x[0] for x in run.events].count("analysis_failed") == 2


def test_match_rules_route_the_canary_at_zero_before_the_first_step():
    run = FakeRun(FakeRouter(per_read=10))
    s = strategy(steps=[{"weight": 0, "pause": "manual"}], match={"header": {"X-Canary": "1"}})
    drive(run, s, (0.1, "promote"))
    first = run.traffic.applied[0]
    assert first.canary_weight == 0 and first.match_headers == (("X-Canary", "1"),)
    assert first.table().releases[0].name == "v2"  # routed for matching requests
    assert run.store.states == ["paused", "progressing"]


def test_abort_and_illegal_controls():
    run = FakeRun(FakeRouter(per_read=10))
    with pytest.raises(Aborted, match=r"aborted by the user \(step 1/2 at 10%\)"):
        drive(run, strategy(steps=[{"weight": 10, "pause": 10}, {"weight": 50, "pause": 10}]), (0.1, "pause"), (0.1, "abort"))
    d = CanaryDriver(FakeRun(FakeRouter()), strategy(), ("a:1",), ("a:2",))
    with pytest.raises(UsageError, match="not paused"):
        d.check_control("resume")
    d.finishing = True
    with pytest.raises(UsageError, match="at 100%"):
        d.check_control("abort")
