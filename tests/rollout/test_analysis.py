"""The gates' judgement, as a table: what a platform engineer relies on when a canary runs."""

from __future__ import annotations

import pytest

from rollout.analysis import (
    WindowSample,
    error_limit,
    judge_health,
    judge_metrics,
    queries,
    wilson_lower,
)
from rollout.local.stack import local_config
from rollout.target import HealthProbe

CFG = local_config()  # slo 2% / 500 ms, minRequests 20, +1% over stable, p95 x1.5 and +50 ms


def sample(cr=200, ce=0, sr=2000, se=0, cp=20.0, sp=20.0):
    return WindowSample(cr, ce, sr, se, cp, sp)


def judge(s, elapsed=4.0, window=15.0):
    return judge_metrics(s, CFG.canary, CFG.slo, elapsed_s=elapsed, window_s=window)


@pytest.mark.parametrize(
    ("s", "elapsed", "verdict", "check"),
    [
        (sample(cr=10), 4, "INSUFFICIENT_DATA", "requests"),
        (sample(cr=0), 15, "INSUFFICIENT_DATA", "requests"),
        (sample(), 15, "PASS", None),
        # 20% errors on 30 requests: statistically sure after one interval
        (sample(cr=30, ce=6), 2, "FAIL", "error_rate"),
        # 1 error in 40 (2.5%) mid-window: over the limit but not surely -> keep watching
        (sample(cr=40, ce=1), 4, "PASS", None),
        # ...the same at the end of the window is a plain comparison: FAIL
        (sample(cr=40, ce=1), 15, "FAIL", "error_rate"),
        # under the SLO (2%) but clearly worse than stable (0% + 1%): FAIL at the end
        (sample(cr=1000, ce=15), 15, "FAIL", "error_rate"),
        # stable itself at 1.5%: the canary at 1.8% is within both limits
        (sample(cr=1000, ce=18, se=30), 15, "PASS", None),
        # +300 ms on a 20 ms service fails mid-window
        (sample(cp=320), 4, "FAIL", "p95_latency"),
        # +40 ms is under the 50 ms noise floor: PASS
        (sample(cp=60), 15, "PASS", None),
        # over the absolute SLO even when stable is as slow
        (sample(cp=700, sp=650), 15, "FAIL", "p95_latency"),
    ],
)
def test_metrics_gate_verdicts(s, elapsed, verdict, check):
    result = judge(s, elapsed)
    assert result.verdict == verdict, result.reason
    if check:
        assert result.checks[0].name == check or result.failing().name == check


def test_a_failing_verdict_carries_its_query_values_and_limit():
    q = queries("3.0.0", 10)
    result = judge_metrics(
        sample(cr=100, ce=30), CFG.canary, CFG.slo, elapsed_s=5, window_s=15, queries=q
    )
    failing = result.failing()
    assert failing is not None and failing.name == "error_rate"
    assert failing.value == pytest.approx(0.3)
    assert failing.threshold == pytest.approx(0.01)
    assert failing.baseline == 0
    assert 'version="3.0.0"' in failing.query and 'status=~"5.."' in failing.query
    assert "30/100" in result.reason


def test_queries_exclude_probes_and_scrapes_and_separate_tracks():
    q = queries("2.0.0", 7.2)
    assert set(q) == {
        f"{t}_{m}" for t in ("canary", "stable") for m in ("requests", "errors", "p95_ms")
    }
    assert all('route!~"/api/health.*|/metrics"' in v for v in q.values())
    assert 'track="canary",version="2.0.0"' in q["canary_requests"]
    assert "version" not in q["stable_requests"]
    assert "[8s]" in q["canary_p95_ms"]


def test_wilson_lower_bound_is_below_the_observed_rate_and_tightens_with_traffic():
    assert wilson_lower(0, 100, 0.99) == 0
    assert wilson_lower(5, 100, 0.99) < 0.05
    assert wilson_lower(50, 1000, 0.99) > wilson_lower(5, 100, 0.99)


def test_no_false_failure_from_random_errors_at_the_healthy_rate():
    # 0.5% errors, observed round by round at low traffic: never a mid-window FAIL
    for n in range(20, 400, 10):
        errors = round(n * 0.005) + 1  # even one error more than expected
        assert judge(sample(cr=n, ce=errors), elapsed=4).verdict != "FAIL", n


def test_error_limit_is_the_lower_of_slo_and_stable_plus_margin():
    assert error_limit(sample(), CFG.canary, CFG.slo)[0] == pytest.approx(0.01)
    assert error_limit(sample(se=40), CFG.canary, CFG.slo)[0] == pytest.approx(0.02)


def probe(name, ok):
    return HealthProbe(
        name,
        ok,
        200 if ok else 503,
        "healthy" if ok else "unhealthy",
        "healthy" if ok else "HTTP 503",
    )


def test_health_gate_fails_after_consecutive_failures_only():
    probes = [probe("c1", True), probe("c2", False)]
    assert judge_health(probes, {"c2": 1}, CFG.canary).verdict == "PASS"
    result = judge_health(probes, {"c2": CFG.canary.health_failures}, CFG.canary)
    assert result.verdict == "FAIL" and "c2" in result.reason


def test_health_gate_fails_when_no_canary_instance_runs():
    result = judge_health([], {}, CFG.canary)
    assert result.verdict == "FAIL" and "no canary instance" in result.reason
