"""The ``notify`` block: one webhook each entry, and which events it is sent."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nonstop.config.fields import Duration, _Model


class NotifyConfig(_Model):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    events: list[Literal["start", "step", "success", "failure", "rollback", "certificate"]] | None = None
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v
