"""Refuse to test a stale build: a compiled proxy module older than its source would run old code."""

from __future__ import annotations

import pytest


def pytest_configure(config) -> None:
    from nonstop.proxy import build

    stale = [name for name, kind in build.report().items() if kind == "stale"]
    if stale:
        pytest.exit(
            f"the compiled proxy modules {', '.join(stale)} are older than their source: "
            "run scripts/setup.sh (or .venv/bin/python setup.py build_ext --inplace)",
            returncode=2,
        )
