"""KubernetesDriver.status() while it acts, against the API's transport fake and a Prometheus fake
(tests/kubernetes/fakeapi.py; no Kubernetes server can run here) on a fake clock: what `nonstop status` sees
in the middle of a watch and of a canary step."""

from __future__ import annotations

import asyncio

from tests.kubernetes.test_driver import GW, V, Recorder, driver


def test_status_while_a_watch_runs_and_while_a_canary_steps(fake, prom):
    _cluster, _served, path = fake
    url, _seen = prom(errors=0.5, bad="roomescape-green-")
    seen: dict = {}

    class Peek(Recorder):
        """Reads the driver's status from inside its own callbacks: what `nonstop status` sees at that moment."""

        async def emit(self, type_, message, **data):
            await super().emit(type_, message, **data)
            if type_ in ("weight", "analysis_failed"):
                seen[type_] = await d.status()

    rec = Peek()
    d, _ = driver(path, prom_url=url, rec=rec, strategy={
        "type": "blue-green", "analysis": {"watch": "1m", "interval": "5s", "max_error_rate": "1%", "failure_limit": 2}})
    asyncio.run(d.deploy(V[1]))
    assert asyncio.run(d.deploy(V[2])).state == "rolled_back"
    w = seen["analysis_failed"]["watch"]  # at the second failed check (the figures of the first are counted)
    assert w["release"] == "v2" and w["failures"] == 1 and w["failure_limit"] == 2 and 0 < w["remaining"] < 60
    assert [a["verdict"] for a in w["analysis"]] == ["fail"]
    assert seen["analysis_failed"]["deployment"]["release"] == "v2"  # the cluster's record of it
    assert "watch" not in asyncio.run(d.status())  # over


def test_status_while_a_canary_steps(fake, prom):
    _cluster, _served, path = fake
    url, _seen = prom()
    seen: dict = {}

    class Peek(Recorder):
        async def emit(self, type_, message, **data):
            await super().emit(type_, message, **data)
            if type_ == "weight":
                seen[type_] = await d.status()

    d, _ = driver(path, prom_url=url, rec=Peek(), kubernetes=GW, strategy={
        "type": "canary", "steps": [{"weight": 10, "pause": "10s"}], "analysis": {"interval": "5s"}})
    asyncio.run(d.deploy(V[1]))
    assert asyncio.run(d.deploy(V[2])).ok
    s = seen["weight"]
    assert s["canary"]["weight"] == 10 and s["canary"]["step"] == 1 and s["canary"]["steps"] == 1
    assert s["route"]["backends"] == [{"name": "roomescape-stable", "weight": 90}, {"name": "roomescape-canary", "weight": 10}]
    assert {x["name"]: (x["release"], x["available"]) for x in s["deployments"]} == {"roomescape": ("v1", 3), "roomescape-canary": ("v2", 1)}
    assert s["lock"]["holder"] == "ci@runner:1" and not s["lock"]["expired"]
