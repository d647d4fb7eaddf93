"""Rolling, blue-green and canary under load on a real cluster (NONSTOP_KUBECONFIG; README.md beside this)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from nonstop import config as configmod
from nonstop.agent.kubernetes import client as kc
from nonstop.agent.kubernetes.driver import KubernetesDriver
from nonstop.agent.kubernetes.shapes import KRelease

NS = os.environ.get("NONSTOP_NAMESPACE", "nonstop-live")
IMAGE = os.environ.get("NONSTOP_IMAGE", "nonstop-live")
LOAD_SECONDS = 90


def cfg_for(strategy: dict, **kube) -> configmod.Config:
    return configmod.from_dict({
        "app": "live",
        "run": {"runtime": "kubernetes", "image": IMAGE + ":{version}", "container_port": 8080, "instances": 3,
                "args": ["--shutdown-seconds", "30"], "stop_timeout": "30s"},
        "health": {"path": "/health", "interval": "1s", "startup_timeout": "60s", "healthy_threshold": 1},
        "strategy": strategy,
        "drain_timeout": "30s",
        "kubernetes": {"kubeconfig": os.environ["NONSTOP_KUBECONFIG"], "namespace": NS, "prestop_sleep": "5s", **kube},
    })


def start_load(api, seconds: int) -> str:
    """The load client as a Job in the cluster, against the app's Service; returns the Job's name."""
    from kubernetes import client

    name = f"live-load-{int(time.time())}"
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[client.V1Container(
                name="load", image=f"{IMAGE}:v1", command=["python", "-m", "nonstop.testing.load"],
                args=[f"http://live.{NS}.svc/", "--duration", str(seconds), "--rate", "50", "--json"])]))))
    client.BatchV1Api(api).create_namespaced_job(NS, job)
    return name


def load_result(api, name: str, timeout: float) -> dict:
    from kubernetes import client

    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = batch.read_namespaced_job_status(name, NS).status
        if (st.succeeded or 0) + (st.failed or 0) > 0:
            pod = core.list_namespaced_pod(NS, label_selector=f"job-name={name}").items[0]
            return json.loads(core.read_namespaced_pod_log(pod.metadata.name, NS).strip().splitlines()[-1])
        time.sleep(2)
    raise AssertionError(f"load Job {name} did not finish")


def release(v: str) -> KRelease:
    return KRelease(v, v, f"{IMAGE}:{v}")


def run_scenario(cfg) -> dict:
    kube = kc.connect(cfg)
    driver = KubernetesDriver(cfg, kube)
    assert asyncio.run(driver.deploy(release("v1"))).ok
    job = start_load(kube.api, LOAD_SECONDS)
    time.sleep(10)
    out = asyncio.run(driver.deploy(release("v2")))
    assert out.ok, out.reason
    return load_result(kube.api, job, LOAD_SECONDS + 120)


@pytest.mark.parametrize("strategy", [
    {"type": "rolling", "max_surge": 1, "max_unavailable": 0},
    {"type": "blue-green", "keep_previous": "1m"},
])
def test_no_request_fails_during_a_deploy(strategy):
    result = run_scenario(cfg_for(strategy))
    assert result["failed"] == 0, result


def test_canary_under_load():
    prom = os.environ.get("NONSTOP_PROMETHEUS")
    assert prom, "the canary scenario needs NONSTOP_PROMETHEUS (README.md)"
    kube = {"prometheus": prom}
    queries = {k: os.environ[f"NONSTOP_PROMQL_{k.upper()}"] for k in ("requests", "errors", "latency") if os.environ.get(f"NONSTOP_PROMQL_{k.upper()}")}
    if queries:
        kube["prometheus_queries"] = queries
    gw = os.environ.get("NONSTOP_GATEWAY")
    strategy = {"type": "canary", "sticky": bool(gw), "steps": [{"weight": 25, "pause": "20s"}, {"weight": 50, "pause": "20s"}],
                "analysis": {"interval": "10s", "min_requests": 20}}
    if gw:
        name, _, ns = gw.partition("/")
        kube["gateway"] = {"name": name, **({"namespace": ns} if ns else {})}
    result = run_scenario(cfg_for(strategy, **kube))
    assert result["failed"] == 0, result
