"""The hot path is compiled where a C compiler is (CI: always), and the switch back to Python works."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nonstop.proxy import build

ROOT = Path(__file__).resolve().parents[2]


def test_the_compiled_modules_are_the_ones_with_a_pxd():
    assert build.compiled_modules() == ["downstream", "exchange", "fastpath", "http", "pool", "state", "stats", "upstream"]


@pytest.mark.skipif(bool(os.environ.get(build.PURE_ENV)), reason="this run tests the Python fallback on purpose")
def test_every_hot_path_module_runs_compiled_where_a_compiler_is():
    # a silent compile failure (setup.py tolerates one) must not pass for a working build
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if subprocess.run(["sh", "-c", f"command -v {cc}"], capture_output=True).returncode != 0:
        pytest.skip(f"no C compiler ({cc}): the Python fallback is what runs here")
    import nonstop.proxy.downstream  # noqa: F401  (import them all)

    assert build.report() == {name: "compiled" for name in build.compiled_modules()}
    assert build.summary() == "compiled (Cython)"


def test_the_pure_python_switch_imports_the_sources():
    code = ("import nonstop.proxy.downstream as d, nonstop.proxy.stats as s; from nonstop.proxy import build; "
            "print(d.__file__); print(s.__file__); print(build.summary())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=dict(os.environ, **{build.PURE_ENV: "1"}), check=True).stdout.splitlines()
    assert out[0].endswith("nonstop/proxy/downstream.py") and out[1].endswith("nonstop/proxy/stats.py")
    assert out[2] == f"Python ({build.PURE_ENV})"
