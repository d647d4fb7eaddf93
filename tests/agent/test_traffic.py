"""The traffic split as a pure value: what each Split routes, and how it changes."""

from __future__ import annotations

from nonstop.agent.traffic import Side, Split


def test_stable_only_gets_everything():
    r = Split(stable=Side("v1", ("127.0.0.1:8081",))).table()
    assert [(x.name, x.weight) for x in r.releases] == [("v1", 100)]


def test_canary_is_listed_first_so_raising_its_weight_only_adds_buckets():
    s = Split(stable=Side("v1", ("a:1",)), canary=Side("v2", ("a:2",)), canary_weight=10)
    r = s.table()
    assert [(x.name, x.weight) for x in r.releases] == [("v2", 10), ("v1", 90)]
    assert r.to_dict()["releases"][0]["name"] == "v2"


def test_canary_at_zero_is_routed_only_for_match_rules():
    s = Split(stable=Side("v1", ("a:1",)), canary=Side("v2", ("a:2",)), canary_weight=0)
    assert [x.name for x in s.table().releases] == ["v1"]
    m = Split(stable=Side("v1", ("a:1",)), canary=Side("v2", ("a:2",)), canary_weight=0, match_headers=(("X-Canary", "1"),))
    t = m.table().to_dict()
    # header names compare case-insensitively: the table keeps them lower-case (as the proxy reads them)
    assert t["releases"][0] == {"name": "v2", "weight": 0, "targets": [{"addr": "a:2", "draining": False}],
                                "match": {"headers": {"x-canary": "1"}}}


def test_instance_taken_out_and_put_back():
    s = Split(stable=Side("v1", ("a:1", "a:2")))
    out = s.without_addr("a:1")
    assert out.routed_addrs == {"a:2"}
    back = out.with_addr("v1", "a:1")
    assert back.routed_addrs == {"a:1", "a:2"}
    assert back.with_addr("v9", "a:9") == back  # unknown release: unchanged


def test_no_targets_means_an_empty_table_and_the_proxy_holds():
    assert Split(stable=Side("v1", ())).table().releases == ()


def test_json_round_trip():
    s = Split(stable=Side("v1", ("a:1",)), canary=Side("v2", ("a:2",)), canary_weight=25, match_cookies=(("beta", "1"),), sticky=False)
    assert Split.from_json(s.to_json()) == s
