"""The release gates: pure functions from measurements to a verdict. No I/O here.

Each analysis window ends with one verdict: PASS, FAIL, INSUFFICIENT_DATA or PROVIDER_ERROR
(the last one is produced by the engine when Prometheus does not answer).

Metrics gate. The canary fails when its error rate is above the lower of two limits: the SLO's
absolute ``max_error_rate`` and stable's own rate (same window) plus ``max_error_rate_increase``
- so a canary clearly worse than stable fails even under the SLO. Latency likewise: p95 above
``max_p95_ms``, or above both ``max_p95_ratio`` x stable's p95 and stable's p95 plus
``min_p95_increase_ms`` (the noise floor for fast services).

Two moments of judgement:
- mid-window, after every check interval: FAIL only when the evidence is statistically sure
  (the lower end of a one-sided Wilson interval at ``confidence`` is above the limit), so a 20%
  error canary fails after one or two intervals, while a healthy canary with a few random
  errors at low traffic is not rolled back by noise;
- at the end of the window: the plain comparison of the measured values with the limits.
Below ``min_requests`` canary requests there is no metrics verdict: INSUFFICIENT_DATA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

from components.alerts import EXCLUDED_ROUTES  # probes and scrapes: the alerts skip them too
from components.config import CanaryConfig, Slo
from rollout.target import HealthProbe

Verdict = Literal["PASS", "FAIL", "INSUFFICIENT_DATA", "PROVIDER_ERROR"]


LATENCY_EARLY_MARGIN = 1.25
"""Mid-window, p95 must exceed its limit by this factor to fail (a histogram p95 over a few
seconds is noisy); at the end of the window the plain limit applies."""


@dataclass(frozen=True)
class WindowSample:
    """Counts over the analysis window so far, per track."""

    canary_requests: float
    canary_errors: float
    stable_requests: float
    stable_errors: float
    canary_p95_ms: float | None
    stable_p95_ms: float | None

    @property
    def canary_error_rate(self) -> float | None:
        return self.canary_errors / self.canary_requests if self.canary_requests > 0 else None

    @property
    def stable_error_rate(self) -> float | None:
        return self.stable_errors / self.stable_requests if self.stable_requests > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "canary_error_rate": self.canary_error_rate,
            "stable_error_rate": self.stable_error_rate,
        }


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    value: float | None
    threshold: float | None
    baseline: float | None
    query: str
    detail: str


@dataclass(frozen=True)
class GateResult:
    gate: str
    """``health`` or ``metrics``."""
    verdict: Verdict
    checks: tuple[Check, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "verdict": self.verdict,
            "reason": self.reason,
            "checks": [asdict(c) for c in self.checks],
        }

    def failing(self) -> Check | None:
        return next((c for c in self.checks if c.verdict == "FAIL"), None)


# ------------------------------------------------------------------------------------ queries


def selector(track: str, version: str | None, extra: str = "") -> str:
    """The label matchers of one track's user traffic (``extra``: more matchers)."""
    parts = [f'track="{track}"', f'route!~"{EXCLUDED_ROUTES}"']
    if version:
        parts.insert(1, f'version="{version}"')
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def queries(canary_version: str, range_s: float) -> dict[str, str]:
    """The PromQL of one check round, over the last ``range_s`` seconds."""
    r = f"{max(1, math.ceil(range_s))}s"
    out: dict[str, str] = {}
    for track, version in (("canary", canary_version), ("stable", None)):
        sel = selector(track, version)
        err = selector(track, version, 'status=~"5.."')
        out[f"{track}_requests"] = f"sum(increase(http_requests_total{sel}[{r}]))"
        out[f"{track}_errors"] = f"sum(increase(http_requests_total{err}[{r}]))"
        out[f"{track}_p95_ms"] = (
            "1000 * histogram_quantile(0.95, sum by (le) "
            f"(increase(http_request_duration_seconds_bucket{sel}[{r}])))"
        )
    return out


# ------------------------------------------------------------------------------ statistics


def wilson_lower(errors: float, n: float, confidence: float) -> float:
    """Lower end of the one-sided Wilson score interval for the error proportion."""
    if n <= 0:
        return 0.0
    z = NormalDist().inv_cdf(confidence)
    p = min(1.0, max(0.0, errors / n))
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


def error_limit(sample: WindowSample, canary: CanaryConfig, slo: Slo) -> tuple[float, str]:
    """The error rate the canary may not exceed, and where that limit comes from."""
    stable = sample.stable_error_rate
    if stable is not None and stable + canary.max_error_rate_increase < slo.max_error_rate:
        return stable + canary.max_error_rate_increase, "stable + maxErrorRateIncrease"
    return slo.max_error_rate, "slo.maxErrorRate"


def latency_limit(sample: WindowSample, canary: CanaryConfig, slo: Slo) -> tuple[float, str]:
    """The p95 (ms) the canary may not exceed, and where that limit comes from."""
    stable = sample.stable_p95_ms
    if stable is not None and stable > 0:
        relative = max(stable * canary.max_p95_ratio, stable + canary.min_p95_increase_ms)
        if relative < slo.max_p95_ms:
            return relative, "stable p95 x maxP95Ratio (and + minP95IncreaseMs)"
    return slo.max_p95_ms, "slo.maxP95Ms"


# ------------------------------------------------------------------------------------ gates


def judge_metrics(
    sample: WindowSample,
    canary: CanaryConfig,
    slo: Slo,
    *,
    elapsed_s: float,
    window_s: float,
    queries: Mapping[str, str] | None = None,
) -> GateResult:
    """The metrics verdict for the window so far (``elapsed_s`` of ``window_s``)."""
    q = dict(queries or {})
    final = elapsed_s >= window_s
    n = sample.canary_requests
    if n < canary.min_requests:
        check = Check(
            "requests",
            "INSUFFICIENT_DATA",
            n,
            float(canary.min_requests),
            None,
            q.get("canary_requests", ""),
            f"{n:.0f} canary requests, fewer than minRequests {canary.min_requests}",
        )
        return GateResult("metrics", "INSUFFICIENT_DATA", (check,), check.detail)

    rate = sample.canary_error_rate or 0.0
    limit, source = error_limit(sample, canary, slo)
    if final:
        bad = rate > limit
        how = "over" if bad else "within"
    else:
        lower = wilson_lower(sample.canary_errors, n, canary.confidence)
        bad = lower > limit
        how = (
            f"surely over (lower bound {lower:.2%} at {canary.confidence:g})"
            if bad
            else "not surely over"
        )
    errors = Check(
        "error_rate",
        "FAIL" if bad else "PASS",
        rate,
        limit,
        sample.stable_error_rate,
        q.get("canary_errors", ""),
        f"canary error rate {rate:.2%} ({sample.canary_errors:.0f}/{n:.0f}) {how} the limit "
        f"{limit:.2%} ({source}); stable {_pct(sample.stable_error_rate)}",
    )

    p95 = sample.canary_p95_ms
    if p95 is None:
        latency = Check(
            "p95_latency",
            "INSUFFICIENT_DATA",
            None,
            None,
            sample.stable_p95_ms,
            q.get("canary_p95_ms", ""),
            "no canary latency histogram in the window",
        )
    else:
        lat_limit, lat_source = latency_limit(sample, canary, slo)
        margin = 1.0 if final else LATENCY_EARLY_MARGIN
        slow = p95 > lat_limit * margin
        latency = Check(
            "p95_latency",
            "FAIL" if slow else "PASS",
            p95,
            lat_limit,
            sample.stable_p95_ms,
            q.get("canary_p95_ms", ""),
            f"canary p95 {p95:.0f} ms {'over' if slow else 'within'} the limit {lat_limit:.0f} ms"
            f" ({lat_source}{'' if final else f', x{margin:g} mid-window'}); stable "
            + (f"{sample.stable_p95_ms:.0f} ms" if sample.stable_p95_ms is not None else "n/a"),
        )
    checks = (errors, latency)
    failing = next((c for c in checks if c.verdict == "FAIL"), None)
    if failing is not None:
        return GateResult("metrics", "FAIL", checks, failing.detail)
    return GateResult("metrics", "PASS", checks, "; ".join(c.detail for c in checks))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def judge_health(
    probes: Sequence[HealthProbe],
    consecutive_failures: Mapping[str, int],
    canary: CanaryConfig,
) -> GateResult:
    """FAIL when no canary instance exists or one failed ``health_failures`` probes in a row.

    ``consecutive_failures`` is the caller's count per instance including this round.
    """
    if not probes:
        check = Check("health", "FAIL", 0, None, None, "", "no canary instance is running")
        return GateResult("health", "FAIL", (check,), check.detail)
    checks = []
    for p in probes:
        streak = consecutive_failures.get(p.instance, 0)
        failed = not p.ok and streak >= canary.health_failures
        detail = f"{p.instance}: {p.detail}"
        if not p.ok:
            detail += f" ({streak} in a row, fails at {canary.health_failures})"
        checks.append(
            Check(
                f"health:{p.instance}",
                "FAIL" if failed else "PASS",
                float(streak),
                float(canary.health_failures),
                None,
                "GET /api/health/advanced",
                detail,
            )
        )
    failing = next((c for c in checks if c.verdict == "FAIL"), None)
    if failing is not None:
        return GateResult("health", "FAIL", tuple(checks), failing.detail)
    return GateResult(
        "health",
        "PASS",
        tuple(checks),
        f"{sum(p.ok for p in probes)}/{len(probes)} canary instances healthy",
    )
