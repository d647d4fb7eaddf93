"""Decisions without I/O: route table validation, the split, stats, head inspection, drain plan, pool."""

from __future__ import annotations

import json
import os

import pytest

from nonstop.errors import ProxyError
from nonstop.proxy import fastpath, http, routes, split, stats
from nonstop.proxy.drain import Action, DrainPlan
from nonstop.proxy.pool import Pool
from nonstop.proxy.routes import InvalidRoutes, RouteTable, StaleRevision
from nonstop.proxy.state import ProxyState

EXAMPLE = {
    "revision": 7,
    "sticky": True,
    "releases": [
        {"name": "v2", "weight": 10, "match": {"headers": {"X-Canary": "1"}, "cookies": {"canary": "always"}},
         "targets": [{"addr": "127.0.0.1:8082", "draining": False}]},
        {"name": "v1", "weight": 90, "targets": [{"addr": "127.0.0.1:8081", "draining": False}]},
    ],
}


# -- routes -----------------------------------------------------------------

def test_route_table_json_round_trip_matches_the_documented_example():
    t = RouteTable.from_dict(EXAMPLE)
    assert t.revision == 7 and t.sticky
    assert [r.name for r in t.releases] == ["v2", "v1"]
    assert t.releases[0].match_headers == (("x-canary", "1"),)
    back = t.to_dict()
    assert back["releases"][1] == EXAMPLE["releases"][1]
    assert RouteTable.from_json(t.to_json()) == t


def test_split_modes_round_trip():
    for extra in ({"sticky": "client_ip"}, {"sticky": False}, {"split_key": {"header": "X-User"}},
                  {"split_key": {"cookie": "account_id"}}):
        t = RouteTable.from_dict({**EXAMPLE, **extra})
        assert RouteTable.from_json(t.to_json()) == t
    assert RouteTable.from_dict({**EXAMPLE, "split_key": {"header": "X-User"}}).split_key.name == "x-user"


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d.update(revision=-1), "revision"),
        (lambda d: d.update(sticky="yes"), "sticky"),
        (lambda d: d.update(sticky=1), "sticky"),
        (lambda d: d.update(split_key={"query": "a"}), "split_key"),
        (lambda d: d.update(split_key={"cookie": "a", "header": "b"}), "split_key"),
        (lambda d: d.update(split_key={"cookie": "a b"}), "split_key.cookie"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["releases"][0].update(weight=101), "releases[0].weight"),
        (lambda d: d["releases"][0].update(weight=True), "releases[0].weight"),
        (lambda d: d["releases"][1].update(name="v2"), "releases[1].name"),
        (lambda d: d["releases"][1].update(name=""), "releases[1].name"),
        (lambda d: d["releases"][0]["targets"][0].update(addr="nohost"), "releases[0].targets[0].addr"),
        (lambda d: d["releases"][0]["targets"][0].update(addr="h:99999"), "releases[0].targets[0].addr"),
        (lambda d: d["releases"][0]["targets"][0].update(draining="no"), "releases[0].targets[0].draining"),
        (lambda d: d["releases"][0]["targets"].append({"addr": "127.0.0.1:8082"}), "releases[0].targets[1].addr"),
        (lambda d: d["releases"][0]["match"].update(query={}), "releases[0].match.query"),
        (lambda d: d["releases"][0]["match"]["headers"].update({"X-B": 1}), "releases[0].match.headers.X-B"),
    ],
)
def test_invalid_tables_name_the_field(mutate, field):
    d = json.loads(json.dumps(EXAMPLE))
    mutate(d)
    with pytest.raises(InvalidRoutes) as e:
        RouteTable.from_dict(d)
    assert e.value.field == field
    assert isinstance(e.value, ProxyError)


def test_save_is_atomic_and_load_restores(tmp_path):
    path = str(tmp_path / "routes.json")
    assert routes.load(path) == RouteTable()  # missing file: empty table
    t = RouteTable.from_dict(EXAMPLE)
    routes.save(t, path)
    assert routes.load(path) == t
    assert [p for p in os.listdir(tmp_path) if p != "routes.json"] == []  # no temp file left


def test_state_refuses_stale_revisions_and_assigns_next_when_absent():
    s = ProxyState()
    s.apply(RouteTable.from_dict(EXAMPLE))
    with pytest.raises(StaleRevision):
        s.apply(RouteTable.from_dict({**EXAMPLE, "revision": 7}))
    d = dict(EXAMPLE)
    d.pop("revision")
    assert s.apply(RouteTable.from_dict(d)).revision == 8


# -- split ------------------------------------------------------------------

def _split(weights, sticky=True, draining=(), split_key=None):
    rels = [{"name": f"r{i}", "weight": w, "targets": [{"addr": f"127.0.0.1:{9000 + i}", "draining": i in draining}]}
            for i, w in enumerate(weights)]
    table = {"revision": 1, "sticky": sticky, "releases": rels}
    if split_key:
        table["split_key"] = split_key
    return split.Split(RouteTable.from_dict(table))


def test_buckets_follow_list_order_and_raising_the_canary_only_adds_users():
    before, after = _split([10, 90]), _split([25, 75])
    for b in range(100):
        cookie = b"nonstop_bucket=%d" % b
        d1 = before.choose([], cookie, "1.2.3.4", lambda: 0)
        d2 = after.choose([], cookie, "1.2.3.4", lambda: 0)
        assert d1.release == (0 if b < 10 else 1)
        assert d2.release == (0 if b < 25 else 1)
        if d1.release == 0:
            assert d2.release == 0  # nobody moves back from the canary
        assert d1.set_cookie is None  # a valid cookie is not re-set


def test_no_cookie_draws_a_random_bucket_and_pins_it_in_a_cookie():
    """DESIGN §2 "The split": a client without the cookie gets a random bucket (never its address's
    hash, or every user behind one load balancer would land on one side), sent back in Set-Cookie."""
    s = _split([20, 80])
    d = s.choose([], None, "10.1.2.3", lambda: 7)
    assert d == split.Decision(0, 7)
    assert s.choose([], None, "10.1.2.3", lambda: 250) == split.Decision(1, 50)  # 250 % 100
    assert s.choose([], b"a=1; nonstop_bucket=xx", "10.1.2.3", lambda: 42) == split.Decision(1, 42)  # invalid cookie
    assert split.set_cookie_header(7) == (
        b"Set-Cookie: nonstop_bucket=7; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax\r\n"
    )


def test_one_address_without_cookies_is_split_by_weight():
    """Many cookie-less requests from one address (a load balancer in front): the canary gets its weight."""
    import random

    rng = random.Random(1234)
    s = _split([20, 80])
    got = [s.choose([], None, "127.0.0.1", lambda: rng.getrandbits(16)).release for _ in range(20000)]
    share = got.count(0) / len(got)
    assert 0.18 < share < 0.22, share


def test_client_ip_mode_hashes_the_address_and_sets_no_cookie():
    s = _split([50, 50], sticky="client_ip")
    b = split.bucket_from_client("10.1.2.3")
    for r in (0, 99):
        d = s.choose([], b"nonstop_bucket=99", "10.1.2.3", lambda r=r: r)
        assert d == split.Decision(0 if b < 50 else 1, None)


def test_split_key_beats_the_cookie_and_pins_users_by_their_own_id():
    s = _split([30, 70], split_key={"cookie": "account_id"})
    for uid in (b"1", b"42", b"alice", b"9999"):
        want = 0 if split.bucket_from_key(uid) < 30 else 1
        for bucket_cookie in (b"nonstop_bucket=0", b"nonstop_bucket=99", b""):
            cookie = b"account_id=" + uid + (b"; " + bucket_cookie if bucket_cookie else b"")
            assert s.choose([], cookie, "x", lambda: 55) == split.Decision(want, None)
    # no key in the request: the sticky rule applies (here: the bucket cookie, else random + cookie)
    assert s.choose([], b"nonstop_bucket=5", "x", lambda: 55) == split.Decision(0, None)
    assert s.choose([], b"other=1", "x", lambda: 55) == split.Decision(1, 55)
    h = _split([30, 70], split_key={"header": "X-User-Id"})
    want = 0 if split.bucket_from_key(b"u-17") < 30 else 1
    assert h.choose([(b"x-user-ID", b"u-17")], None, "x", lambda: 99) == split.Decision(want, None)


def test_bucket_of_order_is_key_then_sticky_rule():
    rand = iter(range(1000)).__next__
    assert split.bucket_of(True, b"k", b"nonstop_bucket=3", "1.2.3.4", rand) == (split.bucket_from_key(b"k"), False)
    assert split.bucket_of(True, None, b"nonstop_bucket=3", "1.2.3.4", rand) == (3, False)
    assert split.bucket_of(True, None, b"nonstop_bucket=300", "1.2.3.4", rand) == (0, True)  # invalid: random
    assert split.bucket_of(True, b"", None, "1.2.3.4", rand) == (1, True)  # an empty key is no key
    assert split.bucket_of("client_ip", None, b"nonstop_bucket=3", "1.2.3.4", rand) == (split.bucket_from_client("1.2.3.4"), False)
    assert split.bucket_of(False, None, b"nonstop_bucket=3", "1.2.3.4", rand) == (2, False)


def test_cookie_value_parsing():
    cv = split.cookie_value
    assert cv(b"a=1; account_id=7; b=2", b"account_id") == b"7"
    assert cv(b"xaccount_id=5; account_id=6", b"account_id") == b"6"  # a whole name only
    assert cv(b"account_id2=5", b"account_id") is None
    assert cv(b"account_id = 8 ;x=1", b"account_id") == b"8"
    assert cv(None, b"account_id") is None and cv(b"", b"x") is None


def test_not_sticky_draws_a_fresh_bucket_and_sets_no_cookie():
    s = _split([50, 50], sticky=False)
    seen = {s.choose([], b"nonstop_bucket=1", "x", lambda v=v: v).release for v in (3, 60, 99)}
    assert seen == {0, 1}
    assert s.choose([], None, "x", lambda: 3).set_cookie is None


def test_match_rules_beat_buckets_and_need_every_entry():
    s = split.Split(RouteTable.from_dict(EXAMPLE))
    canary_b = b"nonstop_bucket=50"
    assert s.choose([(b"x-canary", b"1")], canary_b + b"; canary=always", "x", lambda: 0).release == 0
    # header alone is not enough: the cookie rule is listed too
    assert s.choose([(b"X-Canary", b"1")], canary_b, "x", lambda: 0).release == 1
    assert s.choose([(b"X-Canary", b"2")], canary_b + b"; canary=always", "x", lambda: 0).release == 1


def test_draining_releases_leave_the_split_and_weights_are_normalised():
    s = _split([10, 90], draining={1})
    assert all(s.choose([], b"nonstop_bucket=%d" % b, "x", lambda: 0).release == 0 for b in range(100))
    assert split.normalise([30, 30]) == [50, 50]
    assert split.normalise([1, 1, 1]) == [34, 33, 33]
    assert split.normalise([0, 0]) == [50, 50]
    assert split.normalise([10, 90]) == [10, 90]
    assert _split([], sticky=True).choose([], None, "x", lambda: 0) is None


def test_single_release_is_the_fast_path_without_cookie():
    s = _split([100])
    assert s.single is not None
    assert s.choose([], None, "x", lambda: 0) == split.Decision(0, None)


@pytest.mark.parametrize(
    "header,bucket",
    [(b"nonstop_bucket=42", 42), (b"a=b; nonstop_bucket=7", 7), (b"xnonstop_bucket=5", None),
     (b"nonstop_bucket=100", None), (b"nonstop_bucket=-1", None), (b"nonstop_bucket=", None), (None, None),
     (b"nonstop_bucket = 3", 3)],
)
def test_bucket_cookie_parsing(header, bucket):
    assert split.bucket_from_cookie(header) == bucket


def test_least_in_flight_then_round_robin_within_a_release():
    s = ProxyState()
    s.apply(RouteTable.static(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]))
    route = s.routes[0]
    picks = [route.pick().target.addr for _ in range(6)]
    assert sorted(set(picks)) == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]  # ties: round robin
    s.targets["127.0.0.1:1"].in_flight = 5
    s.targets["127.0.0.1:2"].in_flight = 5
    assert all(route.pick().target.addr == "127.0.0.1:3" for _ in range(5))
    assert route.pick(exclude=(s.targets["127.0.0.1:3"],)).target.addr in ("127.0.0.1:1", "127.0.0.1:2")


# -- stats ------------------------------------------------------------------

def test_histogram_quantiles_and_classes():
    c = stats.Counters()
    for _ in range(90):
        c.record(200, 0.004)  # bucket (0.0025, 0.005]
    for _ in range(9):
        c.record(500, 0.2)  # (0.1, 0.25]
    c.record(404, 100.0)  # +Inf
    d = stats.to_dict(c)
    assert d["requests"] == 100 and d["by_class"] == {"1xx": 0, "2xx": 90, "3xx": 0, "4xx": 1, "5xx": 9}
    assert 0.0025 < d["p50"] <= 0.005
    assert 0.0025 < d["p90"] <= 0.005
    assert 0.1 < d["p99"] <= 0.25
    assert d["latency"]["count"] == 100 and d["latency"]["counts"][-1] == 1
    assert stats.quantile([0] * 17, 0.5) is None


def test_prometheus_text_parses():
    from prometheus_client.parser import text_string_to_metric_families

    c = stats.Counters()
    c.record(200, 0.01)
    c.proxy_errors = 2
    text = stats.prometheus([("v1", "127.0.0.1:8081", c)])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(fams) >= {"nonstop_proxy_requests", "nonstop_proxy_errors", "nonstop_proxy_in_flight",
                         "nonstop_proxy_request_duration_seconds"}
    samples = {(s.name, s.labels.get("code_class"), s.labels.get("le")): s.value
               for f in fams.values() for s in f.samples}
    assert samples[("nonstop_proxy_requests_total", "2xx", None)] == 1
    assert samples[("nonstop_proxy_errors_total", None, None)] == 2
    assert samples[("nonstop_proxy_request_duration_seconds_bucket", None, "+Inf")] == 1


# -- http heads ---------------------------------------------------------------

def _req(headers, method=b"GET", url=b"/", version="1.1", upgrade=False, max_body=None, trust=None):
    return http.inspect_request(method, url, version, headers, b"9.9.9.9", upgrade, max_body, b"http", trust)


def test_request_head_rewrites():
    h = _req([(b"Host", b"a.test"), (b"Connection", b"keep-alive, X-Drop"), (b"X-Drop", b"1"), (b"X-Keep", b"2"),
              (b"X-Forwarded-For", b"1.1.1.1"), (b"X-Forwarded-Host", b"evil")])
    head = h.upstream_head
    assert head.startswith(b"GET / HTTP/1.1\r\nHost: a.test\r\n")
    assert b"X-Drop" not in head and b"X-Keep: 2\r\n" in head and b"evil" not in head
    # an untrusted peer's forwarded headers are replaced, never believed (DESIGN §2 trusted_proxies)
    assert b"X-Forwarded-For: 9.9.9.9\r\n" in head and b"1.1.1.1" not in head
    assert b"X-Real-IP: 9.9.9.9\r\n" in head and h.client == ""
    assert b"X-Forwarded-Host: a.test\r\n" in head and head.endswith(b"\r\n\r\n")
    assert h.keep_alive


def test_untrusted_peer_cannot_forge_any_forwarding_header():
    h = _req([(b"Host", b"a.test"), (b"X-Forwarded-For", b"6.6.6.6"), (b"X-Forwarded-Proto", b"https"),
              (b"X-Forwarded-Host", b"evil"), (b"X-Real-IP", b"6.6.6.6"), (b"Forwarded", b"for=6.6.6.6")])
    head = h.upstream_head
    assert b"6.6.6.6" not in head and b"evil" not in head and b"Forwarded: for" not in head
    assert b"X-Forwarded-Proto: http\r\n" in head
    assert head.count(b"X-Forwarded-For:") == 1 and head.count(b"X-Real-IP:") == 1


def test_trusted_peer_names_the_rightmost_untrusted_hop():
    from nonstop.proxy.forwarded import TrustedProxies

    trust = TrustedProxies(["9.9.9.0/24", "10.0.0.0/8"])
    h = _req([(b"Host", b"a.test"), (b"X-Forwarded-For", b"6.6.6.6, 203.0.113.7, 10.1.2.3"),
              (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"shop.example"), (b"X-Real-IP", b"6.6.6.6")],
             trust=trust)
    head = h.upstream_head
    assert h.client == "203.0.113.7"  # 10.1.2.3 is a trusted hop; 6.6.6.6 left of the client proves nothing
    assert b"X-Forwarded-For: 203.0.113.7, 10.1.2.3, 9.9.9.9\r\n" in head
    assert b"X-Real-IP: 203.0.113.7\r\n" in head and b"6.6.6.6" not in head
    assert b"X-Forwarded-Proto: https\r\n" in head and b"X-Forwarded-Host: shop.example\r\n" in head
    # a trusted peer without X-Forwarded-For is itself the client
    h = _req([(b"Host", b"a.test")], trust=trust)
    assert h.client == "" and b"X-Forwarded-For: 9.9.9.9\r\n" in h.upstream_head


def test_trusted_proxies_resolve_pure():
    from nonstop.proxy.forwarded import TrustedProxies

    t = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "::1/128"])
    assert t.trusts("127.0.0.1") and t.trusts("10.9.9.9") and t.trusts("::1") and not t.trusts("8.8.8.8")
    assert t.trusts("::ffff:10.0.0.1")  # IPv4-mapped, as a dual-stack socket reports it
    assert not t.trusts("not-an-ip")
    assert t.resolve(b"1.2.3.4", "127.0.0.1") == ("1.2.3.4", b"1.2.3.4, 127.0.0.1")
    assert t.resolve(b"1.2.3.4, 10.0.0.2", "127.0.0.1") == ("1.2.3.4", b"1.2.3.4, 10.0.0.2, 127.0.0.1")
    # every hop trusted: the leftmost is the client
    assert t.resolve(b"10.0.0.5, 10.0.0.6", "127.0.0.1") == ("10.0.0.5", b"10.0.0.5, 10.0.0.6, 127.0.0.1")
    # garbage where the client should be: the peer is the client
    assert t.resolve(b"unknown", "127.0.0.1") == ("127.0.0.1", b"127.0.0.1")
    assert t.resolve(b"", "127.0.0.1") == ("127.0.0.1", b"127.0.0.1")
    assert t.resolve(b" , 1.2.3.4 ,", "10.0.0.1") == ("1.2.3.4", b"1.2.3.4, 10.0.0.1")


@pytest.mark.parametrize(
    "kw,status",
    [
        (dict(headers=[(b"Host", b"a"), (b"Transfer-Encoding", b"gzip, chunked")]), 400),
        (dict(headers=[(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")], version="1.0"), 400),
        (dict(headers=[]), 400),
        (dict(headers=[(b"Host", b"a"), (b"Content-Length", b"11")], max_body=10), 413),
        (dict(headers=[(b"Host", b"a")], version="2.0"), 505),
        (dict(headers=[(b"Host", b"a")], method=b"CONNECT"), 405),
    ],
)
def test_request_rejections(kw, status):
    r = _req(**kw)
    assert isinstance(r, http.Reject) and r.status == status


def test_keep_alive_rules():
    assert not _req([(b"Host", b"a"), (b"Connection", b"close")]).keep_alive
    assert not _req([], version="1.0").keep_alive
    assert _req([(b"Connection", b"Keep-Alive")], version="1.0").keep_alive


def test_response_framing_decisions():
    req = _req([(b"Host", b"a")])
    r = http.inspect_response(200, b"OK", [(b"Transfer-Encoding", b"chunked")], True, req, False, False, b"X: 1\r\n")
    assert r.body == "chunked" and r.chunked_out and b"Transfer-Encoding: chunked\r\n" in r.head
    r = http.inspect_response(200, b"OK", [(b"Transfer-Encoding", b"chunked")], True, req, True, False, b"")
    assert r.close and not r.chunked_out and b"Transfer-Encoding" not in r.head
    r = http.inspect_response(200, b"OK", [], True, req, False, False, b"")
    assert r.body == "eof" and r.close and not r.upstream_reusable
    r = http.inspect_response(304, b"Not Modified", [(b"Content-Length", b"5")], True, req, False, False, b"")
    assert r.body == "none" and not r.close
    r = http.inspect_response(200, b"OK", [(b"Transfer-Encoding", b"gzip, chunked")], True, req, False, False, b"")
    assert isinstance(r, http.Reject) and r.status == 502
    r = http.inspect_response(101, b"Switching", [(b"Upgrade", b"websocket")], True, req, False, False, b"")
    assert isinstance(r, http.Reject)  # 101 without an upgrade request
    r = http.inspect_response(100, b"Continue", [], True, req, False, False, b"")
    assert r.interim and r.head == b"HTTP/1.1 100 Continue\r\n\r\n"


# -- drain, pool --------------------------------------------------------------

def test_drain_plan():
    p = DrainPlan(started=0.0, timeout=10.0, upgraded_timeout=60.0)
    assert p.next(1.0, 2, 1) == (Action.WAIT, False)
    assert p.next(1.0, 0, 0) == (Action.DONE, True)
    assert p.next(11.0, 2, 1) == (Action.DONE, False)  # requests timed out
    assert p.next(11.0, 0, 1) == (Action.WAIT, False)  # tunnels have longer
    assert p.next(60.0, 0, 1) == (Action.CLOSE_TUNNELS, False)
    q = DrainPlan(started=0.0, timeout=5.0)
    assert q.next(5.0, 0, 2) == (Action.CLOSE_TUNNELS, False)  # default: same timeout


class _Conn:
    def __init__(self, ok=True):
        self.ok = ok
        self.closed = False
        self.idle_since = 0.0

    def alive(self, now):
        return self.ok and not self.closed

    def close(self):
        self.closed = True


def test_pool_newest_first_skips_dead_and_expires_old():
    p = Pool(max_idle=2)
    a, b, c = _Conn(), _Conn(), _Conn(ok=False)
    p.put(a, 1.0)
    p.put(b, 2.0)
    p.put(c, 3.0)  # over max_idle: the oldest (a) is closed
    assert a.closed and len(p) == 2
    assert p.get(3.0) is b  # c is dead: closed and skipped
    assert c.closed
    p.put(b, 4.0)
    assert p.expire(10.0, 5.0) == 1 and b.closed and len(p) == 0


def test_the_data_plane_never_imports_the_control_plane_or_the_cli():
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, nonstop.proxy as p\n"
        "for m in pkgutil.iter_modules(p.__path__):\n"
        "    if m.name != '__main__': importlib.import_module('nonstop.proxy.' + m.name)\n"
        "bad = [m for m in sys.modules if m.startswith(('nonstop.agent', 'nonstop.cli'))]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "head,taken",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello", True),
        (b"HTTP/1.1 404 Not Found\r\ncontent-length:   3  \r\n\r\nabc", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKEEP-ALIVE: timeout=5\r\n\r\nhello", True),
        (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nconnection:Keep-Alive \r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x\r\nX: 1\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: upgrade\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nUpgrade: h2c\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nProxy-Authenticate: x\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nTE: trailers\r\nContent-Length: 5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", False),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: a\x00b\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: a\nY: b\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n folded\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", False),  # head not complete yet
    ],
)
def test_response_fast_path_takes_only_plain_content_length_heads(head, taken):
    got = fastpath.fast_response(head)
    assert (got is not None) == taken
    if taken:
        status, end, length, chead = got
        assert head[end - 4 : end] == b"\r\n\r\n" and status == int(head[9:12]) and length == len(head) - end
        # the client gets what the parser path would send
        slow = http.inspect_raw_response(status, head[:end], True, http.RequestHead(), False, False, b"X: 1\r\n")
        assert slow.body == "length" and slow.upstream_reusable and not slow.close
        assert _lines(fastpath.fast_client_head(chead, b"X: 1\r\n", False, False)) == _lines(slow.head)


def _lines(head: bytes):
    """A head as (status line, sorted [(name, value)]): the same message up to case, order of different fields, optional whitespace."""
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    return lines[0], sorted((n.lower(), v.strip(b" \t")) for n, _, v in (ln.partition(b":") for ln in lines[1:-2]))


def _llhttp_head(data: bytes):
    import httptools

    class P:
        url = b""

        def __init__(self):
            self.headers = []

        def on_url(self, u):
            self.url += u

        def on_header(self, n, v):
            self.headers.append((n, v))

    p = P()
    parser = httptools.HttpRequestParser(p)
    parser.feed_data(data)
    return http.inspect_request(parser.get_method(), p.url, parser.get_http_version(), p.headers, b"10.0.0.1",
                                parser.should_upgrade(), None)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET /p/a?q=1&r=%20x HTTP/1.1\r\nUser-Agent: t\r\nhost:  a.test:8080 \r\nAccept: */*\r\nCookie: c=1\r\n\r\n",
        b"HEAD /x HTTP/1.1\r\nHost: [::1]:80\r\nX-Hi: \xe2\x9c\x93\r\n\r\n",
        b"DELETE /r/1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nAccept: x\r\nconnection: Keep-Alive \r\nUser-Agent: u\r\n\r\n",
        b"OPTIONS / HTTP/1.1\r\nHost:\ta.b\t\r\nUpgrade-Insecure-Requests: 1\r\nX-Forwarded: no\r\nTEA: 1\r\n\r\n",
        b"GET /?a=b HTTP/1.1\r\nx:\r\nHOST: h\r\nX-Empty: \r\n\r\n",
    ],
)
@pytest.mark.parametrize("impl", ["_scan_request", "_regex_request"])  # compiled build: the scan; Python: the regex
def test_request_fast_path_builds_the_same_upstream_head_as_the_parser_path(data, impl):
    fwd = http.forwarded_lines(b"10.0.0.1")
    fast = getattr(fastpath, impl)(data, fwd)
    assert fast is not None
    slow = _llhttp_head(data)

    def norm(head):  # the same message: request line and headers, up to optional whitespace
        lines = head.split(b"\r\n")
        return [lines[0]] + [(n.lower(), v.strip()) for n, _, v in (ln.partition(b":") for ln in lines[1:] if ln)]

    assert norm(fast.upstream_head) == norm(slow.upstream_head)
    assert fast.upstream_head.endswith(b"\r\n\r\n")
    assert fast.method == slow.method and fast.keep_alive and slow.keep_alive and fast.no_body


@pytest.mark.parametrize(
    "data",
    [
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # pipelined: the parser takes it
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # incomplete
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: keep-alive\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-PROTO: https\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTrailer: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \t \r\n\r\n",
        b"GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nx",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nconnection: KEEP-ALIVE\r\n\r\n",
    ],
)
@pytest.mark.parametrize("impl", ["_scan_request", "_regex_request"])
def test_request_fast_path_leaves_everything_else_to_the_parser(data, impl):
    assert getattr(fastpath, impl)(data, b"") is None


def test_the_compiled_build_scans_requests_and_the_python_one_matches_the_regex():
    compiled = not fastpath.__file__.endswith(".py")
    assert fastpath.fast_request is (fastpath._scan_request if compiled else fastpath._regex_request)


def test_response_fast_path_verdicts_are_remembered_by_exact_head_and_bounded():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
    first = fastpath.fast_response(head + b"ok")
    assert first == fastpath.fast_response(head + b"ok") == fastpath.fast_response(head)
    assert first[3] == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
    assert fastpath.fast_response(head.replace(b"keep-alive", b"close") + b"ok") is None
    for i in range(fastpath._FAST_HEADS_MAX * 2):
        assert fastpath.fast_response(b"HTTP/1.1 200 OK\r\nX-I: %d\r\nContent-Length: 0\r\n\r\n" % i)[2] == 0
    assert len(fastpath._fast_heads) <= fastpath._FAST_HEADS_MAX
    assert fastpath.fast_response(head + b"ok") == first


def test_response_fast_path_verdicts_alternating_heads_never_mix():
    a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    b = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    c = b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\n"
    for _ in range(3):
        assert fastpath.fast_response(a + b"ok")[1:3] == (len(a), 2)
        assert fastpath.fast_response(b + b"ok") is None
        assert fastpath.fast_response(a + b"ok" + b)[1:3] == (len(a), 2)  # the next response's bytes too
        assert fastpath.fast_response(c + b"x" * 22)[1:3] == (len(c), 22)
        assert fastpath.fast_response(a[:-2]) is None  # incomplete
