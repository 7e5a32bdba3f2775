"""Canary steps: ``[{weight: 10, analysis: "5m"}, {pause: true}, ...]``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contract.config.errors import ConfigError, unknown_key
from contract.config.types import parse_duration

STEPS_KEY = "portal:canary.steps"
_ANALYSIS_RANGE = (1.0, 86400.0)


@dataclass(frozen=True)
class Step:
    """One canary step: set ``weight`` percent of traffic then analyse for ``analysis_s``;
    or, with ``pause``, wait for a human's ``portalctl release promote``."""

    weight: int | None
    analysis_s: float
    pause: bool = False

    def describe(self) -> str:
        if self.pause:
            return "pause for approval"
        return f"{self.weight}% for {self.analysis_s:g}s"


DEFAULT_STEPS: tuple[Step, ...] = tuple(Step(w, 300.0) for w in (10, 25, 50, 100))


def _keys(raw: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(path, raw, 'expected {weight: N, analysis: "5m"} or {pause: true}')
    for key in raw:
        if key not in allowed:
            raise unknown_key(f"{path}.{key}", raw[key], str(key), allowed)
    return raw


def _analysis(raw: Mapping[str, Any], path: str) -> float:
    value = raw.get("analysis", "5m")
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ConfigError(
            f"{path}.analysis", value, 'expected a duration such as 30, "30s", "5m" or "1h"'
        ) from None
    lo, hi = _ANALYSIS_RANGE
    if not lo <= seconds <= hi:
        raise ConfigError(f"{path}.analysis", value, f"expected a duration from {lo:g}s to {hi:g}s")
    return seconds


def parse_steps(value: Any) -> tuple[Step, ...]:
    """Weights must increase strictly and stay within 0 < weight <= 100."""
    if value is None:
        return DEFAULT_STEPS
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(STEPS_KEY, value, "expected a non-empty list of steps")
    if all(isinstance(s, Step) for s in value):
        return tuple(value)
    steps: list[Step] = []
    last = 0
    for i, raw in enumerate(value):
        path = f"{STEPS_KEY}[{i}]"
        if isinstance(raw, Mapping) and "pause" in raw:
            m = _keys(raw, path, ("pause",))
            if m["pause"] is not True:
                raise ConfigError(
                    f"{path}.pause",
                    m["pause"],
                    "expected true (wait for `portalctl release promote`)",
                )
            steps.append(Step(None, 0.0, pause=True))
            continue
        m = _keys(raw, path, ("weight", "analysis"))
        if "weight" not in m:
            raise ConfigError(path, raw, 'expected {weight: N, analysis: "5m"} or {pause: true}')
        weight = m["weight"]
        if isinstance(weight, float) and weight.is_integer():
            weight = int(weight)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= 100:
            raise ConfigError(f"{path}.weight", weight, "not a percentage (0 < weight <= 100)")
        if weight <= last:
            raise ConfigError(
                f"{path}.weight",
                weight,
                f"weights must increase from step to step (previous was {last})",
            )
        last = weight
        steps.append(Step(weight, _analysis(m, path)))
    if all(s.pause for s in steps):
        raise ConfigError(STEPS_KEY, value, "expected at least one weight step")
    return tuple(steps)
