"""Shared fixtures for the proxy tests: the package on sys.path, a short temp dir for sockets."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


@pytest.fixture
def sockdir():
    """A short directory under /tmp (Unix socket paths are limited to ~107 bytes)."""
    d = tempfile.mkdtemp(prefix="nsp-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)
