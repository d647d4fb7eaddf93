"""What config load refuses with runtime kubernetes, each naming the field (exit 2), and what it accepts."""

from __future__ import annotations

import pytest

from nonstop.errors import ConfigError

from tests.kubernetes.kube import make_cfg

PROM = {"prometheus": "http://prometheus.monitoring:9090"}
GW = {"gateway": {"name": "public"}, **PROM}


@pytest.mark.parametrize(
    "over, field, words",
    [
        ({"app": "RoomEscape"}, "app", "lowercase letters"),
        ({"run": {"stop_signal": "SIGINT"}}, "run.stop_signal", "STOPSIGNAL"),
        ({"health": {"expect_body": "UP"}}, "health.expect_body", "status code only"),
        ({"health": {"expect_status": 503}}, "health.expect_status", "200-399"),
        ({"strategy": {"type": "rolling", "max_surge": 0, "max_unavailable": 0}}, "strategy", "never make progress"),
        ({"strategy": {"type": "rolling", "analysis": {"watch": "1m"}}}, "kubernetes.prometheus", "metrics source"),
        ({"strategy": {"type": "blue-green", "smoke": ["./smoke.sh", "{url}"]}}, "strategy.smoke", "outside the cluster"),
        ({"strategy": {"type": "blue-green", "analysis": {"watch": "1m"}}}, "kubernetes.prometheus", "metrics source"),
        ({"strategy": {"type": "canary", "sticky": False}}, "kubernetes.prometheus", "canary analysis needs a metrics source"),
        ({"strategy": {"type": "canary"}, "kubernetes": PROM}, "strategy.sticky", "replica ratio"),
        ({"strategy": {"type": "canary", "sticky": False, "match": {"header": {"X-Canary": "1"}}}, "kubernetes": PROM}, "strategy.match", "kubernetes.gateway"),
        ({"strategy": {"type": "canary", "sticky": "client_ip"}, "kubernetes": GW}, "strategy.sticky", "client address"),
        ({"strategy": {"type": "canary", "split_key": {"cookie": "uid"}}, "kubernetes": GW}, "strategy.split_key", "cannot hash"),
        ({"strategy": {"type": "canary", "match": {"cookie": {"a": "1", "b": "2"}}}, "kubernetes": GW}, "strategy.match.cookie", "at most one"),
        ({"strategy": {"type": "canary", "sticky": False, "steps": [{"weight": 50}, {"weight": 10}]}, "kubernetes": PROM}, "strategy.steps", "must not decrease"),
        ({"kubernetes": {"prometheus": "prometheus:9090"}}, "kubernetes.prometheus", "http://"),
        ({"kubernetes": {"lease_duration": "5s"}}, "kubernetes.lease_duration", "at least 10s"),
        ({"kubernetes": {"progress_deadline": "30s"}}, "kubernetes.progress_deadline", "startup_timeout"),
        ({"kubernetes": {"prestop": "hook"}}, "kubernetes.prestop", "sleep"),
        ({"kubernetes": {"prometheus_queries": {"requests": "sum(rate(x[5m]))"}, **PROM}}, "kubernetes.prometheus_queries.requests", "$pods"),
        ({"kubernetes": {"prometheus_queries": {"requests": "sum(x{pod=~\"$pods\",n=\"$nope\"})"}, **PROM}}, "kubernetes.prometheus_queries.requests", "$nope"),
        ({"kubernetes": {"hostnames": ["Bad_Host"]}}, "kubernetes.hostnames", "not a hostname"),
        ({"tls": {"cert": "a.pem", "key": "a.key"}}, "tls", "Gateway or Ingress"),
        ({"run": {"image": None}}, "run.image", "required with runtime kubernetes"),
    ],
)
def test_refused_at_config_load_naming_the_field(over, field, words):
    with pytest.raises(ConfigError) as e:
        make_cfg(**over)
    assert e.value.field == field, e.value.message
    assert words in e.value.message
    assert e.value.exit_code == 2 and "nonstop.yml" in e.value.message


def test_the_designs_cluster_examples_load():
    cfg = make_cfg(
        strategy={"type": "canary", "steps": [{"weight": 10, "pause": "30s"}, {"pause": "manual"}], "match": {"header": {"X-Canary": "1"}}},
        kubernetes={"context": "prod", **GW, "gateway": {"name": "public", "namespace": "infra"}, "prestop_sleep": "10s"},
    )
    assert cfg.kubernetes.gateway.namespace == "infra" and cfg.kubernetes.prestop == "sleep"
    assert make_cfg(strategy={"type": "blue-green", "keep_previous": "10m"}).strategy.keep_previous == 600
    assert make_cfg(strategy={"type": "canary", "sticky": False}, kubernetes=PROM).strategy.sticky is False
