"""The ``dashboard`` block: where the dashboard and ``/metrics`` listen."""

from __future__ import annotations

from pydantic import field_validator

from nonstop.config.fields import _Model, _addr


class DashboardConfig(_Model):
    listen: str = "127.0.0.1:9900"
    enabled: bool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        _addr(v, "dashboard.listen")
        return v
