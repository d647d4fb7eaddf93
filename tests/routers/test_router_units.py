"""Pure parts of the nginx / HAProxy routers: split plan, rendering checks, log tailing, log records."""

from __future__ import annotations

import json
import os
import re

import pytest

from nonstop.agent.routers.accesslog import LATENCY_BUCKETS, LogTail, StatsBook, haproxy_record, nginx_record
from nonstop.agent.routers.base import Release, RouteTable, Target
from nonstop.agent.routers.common import plan
from nonstop.agent.routers.haproxy_conf import SLOTS, MatchKey, assign_slots, server_weights
from nonstop.agent.routers.nginx_conf import render_upstreams
from nonstop.proxy.split import normalise
from nonstop.errors import RouterError


def rel(name, weight, *addrs, draining=False, **kw):
    return Release(name, weight, tuple(Target(a, draining) for a in addrs), **kw)


def test_normalise_is_the_embedded_rule():
    assert normalise([10, 90]) == [10, 90]
    assert normalise([1, 1, 1]) == [34, 33, 33]
    assert normalise([0, 0]) == [50, 50]
    assert normalise([20]) == [100]
    assert normalise([]) == []


def test_plan_canary_first_gets_the_low_buckets_and_draining_releases_none():
    p = plan(RouteTable(releases=(rel("v2", 10, "127.0.0.1:2"), rel("v1", 90, "127.0.0.1:1"), rel("v0", 0, "127.0.0.1:3", draining=True))))
    assert p.by_bucket[:10] == ("v2",) * 10 and p.by_bucket[10:] == ("v1",) * 90
    assert [r.name for r in p.usable] == ["v2", "v1"]
    assert plan(RouteTable()).by_bucket == ()


@pytest.mark.parametrize(
    "routing,message",
    [
        (RouteTable(releases=(rel('v"1', 100, "127.0.0.1:1"),)), "release name"),
        (RouteTable(releases=(rel("v1", 100, "127.0.0.1:1"), rel("v1", 0, "127.0.0.1:2"))), "twice"),
        (RouteTable(releases=(rel("v1", 100, "127.0.0.1:1; evil"),)), "HOST:PORT"),
        (RouteTable(releases=(rel("v1", 100, "127.0.0.1:1", match_headers=(("X Bad", "1"),)),)), "header name"),
        (RouteTable(releases=(rel("v1", 100, "127.0.0.1:1", match_cookies=(("a-b", "1"),)),)), "cookie name"),
        (RouteTable(releases=(rel("v1", 100, "127.0.0.1:1", match_headers=(("X-A", "\n"),)),)), "printable"),
    ],
)
def test_plan_refuses_what_a_config_cannot_carry(routing, message):
    with pytest.raises(RouterError, match=message):
        plan(routing)


def test_haproxy_slots_are_kept_and_new_releases_take_the_emptiest_free_slot():
    assert assign_slots({}, ["v1"], {}) == {"v1": 0}
    # v1 keeps slot 0; v2 takes the free slot with the fewest leftover servers (3 over 1 and 2)
    assert assign_slots({"v1": 0}, ["v2", "v1"], {1: 2, 2: 1, 3: 0}) == {"v1": 0, "v2": 3}
    # a release no longer usable gives its slot back, but not while it is still being drained from it
    assert assign_slots({"v1": 0, "v2": 1}, ["v2"], {}) == {"v2": 1}
    assert assign_slots({"v1": 0, "v2": 1}, ["v2", "v3"], {}) == {"v2": 1, "v3": 2}
    full = {f"v{i}": i for i in range(SLOTS)}
    with pytest.raises(RouterError, match=f"more than {SLOTS} releases with live targets at once"):
        assign_slots(full, [*full, "v9"], {})


def test_haproxy_external_weights_spread_a_share_over_its_servers_and_keep_one_at_least():
    p = plan(RouteTable(releases=(rel("v2", 1, "127.0.0.1:2", "127.0.0.1:3"), rel("v1", 99, "127.0.0.1:1"))))
    w = server_weights(p)
    assert w == {"t_127_0_0_1_2": (1, "v2"), "t_127_0_0_1_3": (1, "v2"), "t_127_0_0_1_1": (253, "v1")}
    assert server_weights(plan(RouteTable(releases=(rel("v1", 0, "127.0.0.1:1"),))))["t_127_0_0_1_1"][0] == 256


def test_nginx_upstreams_carry_the_routing_and_escape_match_values():
    text = render_upstreams(
        "room-escape",
        RouteTable(releases=(rel("v2", 10, "127.0.0.1:2", match_headers=(("X-Canary", "a b$"),)), rel("default", 90, "127.0.0.1:1"))),
    )
    assert "upstream nonstop_room_escape__0_v2" in text
    assert "\\default nonstop_room_escape__1_default;" in text  # a release called "default" stays a key
    assert '"~^a\\x20b\\x24$" v2;' in text  # no raw "$" or space reaches nginx's parser
    assert "keepalive 32;" in text and "least_conn;" in text
    assert "escape=json" in text


def test_haproxy_match_key_patterns():
    key = MatchKey.of(["X-Canary"], ["beta"])
    assert key.fmt() == "h0=%[req.hdr(x-canary),hex]&c0=%[req.cook(beta),hex]&"
    r = rel("v2", 0, "127.0.0.1:2", match_headers=(("X-Canary", "1"),))
    pat = key.pattern(r)
    assert re.match(pat, "h0=31&c0=&") and re.match(pat, "h0=31&c0=796573&")
    assert not re.match(pat, "h0=3131&c0=&")
    with pytest.raises(RouterError, match="strategy.match"):
        key.pattern(rel("v2", 0, "127.0.0.1:2", match_headers=(("X-Other", "1"),)))


def test_log_tail_follows_rotation_and_partial_lines(tmp_path):
    path = tmp_path / "access.log"
    path.write_bytes(b"old\n")
    tail = LogTail(str(path), from_end=True)
    assert tail.read() == []
    with open(path, "ab") as f:
        f.write(b"one\ntw")
    assert tail.read() == [b"one"]
    with open(path, "ab") as f:
        f.write(b"o\nlast-of-old\n")
    os.replace(path, tmp_path / "access.log.1")  # logrotate's rename
    path.write_bytes(b"new-1\n")
    assert tail.read() == [b"two", b"last-of-old", b"new-1"]
    with open(tmp_path / "access.log.1", "ab") as f:
        f.write(b"late-in-old\n")  # a writer that has not reopened yet
    assert tail.read() == [b"late-in-old"]
    path.write_bytes(b"x\n")  # truncated in place (copytruncate)
    assert tail.read() == [b"x"]
    tail.close()


def test_nginx_record_and_book():
    line = json.dumps(
        {
            "app": "shop", "release": "v2", "status": 200, "request_time": 0.012,
            "upstream_addr": "127.0.0.1:9, 127.0.0.1:8082", "upstream_status": "502, 200",
            "upstream_bytes_received": "0, 120",
        }
    ).encode()
    rec = nginx_record(line, "shop")
    assert rec == {"release": "v2", "target": "127.0.0.1:8082", "status": 200, "seconds": 0.012, "proxy_error": False}
    refused = nginx_record(
        json.dumps({"app": "shop", "release": "v2", "status": 502, "request_time": 0.001,
                    "upstream_addr": "127.0.0.1:8082", "upstream_bytes_received": "0"}).encode(), "shop")
    app_502 = nginx_record(
        json.dumps({"app": "shop", "release": "v2", "status": 502, "request_time": 0.001,
                    "upstream_addr": "127.0.0.1:8082", "upstream_bytes_received": "87"}).encode(), "shop")
    assert refused["proxy_error"] and not app_502["proxy_error"]
    assert nginx_record(b"not json", "shop") is None
    assert nginx_record(line, "other-app") is None
    book = StatsBook()
    book.add_all([rec, refused, app_502, None])
    snap = book.snapshot()
    s = snap["releases"]["v2"]
    assert s["requests"] == 3 and s["by_class"]["5xx"] == 2 and s["proxy_errors"] == 1
    assert s["latency"]["buckets"] == list(LATENCY_BUCKETS) and s["latency"]["count"] == 3
    assert 0 < s["p50"] <= s["p99"]
    assert book.malformed == 1


def test_haproxy_record_tells_its_own_errors_from_the_apps():
    base = {"app": "shop", "release": "v1", "ta_ms": 5, "server": "t_x", "target": "127.0.0.1:8081"}
    own = haproxy_record(json.dumps({**base, "status": 503, "termination": "SC"}).encode(), "shop")
    app = haproxy_record(json.dumps({**base, "status": 503, "termination": "--"}).encode(), "shop")
    assert own["proxy_error"] and not app["proxy_error"]
    assert own["target"] == "127.0.0.1:8081" and own["seconds"] == 0.005
    nosrv = haproxy_record(json.dumps({**base, "status": 503, "server": "<NOSRV>", "target": "-:-", "release": "-",
                                        "termination": "SC"}).encode(), "shop")
    assert nosrv["target"] is None and nosrv["release"] is None
