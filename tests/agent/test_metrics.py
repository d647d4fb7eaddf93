"""/metrics rendering: parsed back with prometheus_client's parser, values checked against the snapshot."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from nonstop.agent.metrics import DEPLOYMENT_BUCKETS, Family, MetricsInput, render

BOUNDS = [0.005, 0.01, 0.05, 0.1, 1.0]


def S(req2=0, req5=0, req4=0, counts=None, lat_sum=0.0, in_flight=0, proxy_errors=0):
    counts = counts if counts is not None else [0] * (len(BOUNDS) + 1)
    return {
        "requests": req2 + req5 + req4,
        "by_class": {"1xx": 0, "2xx": req2, "3xx": 0, "4xx": req4, "5xx": req5},
        "proxy_errors": proxy_errors,
        "in_flight": in_flight,
        "latency": {"buckets": BOUNDS, "counts": counts, "sum": lat_sum, "count": sum(counts)},
        "p50": None,
        "p90": None,
        "p99": None,
    }


STATUS = {
    "app": "shop",
    "listen": "127.0.0.1:8080",
    "agent": {"pid": 1, "started_at": 1700000000.5},
    "router": {"type": "embedded", "mode": "managed", "detail": {}},
    "live_release": "v1",
    "routes": [
        {"release": "v2", "weight": 10, "targets": ["127.0.0.1:8082"]},
        {"release": "v1", "weight": 90, "targets": ["127.0.0.1:8081"]},
    ],
    "instances": [
        {"id": "v1-8081", "release": "v1", "port": 8081, "pid": 10, "state": "healthy", "alive": True, "routed": True, "uptime": 120.0, "restarts": 1},
        {"id": "v2-8082", "release": "v2", "port": 8082, "pid": 11, "state": "healthy", "alive": True, "routed": True, "uptime": 5.5, "restarts": 0},
        {"id": "v0-8083", "release": "v0", "port": 8083, "pid": 9, "state": "draining", "alive": True, "routed": False, "uptime": 600.0, "restarts": 0},
        {"id": "v0-8084", "release": "v0", "port": 8084, "pid": 12, "state": "unhealthy", "alive": False, "routed": False, "uptime": 700.0, "restarts": 0},
    ],
    "deployment": {"id": 7, "release": "v2", "strategy": "canary", "state": "paused"},
}

STATS = {
    "releases": {
        "v1": S(req2=90, req5=0, counts=[80, 10, 0, 0, 0, 0], lat_sum=0.3, in_flight=2),
        "v2": S(req2=8, req5=2, req4=1, counts=[5, 0, 3, 2, 0, 1], lat_sum=3.2, proxy_errors=1),
        "v0": S(req2=4, counts=[4, 0, 0, 0, 0, 0], lat_sum=0.01),
    },
    "targets": {
        "127.0.0.1:8081": S(req2=90, counts=[80, 10, 0, 0, 0, 0], lat_sum=0.3, in_flight=2),
        "127.0.0.1:8082": S(req2=8, req5=2, req4=1, counts=[5, 0, 3, 2, 0, 1], lat_sum=3.2, proxy_errors=1),
        "127.0.0.1:8083": S(req2=4, counts=[4, 0, 0, 0, 0, 0], lat_sum=0.01),
    },
}

DEPLOYMENTS = [
    {"strategy": "canary", "state": "paused", "outcome": None, "seconds": None},
    {"strategy": "canary", "state": "rolled_back", "outcome": "rolled_back", "seconds": 42.0},
    {"strategy": "blue-green", "state": "promoted", "outcome": "promoted", "seconds": 3.5},
    {"strategy": "blue-green", "state": "promoted", "outcome": "promoted", "seconds": 7000.0},
    {"strategy": "blue-green", "state": "failed", "outcome": "failed", "seconds": 0.4},
    {"strategy": "rollback", "state": "promoted", "outcome": "promoted", "started_at": 100.0, "finished_at": 101.25},
]


def parse(text: str) -> dict[str, dict]:
    """{family name: {"type": t, "samples": {(sample name, frozenset(labels)): value}}}"""
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = {
            "type": fam.type,
            "samples": {(s.name, frozenset(s.labels.items())): s.value for s in fam.samples},
        }
    return out


def value(fams, family, sample=None, **labels):
    return fams[family]["samples"][(sample or family, frozenset((k, str(v)) for k, v in labels.items()))]


def rendered(**kw):
    m = MetricsInput(status=kw.get("status", STATUS), stats=kw.get("stats", STATS), deployments=kw.get("deployments", DEPLOYMENTS), version="0.1.0")
    return render(m)


def test_every_name_is_prefixed_and_counters_end_in_total():
    fams = parse(rendered())
    for name, f in fams.items():
        assert name.startswith("nonstop_"), name
        if f["type"] == "counter":
            # the parser strips _total from counter family names; samples keep it
            assert all(s[0].endswith("_total") for s in f["samples"]), name
        if "duration" in name or "uptime" in name or "time" in name:
            assert name.endswith("_seconds"), name


def test_requests_by_release_and_class():
    fams = parse(rendered())
    assert fams["nonstop_requests"]["type"] == "counter"
    assert value(fams, "nonstop_requests", "nonstop_requests_total", release="v1", code_class="2xx") == 90
    assert value(fams, "nonstop_requests", "nonstop_requests_total", release="v2", code_class="5xx") == 2
    assert value(fams, "nonstop_requests", "nonstop_requests_total", release="v2", code_class="4xx") == 1
    assert value(fams, "nonstop_requests", "nonstop_requests_total", release="v2", code_class="3xx") == 0


def test_targets_are_labelled_with_their_release_even_when_draining():
    fams = parse(rendered())
    t = "nonstop_target_requests_total"
    assert value(fams, "nonstop_target_requests", t, release="v1", target="127.0.0.1:8081", code_class="2xx") == 90
    assert value(fams, "nonstop_target_requests", t, release="v2", target="127.0.0.1:8082", code_class="5xx") == 2
    # 8083 is out of the routing table (draining): its release comes from the instance on that port
    assert value(fams, "nonstop_target_requests", t, release="v0", target="127.0.0.1:8083", code_class="2xx") == 4


def test_pairs_from_the_router_win_over_the_guess():
    stats = {**STATS, "pairs": [{"release": "v9", "target": "127.0.0.1:8081", **S(req2=3)}]}
    fams = parse(rendered(stats=stats))
    samples = fams["nonstop_target_requests"]["samples"]
    rels = {dict(k[1])["release"] for k in samples}
    assert rels == {"v9"}


def test_latency_histogram_is_cumulative_with_inf_sum_and_count():
    fams = parse(rendered())
    f = "nonstop_request_duration_seconds"
    assert fams[f]["type"] == "histogram"
    b = f + "_bucket"
    # v2 counts per bucket [5, 0, 3, 2, 0, +Inf 1]
    assert value(fams, f, b, release="v2", le="0.005") == 5
    assert value(fams, f, b, release="v2", le="0.01") == 5
    assert value(fams, f, b, release="v2", le="0.05") == 8
    assert value(fams, f, b, release="v2", le="0.1") == 10
    assert value(fams, f, b, release="v2", le="1.0") == 10
    assert value(fams, f, b, release="v2", le="+Inf") == 11
    assert value(fams, f, f + "_count", release="v2") == 11
    assert value(fams, f, f + "_sum", release="v2") == 3.2
    assert value(fams, "nonstop_target_request_duration_seconds", "nonstop_target_request_duration_seconds_count", release="v1", target="127.0.0.1:8081") == 90


def test_in_flight_weights_errors():
    fams = parse(rendered())
    assert value(fams, "nonstop_in_flight_requests", release="v1") == 2
    assert value(fams, "nonstop_proxy_errors", "nonstop_proxy_errors_total", release="v2") == 1
    assert value(fams, "nonstop_traffic_weight_ratio", release="v2") == 0.1
    assert value(fams, "nonstop_traffic_weight_ratio", release="v1") == 0.9
    assert value(fams, "nonstop_live_release_info", release="v1") == 1


def test_instance_health():
    fams = parse(rendered())
    lab = dict(instance="v0-8084", release="v0", port=8084)
    assert value(fams, "nonstop_instance_up", **lab) == 0
    assert value(fams, "nonstop_instance_healthy", **lab) == 0
    lab = dict(instance="v1-8081", release="v1", port=8081)
    assert value(fams, "nonstop_instance_up", **lab) == 1
    assert value(fams, "nonstop_instance_healthy", **lab) == 1
    assert value(fams, "nonstop_instance_routed", **lab) == 1
    assert value(fams, "nonstop_instance_uptime_seconds", **lab) == 120.0
    assert value(fams, "nonstop_instance_restarts", "nonstop_instance_restarts_total", **lab) == 1
    # draining: alive but not healthy for routing purposes
    assert value(fams, "nonstop_instance_healthy", instance="v0-8083", release="v0", port=8083) == 0


def test_deployments_by_outcome_and_duration():
    fams = parse(rendered())
    t = "nonstop_deployments_total"
    assert value(fams, "nonstop_deployments", t, strategy="blue-green", outcome="promoted") == 2
    assert value(fams, "nonstop_deployments", t, strategy="blue-green", outcome="failed") == 1
    assert value(fams, "nonstop_deployments", t, strategy="blue-green", outcome="aborted") == 0
    assert value(fams, "nonstop_deployments", t, strategy="canary", outcome="rolled_back") == 1
    assert value(fams, "nonstop_deployments", t, strategy="rollback", outcome="promoted") == 1
    f = "nonstop_deployment_duration_seconds"
    assert value(fams, f, f + "_count", strategy="blue-green") == 3
    assert value(fams, f, f + "_sum", strategy="blue-green") == 7003.9
    assert value(fams, f, f + "_bucket", strategy="blue-green", le="5.0") == 2  # 0.4 and 3.5
    assert value(fams, f, f + "_bucket", strategy="blue-green", le="3600.0") == 2  # 7000 only in +Inf
    assert value(fams, f, f + "_bucket", strategy="blue-green", le="+Inf") == 3
    assert value(fams, f, f + "_sum", strategy="rollback") == 1.25  # from started/finished when seconds is missing
    assert len([k for k in fams[f]["samples"] if dict(k[1]).get("strategy") == "canary"]) == len(DEPLOYMENT_BUCKETS) + 3
    assert value(fams, "nonstop_deployment_in_progress", release="v2", strategy="canary", state="paused") == 1


def test_agent_info_and_stats_up():
    fams = parse(rendered())
    assert value(fams, "nonstop_agent_info", app="shop", version="0.1.0", router="embedded") == 1
    assert value(fams, "nonstop_agent_start_time_seconds") == 1700000000.5
    assert value(fams, "nonstop_router_stats_up") == 1
    fams = parse(render(MetricsInput(status=STATUS, stats=None, stats_error="down")))
    assert value(fams, "nonstop_router_stats_up") == 0
    assert fams["nonstop_requests"]["samples"] == {}


def test_empty_agent_and_label_escaping():
    status = {
        "app": 'we"ird\\app',
        "agent": {"started_at": 0},
        "router": {"type": "nginx"},
        "live_release": None,
        "routes": [],
        "instances": [],
        "deployment": None,
    }
    text = render(MetricsInput(status=status, stats={"releases": {}, "targets": {}}, deployments=[]))
    fams = parse(text)
    assert value(fams, "nonstop_agent_info", app='we"ird\\app', version="", router="nginx") == 1
    assert value(fams, "nonstop_deployment_in_progress") == 0
    assert fams["nonstop_live_release_info"]["samples"] == {}


def test_extra_families_are_appended():
    extra = Family("nonstop_webhook_deliveries_total", "counter", "x").add(3, result="sent")
    fams = parse(render(MetricsInput(status=STATUS, stats=STATS, extra=[extra])))
    assert value(fams, "nonstop_webhook_deliveries", "nonstop_webhook_deliveries_total", result="sent") == 3
