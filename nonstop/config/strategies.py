"""The ``strategy`` block: one model per strategy (recreate, blue-green, canary, rolling), told apart by ``type``;
canary steps, the canary's match and split key, and the rolling counts (``2`` or ``25%``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, field_validator, model_validator

from nonstop.config.analysis import CanaryAnalysis, RollingAnalysis, WatchAnalysis
from nonstop.config.fields import Command, Duration, _Model
from nonstop.durations import parse_duration
from nonstop.names import STRATEGIES


class Step(_Model):
    weight: int | None = Field(None, ge=0, le=100)
    pause: Duration | Literal["manual"] | None = None

    @field_validator("pause", mode="before")
    @classmethod
    def _pause(cls, v: Any) -> Any:
        if v == "manual" or v is None:
            return v
        return parse_duration(v)

    @model_validator(mode="after")
    def _something(self) -> "Step":
        if self.weight is None and self.pause is None:
            raise ValueError("a step needs a weight, a pause, or both")
        return self


class MatchConfig(_Model):
    header: dict[str, str] = Field(default_factory=dict)
    cookie: dict[str, str] = Field(default_factory=dict)


class RecreateStrategy(_Model):
    type: Literal["recreate"]


class BlueGreenStrategy(_Model):
    type: Literal["blue-green"]
    smoke: Command | None = None
    shell: bool = False
    keep_previous: Duration = 600.0
    auto_promote: bool = True
    analysis: WatchAnalysis | None = None


class SplitKey(_Model):
    """The app's own user key for the canary split (a cookie or a header), hashed into a bucket."""

    cookie: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")

    @model_validator(mode="after")
    def _one(self) -> "SplitKey":
        if (self.cookie is None) == (self.header is None):
            raise ValueError("strategy.split_key: name exactly one of cookie or header")
        return self


class CanaryStrategy(_Model):
    type: Literal["canary"]
    steps: list[Step] = Field(
        default_factory=lambda: [Step(weight=10, pause=30.0), Step(weight=50, pause=60.0)], min_length=1
    )
    sticky: bool | Literal["client_ip"] = True
    split_key: SplitKey | None = None
    match: MatchConfig | None = None
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)


def _count_or_percent(v: Any) -> Any:
    if isinstance(v, str):
        s = v.strip()
        if s.endswith("%") and s[:-1].strip().isdigit() and 0 <= int(s[:-1]) <= 100:
            return s.replace(" ", "")
        if s.isdigit():
            return int(s)
        raise ValueError(f"expected a number or a percentage like 25%; got {v!r}")
    return v


CountOrPercent = Annotated[Union[int, str], BeforeValidator(_count_or_percent)]


def resolve_count(value: int | str, total: int, *, round_up: bool) -> int:
    """Kubernetes semantics: percentages of ``total``; surge rounds up, unavailable rounds down."""
    if isinstance(value, int):
        return value
    pct = int(value.rstrip("%"))
    n = total * pct / 100
    return int(-(-n // 1)) if round_up else int(n // 1)


class RollingStrategy(_Model):
    type: Literal["rolling"]
    max_surge: CountOrPercent = 1
    max_unavailable: CountOrPercent = 0
    analysis: RollingAnalysis | None = None

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _non_negative(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must not be negative")
        return v


STRATEGY_BLOCKS = {"recreate": RecreateStrategy, "blue-green": BlueGreenStrategy, "canary": CanaryStrategy, "rolling": RollingStrategy}
assert tuple(STRATEGY_BLOCKS) == STRATEGIES, "nonstop.names.STRATEGIES and the strategy blocks disagree"
Strategy = Annotated[
    Union[RecreateStrategy, BlueGreenStrategy, CanaryStrategy, RollingStrategy],
    Field(discriminator="type"),
]
