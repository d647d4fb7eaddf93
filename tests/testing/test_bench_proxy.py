"""bench/proxy.py's harness: configs the real servers accept, the table and ratios, one tiny real run."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# bench/ is scripts, not a package: load by path (tests/proxy has a `backends` module of its own)
backends = _load("backend_servers", ROOT / "bench" / "backend_servers.py")
bench = _load("bench_proxy", ROOT / "bench" / "proxy.py")


def test_generated_nginx_and_haproxy_configs_are_valid(tmp_path):
    backend = backends.nginx("backend", tmp_path, 18001)
    proxy = backends.nginx("proxy", tmp_path, 18002, workers=2, backend=18001)
    for server in (backend, proxy):
        out = subprocess.run([*server.cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    ha = backends.haproxy("haproxy", tmp_path, 18003, 18001)
    out = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-f", ha.cmd[-1]],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_table_ratios_use_nginx_with_the_same_worker_count():
    rows = [
        bench.Row("nginx", 1, rps=50_000, p50_ms=1, p99_ms=4, proxy_us=16, backend_us=10),
        bench.Row("nonstop", 1, rps=45_000, p50_ms=1, p99_ms=5, proxy_us=18, backend_us=10),
        bench.Row("nginx x2", 2, rps=80_000, p50_ms=1, p99_ms=4, proxy_us=16, backend_us=10),
        bench.Row("nonstop x2", 2, rps=40_000, p50_ms=1, p99_ms=8, proxy_us=18, backend_us=10),
        bench.Row("haproxy", 1, error="exited with 1: no"),
    ]
    r = bench.ratios(rows)
    assert r["nonstop"] == (0.9, 1.25)
    assert r["nonstop x2"] == (0.5, 2.0)
    assert r["haproxy"] == (None, None)
    text = bench.table(rows)
    assert "haproxy" in text and "skipped: exited with 1: no" in text
    md = bench.table(rows, markdown=True)
    assert md.splitlines()[0].startswith("| target | req/s")
    assert "| 45,000 |" in md


def test_median_row_keeps_one_real_run():
    runs = [bench.Row("x", 1, rps=r, p99_ms=r / 1000) for r in (30_000, 10_000, 20_000)]
    mid = bench.median_row(runs)
    assert (mid.rps, mid.p99_ms, mid.rps_runs) == (20_000, 20.0, (10_000, 20_000, 30_000))


def test_a_tiny_real_run_measures_and_leaves_no_process_behind(tmp_path):
    before = {p.pid for p in psutil.process_iter()}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "proxy.py"), "--only", "direct,nginx",
                          "--duration", "1", "--warmup", "1", "--connections", "4", "--multi", "0", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backend direct" in out.stdout and "nginx" in out.stdout
    after = {p.pid for p in psutil.process_iter() if _is_ours(p)}
    assert not (after - before), "bench left processes running"


def _is_ours(p: psutil.Process) -> bool:
    try:
        return "nonstop-bench-" in " ".join(p.cmdline())
    except psutil.Error:
        return False


@pytest.mark.parametrize("help_text,workers,expect", [
    ("--workers INTEGER --admin-socket FILE", 2, ["--workers", "2", "--admin-socket"]),
    ("--admin-socket FILE", 1, ["--admin-socket"]),
])
def test_nonstop_command_uses_only_options_it_has(tmp_path, help_text, workers, expect):
    server = backends.nonstop("nonstop", tmp_path, 18010, 18001, workers=workers, help_text=help_text)
    for item in expect:
        assert any(item in part for part in server.cmd)
    assert "--routes-file" not in server.cmd


def test_nonstop_without_workers_option_is_a_clear_skip(tmp_path):
    with pytest.raises(backends.StartError, match="no --workers"):
        backends.nonstop("nonstop", tmp_path, 18010, 18001, workers=2, help_text="--listen")
