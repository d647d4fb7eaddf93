"""What a rollout watches: the canary's analysis (vs. the stable release) and the watch after a switch
(vs. the previous release's own baseline), with ``Limit``, the threshold type the latter is written in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable

from pydantic import BeforeValidator, Field

from nonstop.config.fields import Duration, _Model
from nonstop.durations import parse_duration


class AnalysisConfig(_Model):
    interval: Duration = 5.0
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99: Duration | None = None
    max_error_rate_vs_stable: float | None = Field(
        None, ge=0, description="canary error rate may be at most this many times the stable one (plus max_error_rate)"
    )
    max_p99_vs_stable: float | None = Field(None, ge=0, description="canary p99 may be at most this many times the stable one")
    min_requests: int = Field(50, ge=1)
    failure_limit: int = Field(2, ge=1)


class CanaryAnalysis(AnalysisConfig):
    progress_deadline: Duration = Field(
        600.0, description="a step whose analysis is still inconclusive after this fails the rollout (rolled back, exit 1)"
    )


@dataclass(frozen=True)
class Limit:
    """A threshold: absolute, or relative to the previous release's own figure just before the switch
    (the baseline): ``factor * baseline + value``. Written ``0.01``, ``1%``, ``800ms``,
    ``baseline + 0.01``, ``baseline * 2``, ``baseline * 1.5 + 100ms``."""

    value: float
    factor: float | None = None  # None: absolute

    @property
    def relative(self) -> bool:
        return self.factor is not None

    def resolve(self, baseline: float | None) -> float:
        """The limit in effect; a relative limit without a baseline (nothing to compare with) is its margin alone."""
        if self.factor is None:
            return self.value
        return self.factor * (baseline or 0.0) + self.value

    def words(self, fmt: Callable[[float], str]) -> str:
        if self.factor is None:
            return fmt(self.value)
        times = "" if self.factor == 1 else f" × {self.factor:g}"
        plus = f" + {fmt(self.value)}" if self.value else ""
        return f"baseline{times}{plus}"


_LIMIT = re.compile(r"^\s*baseline\s*(?:[*×]\s*(?P<factor>\d+(?:\.\d+)?)\s*)?(?:\+\s*(?P<plus>\S+)\s*)?$")


def _rate(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"expected a rate like 0.01 or 1%; got {v!r}")
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            x = float(v.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"expected a rate like 0.01 or 1%; got {v!r}") from None
    else:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"expected a rate like 0.01 or 1%, or baseline + 0.01; got {v!r}") from None
    if not 0 <= x <= 1:
        raise ValueError(f"a rate is within 0..1 (0%..100%); got {v!r}")
    return x


def _limit_parser(unit: Callable[[Any], float]) -> Callable[[Any], Limit]:
    def parse(v: Any) -> Limit:
        if isinstance(v, Limit):
            return v
        if isinstance(v, str) and "baseline" in v:
            m = _LIMIT.match(v)
            if not m:
                raise ValueError(f"expected baseline, baseline + X, baseline * K or baseline * K + X; got {v!r}")
            factor = float(m.group("factor")) if m.group("factor") else 1.0
            return Limit(unit(m.group("plus")) if m.group("plus") else 0.0, factor)
        return Limit(unit(v))

    return parse


RateLimit = Annotated[Limit, BeforeValidator(_limit_parser(_rate))]
"""A 5xx share: ``0.01``, ``1%``, or relative to the baseline (``baseline + 0.01``)."""
LatencyLimit = Annotated[Limit, BeforeValidator(_limit_parser(parse_duration))]
"""A latency: ``800ms``, or relative to the baseline (``baseline * 1.5``, ``baseline + 100ms``)."""


class WatchAnalysis(_Model):
    """Watching a release after it took traffic (blue-green after the switch; rolling after each batch)."""

    watch: Duration = Field(120.0, description="how long the new release is watched; a breach within it rolls back")
    interval: Duration = 5.0
    max_error_rate: RateLimit = Field(default_factory=lambda: Limit(0.01))
    max_p99: LatencyLimit | None = None
    min_requests: int = Field(50, ge=1)
    failure_limit: int = Field(2, ge=1)
    baseline: Duration = Field(
        60.0, description="the previous release's figures over this long before the switch are the baseline"
    )


class RollingAnalysis(WatchAnalysis):
    watch: Duration = Field(30.0, description="how long each batch's new instances are watched before the next batch")
