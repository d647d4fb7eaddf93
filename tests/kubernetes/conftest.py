"""Fixtures of the kubernetes runtime's tests: a fresh fake API server per test, Prometheus fakes
(tests/kubernetes/fakeapi.py)."""

from __future__ import annotations

import pytest

from tests.kubernetes.fakeapi import FakeCluster, kubeconfig, prom_answer, serve_cluster, serve_prometheus


@pytest.fixture
def fake(tmp_path):
    """(cluster, served, kubeconfig path): the API's transport fake on 127.0.0.1:0, stopped after the test."""
    cluster = FakeCluster()
    served = serve_cluster(cluster)
    path = kubeconfig(tmp_path / "kubeconfig", served.url, contexts=("test", "other"))
    try:
        yield cluster, served, path
    finally:
        served.close()


@pytest.fixture
def prom():
    """start(errors, bad) -> (url, queries seen): a Prometheus fake answering ``prom_answer``'s figures."""
    servers = []

    def start(errors: float = 0.0, bad: str = "-canary-"):
        s, seen = serve_prometheus(prom_answer(errors, bad))
        servers.append(s)
        return s.url, seen

    yield start
    for s in servers:
        s.close()
