"""bench/proxy.py's harness: the round, ratio and spread math, the rotation, the tables, configs the real
servers accept, the certificate, pinning on real processes, and two tiny real runs (plain, and TLS
with --pin) that must leave no process behind."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# bench/ is scripts, not a package: load by path (tests/proxy has a `backends` module of its own)
backends = _load("backend_servers", BENCH / "backend_servers.py")
report = _load("proxy_report", BENCH / "proxy_report.py")
bench = _load("bench_proxy", BENCH / "proxy.py")
tlsload = sys.modules["tlsload"]  # imported by proxy.py


def _s(target, rnd, kind=None, workers=1, error=None, **metrics):
    kind = kind or target.split()[0]
    return report.Sample(target, kind, workers, rnd, metrics, error)


# -- the math -------------------------------------------------------------------------


def test_spread_is_median_and_min_max_of_the_rounds_that_gave_a_value():
    sp = report.spread([3.0, None, 1.0, 2.0])
    assert (sp.median, sp.lo, sp.hi, sp.values) == (2.0, 1.0, 3.0, (3.0, None, 1.0, 2.0))
    assert report.spread([None, None]) is None
    assert report.spread([0.9, 1.1]).crosses_one
    assert not report.spread([0.9, 1.0]).crosses_one  # touching 1.0 is not crossing it
    assert not report.spread([1.05, 1.2]).crosses_one


def test_ratio_text_flags_a_spread_across_one():
    assert report.spread([0.91, 0.97, 1.04]).ratio_text() == "0.97 (0.91–1.04)†"
    assert report.spread([0.80, 0.85, 0.95]).ratio_text() == "0.85 (0.80–0.95)"
    assert report.spread([1.0, 1.0]).ratio_text() == "1.00"


@pytest.mark.parametrize("n", [1, 3, 4, 6])
def test_rotation_puts_every_row_first_once_in_n_rounds(n):
    plan = list(range(n))
    orders = [report.rotated(plan, r) for r in range(n)]
    assert orders[0] == plan
    assert sorted(o[0] for o in orders) == plan  # each first once
    assert sorted(o[-1] for o in orders) == plan  # and last once
    assert all(sorted(o) == plan for o in orders)
    assert report.rotated(plan, n) == plan


def test_ratios_are_taken_per_round_against_the_same_rounds_nginx():
    """A slow round (both halve) cancels out: per round 0.9 and 1.2, not a ratio of medians (75/75 = 1.0)."""
    samples = [
        _s("nginx", 1, rate=100.0, p99_ms=2.0), _s("nginx", 2, rate=50.0, p99_ms=4.0),
        _s("nonstop", 1, rate=90.0, p99_ms=3.0), _s("nonstop", 2, rate=60.0, p99_ms=2.0),
    ]
    rows = {r.target: r for r in report.summarise(samples, ["nginx", "nonstop"], 2, ("rate", "p99_ms"))}
    ns = rows["nonstop"]
    assert ns.figures["rate"].median == 75.0 and ns.figures["rate"].values == (90.0, 60.0)
    assert ns.ratios["rate"].values == (0.9, 1.2)
    assert ns.ratios["rate"].median == pytest.approx(1.05) and ns.ratios["rate"].crosses_one
    assert ns.ratios["p99_ms"].values == (1.5, 0.5)
    assert rows["nginx"].ratios["rate"].ratio_text() == "1.00"


def test_reference_is_nginx_with_the_same_worker_count_and_direct_is_compared_with_one_worker():
    samples = [
        _s("nginx", 1, rate=100.0), _s("nginx x2", 1, kind="nginx", workers=2, rate=200.0),
        _s("nonstop x2", 1, kind="nonstop", workers=2, rate=100.0), _s("backend direct", 1, kind="direct", rate=300.0),
        _s("haproxy", 1, rate=80.0),
    ]
    rows = {r.target: r for r in report.summarise(samples, [s.target for s in samples], 1, ("rate",))}
    assert rows["nonstop x2"].ratios["rate"].median == 0.5
    assert rows["backend direct"].ratios["rate"].median == 3.0
    assert rows["haproxy"].ratios["rate"].median == 0.8


def test_a_failed_round_is_left_out_of_medians_and_ratios_and_named():
    samples = [
        _s("nginx", 1, rate=100.0, errors=2), _s("nginx", 2, error="exited with 1"), _s("nginx", 3, rate=100.0, errors=1),
        _s("nonstop", 1, rate=90.0), _s("nonstop", 2, rate=10.0), _s("nonstop", 3, rate=110.0),
    ]
    rows = {r.target: r for r in report.summarise(samples, ["nginx", "nonstop"], 3, ("rate",))}
    assert rows["nginx"].errors == 3 and rows["nginx"].failures == ((2, "exited with 1"),)
    assert rows["nginx"].figures["rate"].values == (100.0, None, 100.0)
    assert rows["nonstop"].ratios["rate"].values == (0.9, None, 1.1)
    text = report.table(list(rows.values()), report.LOAD_COLUMNS)
    assert "nginx: round 2 failed: exited with 1" in text
    assert "† spread crosses 1.0" in text and "nonstop req/s" in text


def test_tables_text_and_markdown():
    samples = [
        _s("nginx", 1, rate=50_000.0, p50_ms=1.0, p99_ms=4.0, proxy_us=16.0, rss_mb=13.0),
        _s("nonstop", 1, rate=45_000.0, p50_ms=1.0, p99_ms=5.0, proxy_us=18.0, rss_mb=28.0),
        _s("haproxy", 1, error="exited with 1: no"),
    ]
    rows = report.summarise(samples, ["nginx", "haproxy", "nonstop"], 1, report.RATIO_METRICS["load"])
    text = report.table(rows, report.LOAD_COLUMNS)
    assert "haproxy  skipped: exited with 1: no" in text
    md = report.table(rows, report.LOAD_COLUMNS, markdown=True)
    lines = md.splitlines()
    assert lines[0].startswith("| target | req/s | p50 ms | p99 ms | errors |") and "proxy RSS MB" in lines[0]
    assert "| nonstop | 45,000 | 1.00 | 5.00 | 0 | 18.0 |" in md
    assert md.count("|", md.index("| haproxy")) >= len(report.LOAD_COLUMNS) + 2  # a full markdown row
    per = report.per_round_table(rows, "load", markdown=True)
    assert "| nonstop | 45,000 · 5.00 ms · ×0.90 · ×1.25 |" in per
    hold = report.summarise([_s("nginx", 1, rss_mb=13.0), _s("nonstop", 1, rss_mb=28.0)], ["nginx", "nonstop"], 1,
                            report.RATIO_METRICS["hold"])
    assert "28.0 MB" in report.per_round_table(hold, "hold")


def test_connection_counts_and_plan():
    assert bench.parse_counts("50,500,2000") == (50, 500, 2000)
    for bad in ("", "50,x", "0", "50,50"):
        with pytest.raises(bench.UsageError, match="--connections"):
            bench.parse_counts(bad)
    assert [t.name for t in bench.targets(2, None)] == [
        "backend direct", "nginx", "haproxy", "nonstop", "nginx x2", "nonstop x2"]
    assert "backend direct" not in [t.name for t in bench.targets(0, None, tls=True)]
    assert [t.name for t in bench.targets(2, {"nginx", "nonstop"})] == ["nginx", "nonstop", "nginx x2", "nonstop x2"]


def test_open_file_limit_is_raised_or_refused_with_the_reason():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert bench.raise_nofile(64) == hard
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(bench.UsageError, match="hard limit"):
            bench.raise_nofile(hard + 1)


def test_pin_text_says_what_multi_worker_rows_get():
    assert "not pinned" in bench.pin_text(False, 2)
    text = bench.pin_text(True, 2)
    assert "core 1" in text and "core 0" in text and "x2 rows run their proxy on cores 0 and 1" in text


def test_record_appends_and_keeps_what_was_there(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text("# old\n\nkept as it was\n")
    monkeypatch.setattr(bench, "RESULTS", results)
    args = bench.parser().parse_args(["--rounds", "2", "--pin"])
    args.argv, args.counts = ["--rounds", "2", "--pin"], (50,)
    env = {"date": "2026-01-01 00:00 UTC", "commit": "abc1234"}
    bench.record("### table", env, args, ["pinning: x"])
    text = results.read_text()
    assert text.startswith("# old\n\nkept as it was\n")
    assert "`bench/proxy.py --rounds 2 --pin`" in text and "--rounds 2" in text and "- pinning: x" in text


# -- real servers -------------------------------------------------------------------------


def test_generated_configs_are_valid_sized_and_tls(tmp_path):
    tls = tlsload.make_cert(tmp_path)
    sizing = backends.Sizing(connections=2000, nofile=8192)
    backend = backends.nginx("backend", tmp_path, 15001, sizing=sizing)
    proxy = backends.nginx("proxy", tmp_path, 15002, workers=2, backend=15001, sizing=sizing)
    secure = backends.nginx("secure", tmp_path, 15003, backend=15001, sizing=sizing, tls=tls)
    for server in (backend, proxy, secure):
        out = subprocess.run([*server.cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    conf = (tmp_path / "proxy.conf").read_text()
    assert "worker_connections 4256;" in conf and "worker_rlimit_nofile 8192;" in conf and "backlog=2048" in conf
    assert "ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:" in (tmp_path / "secure.conf").read_text()
    for name, t in (("haproxy", None), ("haproxy-tls", tls)):
        ha = backends.haproxy(name, tmp_path, 15004, 15001, sizing=sizing, tls=t)
        out = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-f", ha.cmd[-1]],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "maxconn 4096" in Path(ha.cmd[-1]).read_text()


def test_bench_certificate_is_one_nonstop_serves_with_its_key_0600(tmp_path):
    from nonstop.proxy.certs import CertSource, load_pair

    tls = tlsload.make_cert(tmp_path)
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600 and stat.S_IMODE(tls.combined.stat().st_mode) == 0o600
    loaded = load_pair(CertSource("tls", str(tls.cert), str(tls.key)), time.time())
    assert "localhost" in loaded.names


def test_pinned_servers_run_every_thread_on_their_cores(tmp_path):
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.fail("this test needs cores 0 and 1 (the CI machine has 2)")
    backend = backends.nginx("backend", tmp_path, backends.free_port(), cpus={0})
    servers = [backend]
    try:
        backend.start()
        help_text = backends.nonstop_help()
        for name, workers, cpus in (("one", 1, {1}), ("two", 2, {0, 1})):
            s = backends.nonstop(name, tmp_path, backends.free_port(), backend.port, workers=workers,
                                 help_text=help_text, cpus=cpus)
            servers.append(s)
            s.start()
        proxy = backends.nginx("proxy", tmp_path, backends.free_port(), backend=backend.port, cpus={1})
        servers.append(proxy)
        proxy.start()
        for s in servers:
            tree = s.processes()
            assert len(tree) >= (3 if s.name == "two" else 1)
            for p in tree:
                for t in p.threads():
                    assert os.sched_getaffinity(t.id) == s.cpus, (s.name, p.pid, t.id)
        assert os.sched_getaffinity(0) >= {0, 1}  # the test process got its own cores back
    finally:
        for s in servers:
            s.stop()


# -- tiny real runs -----------------------------------------------------------------------


def _run(*flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    before = {p.pid for p in psutil.process_iter()}
    out = subprocess.run([sys.executable, str(BENCH / "proxy.py"), *flags, "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    after = {p.pid for p in psutil.process_iter() if _is_ours(p)}
    assert not (after - before), "bench left processes running"
    data = json.loads(out.stdout[out.stdout.index("\n{") + 1:])
    return out, data


def _is_ours(p: psutil.Process) -> bool:
    try:
        return "nonstop-bench-" in " ".join(p.cmdline()) or "tlsload.py" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def test_a_tiny_real_run_interleaves_rounds_per_connection_count():
    out, data = _run("--only", "direct,nginx,nonstop", "--rounds", "2", "--duration", "1", "--warmup", "1",
                     "--connections", "4,40", "--multi", "0", "--hold", "20")
    assert set(data["samples"]) == {"load 4", "load 40", "hold"}
    for key in ("load 4", "load 40"):
        got = {(s["target"], s["round"]) for s in data["samples"][key] if s["error"] is None}
        assert got == {(t, r) for t in ("backend direct", "nginx", "nonstop") for r in (1, 2)}, key
        rows = {r["target"]: r for r in data["summaries"][key]}
        assert len(rows["nonstop"]["ratios"]["rate"]["values"]) == 2
        assert rows["nonstop"]["figures"]["rss_mb"]["median"] > 1
        assert rows["nonstop"]["figures"]["rate"]["median"] > 0 and rows["nonstop"]["figures"]["p99_ms"]["median"] > 0
    hold = {r["target"]: r for r in data["summaries"]["hold"]}
    assert set(hold) == {"nginx", "nonstop"}  # the backend itself holds nothing for a proxy
    assert hold["nonstop"]["figures"]["rss_mb"]["median"] >= hold["nonstop"]["figures"]["rss_idle_mb"]["median"] > 1
    text = out.stdout
    assert "== HTTP keep-alive, 4 connections" in text and "== HTTP keep-alive, 40 connections" in text
    assert "1: backend direct, nginx, nonstop; 2: nginx, nonstop, backend direct" in text
    assert "per round (rate · p99 · × nginx rate · × nginx p99)" in text
    assert "not pinned" in text


def test_a_tiny_tls_run_with_pin_measures_keepalive_and_full_handshakes():
    out, data = _run("--only", "nginx,nonstop", "--rounds", "1", "--duration", "1", "--warmup", "0",
                     "--connections", "8", "--multi", "0", "--tls", "--pin", "--handshake-threads", "2")
    assert set(data["samples"]) == {"load 8", "handshakes"}
    for key in data["samples"]:
        assert all(s["error"] is None for s in data["samples"][key]), data["samples"][key]
    shakes = {r["target"]: r for r in data["summaries"]["handshakes"]}
    assert shakes["nonstop"]["figures"]["rate"]["median"] > 0
    assert "ratios" in shakes["nonstop"] and "rate" in shakes["nonstop"]["ratios"]
    text = out.stdout
    assert "== HTTPS keep-alive, 8 connections" in text and "== HTTPS new connections: full handshake" in text
    assert "--pin: each 1-worker proxy's whole process tree" in text
    assert "TLS: ECDSA P-256 (self-signed) certificate; negotiated (Python's client): nginx TLSv1.3" in text


def test_bad_flags_are_refused_with_exit_2():
    out = subprocess.run([sys.executable, str(BENCH / "proxy.py"), "--connections", "50,abc"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--connections" in out.stderr


@pytest.mark.parametrize("help_text,workers,expect", [
    ("--workers INTEGER --admin-socket FILE", 2, ["--workers", "2", "--admin-socket"]),
    ("--admin-socket FILE", 1, ["--admin-socket"]),
])
def test_nonstop_command_uses_only_options_it_has(tmp_path, help_text, workers, expect):
    server = backends.nonstop("nonstop", tmp_path, 15010, 15001, workers=workers, help_text=help_text)
    for item in expect:
        assert any(item in part for part in server.cmd)
    assert "--routes-file" not in server.cmd


def test_nonstop_tls_command_serves_https_on_the_port_and_plain_http_elsewhere(tmp_path):
    tls = tlsload.make_cert(tmp_path)
    server = backends.nonstop("nonstop", tmp_path, 15010, 15001, help_text="--tls-listen", tls=tls)
    assert server.tls and "127.0.0.1:15010" == server.cmd[server.cmd.index("--tls-listen") + 1]
    assert server.cmd[server.cmd.index("--listen") + 1] != "127.0.0.1:15010"
    assert server.cmd[server.cmd.index("--tls-key") + 1] == str(tls.key)


def test_nonstop_without_workers_option_is_a_clear_skip(tmp_path):
    with pytest.raises(backends.StartError, match="no --workers"):
        backends.nonstop("nonstop", tmp_path, 15010, 15001, workers=2, help_text="--listen")
