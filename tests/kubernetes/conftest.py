"""Fixtures of the kubernetes runtime's tests: a fresh fake API server per test (tests/kubernetes/fakeapi.py)."""

from __future__ import annotations

import pytest

from tests.kubernetes.fakeapi import FakeCluster, kubeconfig, serve_cluster


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
