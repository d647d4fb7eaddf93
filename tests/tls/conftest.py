"""Fixtures of the TLS tests."""

from __future__ import annotations

import pytest
import trustme


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A test CA the clients trust."""
    return trustme.CA()
