"""The gates' judgement, as a table: what a platform engineer relies on when a canary runs.

Histories are built the way the engine reads Prometheus: cumulative counters per track at the
window's start and at every check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rollout.analysis import judge_health, judge_metrics
from rollout.evidence import error_test
from rollout.local.stack import local_config
from rollout.ports import HealthProbe
from rollout.readings import (
    MetricsSample,
    Snapshot,
    TrackCounts,
    intervals,
    queries,
    snapshots_of,
    track_counts,
)
from tests.conftest import local_config_with

CFG = local_config()  # slo 2% / 500 ms, minRequests 20, +1% over stable, p95 x1.5 and +50 ms
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)


def counts(requests, errors, latency_s=0.02):
    """Cumulative counters of a track whose every request took ``latency_s``."""
    buckets = tuple((b, requests if latency_s <= b else 0.0) for b in BOUNDS)
    return TrackCounts(requests, errors, (*buckets, (math.inf, requests)))


def history(rounds, *, canary_ms=20.0, stable_ms=20.0, steps=1, stable_start=5000):
    """``rounds``: per check interval (canary requests, canary errors, stable requests, stable
    errors); spread over ``steps`` equal steps, each opened by a window-start reading."""
    out = []
    c = [0.0, 0.0]
    s = [float(stable_start), 0.0]
    per_step = math.ceil(len(rounds) / steps)
    t = 0.0
    for i, (cr, ce, sr, se) in enumerate(rounds):
        step = i // per_step
        if i % per_step == 0:
            out.append(snap(t, step, c, s, canary_ms, stable_ms, opens=True))
        t += 2.0
        c = [c[0] + cr, c[1] + ce]
        s = [s[0] + sr, s[1] + se]
        out.append(snap(t, step, c, s, canary_ms, stable_ms))
    return out


def snap(t, step, c, s, canary_ms, stable_ms, opens=False):
    return Snapshot(
        t,
        step,
        counts(c[0], c[1], canary_ms / 1000),
        counts(s[0], s[1], stable_ms / 1000),
        opens,
    )


def judge(h, canary=CFG.canary):
    result, _window, _stats = judge_metrics(h, canary, CFG.slo)
    return result


@pytest.mark.parametrize(
    ("rounds", "kwargs", "verdict", "check"),
    [
        # no canary traffic yet: nothing to judge
        ([(0, 0, 200, 0)], {}, "INSUFFICIENT_DATA", "requests"),
        # under the floor of minRequests: a clean canary cannot PASS yet
        ([(10, 0, 90, 0)], {}, "INSUFFICIENT_DATA", "requests"),
        ([(30, 0, 270, 0)] * 3, {}, "PASS", None),
        # 20% errors on 30 requests: surely over after the first interval
        ([(30, 6, 270, 0)], {}, "FAIL", "error_rate"),
        # ...even below the floor: a FAIL needs no minimum
        ([(15, 5, 135, 0)], {}, "FAIL", "error_rate"),
        # 1 error in 40 (2.5%) is not evidence of anything, however often it is looked at
        ([(40, 1, 360, 0)], {}, "PASS", None),
        ([(40, 1, 360, 0)] * 8, {}, "PASS", None),
        # 5% errors against a stable at 0.5%: surely more than the 1% margin, given traffic
        ([(100, 5, 900, 4)] * 20, {}, "FAIL", "error_rate"),
        # 1.8% against a stable at 1.5%: within the margin and under the SLO, for ever
        ([(1000, 18, 9000, 135)] * 20, {}, "PASS", None),
        # +300 ms on a 20 ms service fails at the first check
        ([(40, 0, 360, 0)], {"canary_ms": 320}, "FAIL", "p95_latency"),
        # +40 ms is under the 50 ms noise floor
        ([(100, 0, 900, 0)] * 10, {"canary_ms": 60}, "PASS", None),
        # over the absolute SLO even when stable is as slow
        ([(100, 0, 900, 0)] * 3, {"canary_ms": 700, "stable_ms": 650}, "FAIL", "p95_latency"),
    ],
)
def test_metrics_gate_verdicts(rounds, kwargs, verdict, check):
    result = judge(history(rounds, **kwargs))
    assert result.verdict == verdict, result.reason
    if check:
        names = {c.name for c in result.checks if c.verdict == verdict}
        assert check in names, result.reason


def test_a_healthy_canary_at_low_traffic_with_background_errors_is_not_rolled_back():
    # 5 req/s canary, 0.5% background errors on both tracks, checks every 2 s over a release of
    # four steps: even with two unlucky errors in its first 10 requests, no FAIL
    rounds = [(10, 2, 90, 0)] + [(10, 0, 90, 1)] * 60
    for n in range(1, len(rounds) + 1):
        assert judge(history(rounds[:n], steps=4)).verdict != "FAIL", n


def test_twenty_percent_errors_fail_within_thirty_requests_at_low_traffic():
    # 5 req/s, a check every 2 s: six errors in thirty requests are enough
    verdicts = [judge(history([(10, 2, 90, 0)] * k)).verdict for k in (1, 2, 3)]
    assert verdicts[:2] != ["FAIL", "FAIL"] and verdicts[2] == "FAIL", verdicts
    result = judge(history([(10, 2, 90, 0)] * 3))
    assert result.failing().name == "error_rate", result.reason


def test_evidence_keeps_growing_across_steps():
    # 4% errors against a clean stable: not sure within one step at this traffic, sure over two
    rounds = [(50, 2, 450, 0)] * 16
    first_step = history(rounds[:8])
    assert judge(first_step).verdict != "FAIL"
    both = history(rounds, steps=2)
    assert judge(both).verdict == "FAIL"
    iv = intervals(both)
    assert len(iv.canary) == 16  # window starts are references, not intervals
    assert iv.window_canary[0] == 8 * 50  # the floor counts this step's window only


def test_an_interval_where_a_counter_went_backwards_carries_no_evidence():
    h = history([(30, 0, 270, 0)] * 2)
    restarted = Snapshot(h[-1].at + 2, 0, counts(5, 5), h[-1].stable)  # canary restarted
    iv = intervals([*h, restarted])
    assert len(iv.canary) == 2
    assert iv.canary[:, 1].sum() == 0


def test_a_failing_verdict_carries_its_query_values_limit_evalue_and_sequence():
    q = queries("3.0.0")
    h = history([(100, 30, 900, 0)])
    result, window, stats = judge_metrics(h, CFG.canary, CFG.slo, queries=q)
    failing = result.failing()
    assert failing is not None and failing.name == "error_rate"
    assert failing.value == pytest.approx(0.3)
    assert failing.threshold == pytest.approx(0.01)  # stable 0% + the 1% margin
    assert failing.baseline == 0
    assert failing.needed == 400
    assert failing.evalue is not None and failing.evalue >= failing.needed
    assert failing.cs is not None
    lo, hi = failing.cs
    assert lo is not None and hi is not None and 0.01 < lo < 0.3 < hi
    assert 'version="3.0.0"' in failing.query and 'status=~"5.."' in failing.query
    assert "30/100" in result.reason
    assert window["canary_error_rate"] == pytest.approx(0.3)
    assert stats["error_rate"]["cs"] == [lo, hi]
    stored = MetricsSample(tuple(h), window, stats).to_dict()
    assert stored["stats"]["error_rate"]["cs"] == [
        pytest.approx(lo, rel=1e-5),
        pytest.approx(hi, rel=1e-5),
    ]
    assert float(stats["level"]) == 400


def test_readings_round_trip_through_the_ledger():
    h = history([(30, 1, 270, 0)] * 2, canary_ms=60)
    samples = [{"snapshots": [s.to_dict() for s in h[:2]]}, {"snapshots": [h[2].to_dict()]}]
    assert snapshots_of(samples) == h


def test_queries_read_cumulative_counters_without_probes_and_scrapes():
    q = queries("2.0.0")
    assert set(q) == {"errors", "latency"}
    assert all(v.count('route!~"/api/health.*|/metrics"') == 2 for v in q.values())
    canary, stable = q["latency"].split(" or ")
    assert 'track="canary",version="2.0.0"' in canary and "version" not in stable
    assert 'status=~"5.."' in q["errors"]
    assert "increase(" not in q["errors"] + q["latency"]  # whole requests, no extrapolation
    assert canary.startswith("sum by (track, le)")


def test_a_reading_takes_requests_from_the_histograms_inf_bucket():
    buckets = [
        ({"track": "canary", "le": "0.1"}, 8.0),
        ({"track": "canary", "le": "+Inf"}, 10.0),
        ({"track": "stable", "le": "0.1"}, 90.0),
        ({"track": "stable", "le": "+Inf"}, 100.0),
    ]
    errors = [({"track": "canary"}, 2.0)]
    c = track_counts("canary", errors, buckets)
    s = track_counts("stable", errors, buckets)
    assert (c.requests, c.errors, c.buckets) == (10.0, 2.0, ((0.1, 8.0), (math.inf, 10.0)))
    assert (s.requests, s.errors) == (100.0, 0.0)


def test_the_relative_error_test_also_needs_the_share_test():
    # the rate bounds alone would fail this canary; the share test (errors over-represented
    # per request, interval by interval) has seen nothing yet, so the relative path waits
    et = error_test(5000, 250, 45000, 225, 0.0, alpha=0.01, slo_rate=0.2, margin=0.01)
    assert float(et.relative_log_e) >= math.log(et.level)
    assert not bool(et.fail)
    et = error_test(5000, 250, 45000, 225, math.log(1000), alpha=0.01, slo_rate=0.2, margin=0.01)
    assert bool(et.fail) and not bool(et.fail_slo)


def test_alpha_sets_how_much_evidence_a_fail_needs():
    h = history([(30, 6, 270, 0)])  # 20% errors, one interval
    strict = local_config_with(alpha=0.0001).canary
    assert judge(h).verdict == "FAIL"
    assert judge(h, strict).verdict != "FAIL"


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


def test_window_figures_are_the_step_so_far():
    h = history([(30, 3, 270, 0)] * 3)
    _r, window, _s = judge_metrics(h, CFG.canary, CFG.slo)
    assert window["canary_requests"] == 90 and window["canary_errors"] == 9
    assert window["canary_p95_ms"] == pytest.approx(20, abs=6)
    assert np.isclose(window["stable_error_rate"], 0)
