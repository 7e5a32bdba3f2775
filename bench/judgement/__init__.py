"""Canary judgement: false rollbacks and time to detection of four policies, side by side.

The policies, each fed the same releases:

- ``current``: the gates before the sequential tests (mid-window a one-sided Wilson bound at
  0.99 over the window so far, the plain comparison at the window's end, p95 x1.25
  mid-window, nothing below ``minRequests``), re-implemented here on arrays;
- ``sequential``: the product's anytime-valid gates, through the same functions the engine
  uses (``rollout.evidence.error_test`` / ``latency_test`` and the share tests), evaluated on
  every check's cumulative counts at once; ``tests/rollout/test_sequential.py`` checks that
  this decides what ``judge_metrics`` decides;
- ``fixed``: Flagger's documented defaults: a check every 60 s over the last 60 s, request
  success rate >= 99% and p99 <= 500 ms, the first failed check rolls back (threshold 1, the
  default when unset), as does an interval with no canary request;
- ``kayenta``: Kayenta-style, every 60 s the interval's 10-second points of the canary's error
  rate and p95 against the baseline's, a one-sided Mann-Whitney U test at 98% confidence per
  metric; a metric judged worse rolls back.

Simulated releases (the default run) follow a stack's steps (``--judgement-stack``, staging by
default: 25/50/100% for 2 minutes each, checks every 10 s after a 15 s settle) in 5-second
slots: Poisson requests split by the weight, binomial errors, log-normal latency (median 20 ms,
p95 about 42 ms) counted into the app's histogram buckets. Traffic levels are the canary's
requests per second at the first step (low 5, medium 50, high 500); baseline error rates 0,
0.1%, 0.5% and 1% on both tracks. Faults, present from the first canary request: errors 2x, 5x
and 20x the baseline, +50/+150/+300 ms on every canary request, and a slow tail (2% of canary
requests a second slower: p99 moves, p95 does not). Healthy releases give false rollbacks per
1,000; faulty ones the median and p90 time from the first canary traffic to the failing check.
Some faults are within the configured tolerance (2x of 0.5%, 5x of 0.1%: under stable + 1%;
+50 ms: at the +50 ms noise floor; the tail: not a p95 regression): a gate that leaves them
alone does what its config says.

Recording (``--judgement-record``, about ten minutes, done once): the local stack
(``rollout.local.stack.LocalStack``: real Postgres, Redis, nginx, Prometheus scraping every app
instance each second) runs the drill's load; for each scenario a canary is deployed through
the local target (good releases, and the fault switch ``PORTAL_FAULT_*``: 1%, 5%, 20% errors,
+100 ms and +300 ms latency) and walked through the release steps' weights (10/25/50/100%).
Prometheus' per-second cumulative series per track (requests, 5xx, latency histogram buckets)
are turned into per-second increments and saved to ``bench/data/judgement-recording.json``.
The replay rebuilds releases from the recorded seconds of the matching weight (block bootstrap
with a seed; 5-second blocks keep the real burstiness) and judges them with all four policies,
the engine's own ``judge_metrics`` for ``sequential`` (readings at each window start and check,
with the local stack's config).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import (
    Report,
    positive_float,
    positive_int,
    progress,
)
from bench.judgement.recording import DATA, load_recording, record, replay
from bench.judgement.simulation import (
    BASELINES,
    ERROR_FAULTS,
    FIXED_INTERVAL_S,
    FIXED_MAX_P99_MS,
    FIXED_MIN_SUCCESS,
    KAYENTA_CONFIDENCE,
    KAYENTA_INTERVAL_S,
    KAYENTA_POINT_S,
    LATENCY_FAULT_BASELINE,
    LATENCY_FAULTS,
    LATENCY_MEDIAN_MS,
    LATENCY_SIGMA,
    LEVELS,
    NAME,
    POLICIES,
    TAIL_MS,
    TAIL_SHARE,
    _stack_config,
    _stats,
    simulated,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judgement")
    g.add_argument(
        "--judgement-record",
        action="store_true",
        help="record the scenarios on a local stack first (about 10 minutes)",
    )
    g.add_argument("--judgement-data", type=Path, default=DATA, help="the recording")
    g.add_argument(
        "--judgement-phase-seconds",
        default="60,30,20,20",
        help="recording: seconds at each weight (10,25,50,100%%); the first step, where faults "
        "are caught, gets the most",
    )
    g.add_argument(
        "--judgement-rate",
        type=positive_float,
        default=40.0,
        help="recording: load in requests/s (the drill's default)",
    )
    g.add_argument(
        "--judgement-good", type=positive_int, default=20, help="good releases replayed (seeds)"
    )
    g.add_argument(
        "--judgement-stack",
        default="staging",
        choices=("staging", "prod", "local"),
        help="whose canary config the simulated releases follow",
    )
    g.add_argument(
        "--judgement-healthy",
        type=positive_int,
        default=2000,
        help="simulated healthy releases per traffic level and baseline error rate",
    )
    g.add_argument(
        "--judgement-faulty",
        type=positive_int,
        default=300,
        help="simulated releases per fault, baseline and traffic level",
    )
    g.add_argument("--judgement-seed", type=int, default=14, help="simulation seed")
    g.add_argument(
        "--judgement-fault-seeds",
        type=positive_int,
        default=10,
        help="replays of each fault (seeds)",
    )


def run(args: argparse.Namespace) -> Report:
    if args.judgement_record:
        record(args)
    doc = load_recording(args.judgement_data)
    cfg = _stack_config(args.judgement_stack)
    report = Report(
        NAME,
        params={
            "stack": args.judgement_stack,
            "alpha": cfg.canary.alpha,
            "healthy_releases_per_cell": args.judgement_healthy,
            "faulty_releases_per_cell": args.judgement_faulty,
            "seed": args.judgement_seed,
            "levels_canary_req_s_at_first_step": LEVELS,
            "latency": {
                "median_ms": LATENCY_MEDIAN_MS,
                "sigma": LATENCY_SIGMA,
                "tail": [TAIL_SHARE, TAIL_MS],
            },
            "fixed": {
                "interval_s": FIXED_INTERVAL_S,
                "min_success": FIXED_MIN_SUCCESS,
                "max_p99_ms": FIXED_MAX_P99_MS,
                "failed_checks": 1,
            },
            "kayenta": {
                "interval_s": KAYENTA_INTERVAL_S,
                "point_s": KAYENTA_POINT_S,
                "confidence": KAYENTA_CONFIDENCE,
            },
            "recording": str(args.judgement_data),
            "recorded_at": doc.get("recorded_at"),
        },
    )
    progress(
        NAME,
        f"simulating releases of the {args.judgement_stack} stack's steps "
        f"(alpha {cfg.canary.alpha:g}) at {', '.join(LEVELS)} traffic",
    )
    sim = simulated(args, report)
    report.data["simulated"] = sim
    alpha = cfg.canary.alpha
    met = _false_rollbacks(sim, report, alpha)
    speed, fast = _detection(sim, report, cfg)
    progress(NAME, "replaying the local stack's recorded series")
    res = replay(doc, args.judgement_good, args.judgement_fault_seeds)
    report.data["recorded"] = res
    _recorded(res, report)
    worst = {
        policy: max(
            1000
            * _stats(sim["cases"][f"{lv}/{b:.1%}/healthy"]["detect_s"][policy])[0]
            / args.judgement_healthy
            for lv in LEVELS
            for b in BASELINES
        )
        for policy in ("sequential", "current")
    }
    med, medc, medf = (
        speed[(0.005, "5x", "medium", policy)][2] for policy in ("sequential", "current", "fixed")
    )
    report.finish(
        f"false rollbacks per 1,000 healthy releases (worst level and baseline): sequential "
        f"{worst['sequential']:.1f} vs current {worst['current']:.1f} (target <= "
        f"{1000 * alpha:g}); 5x errors of 0.5% at medium traffic: median {_s(med)} sequential, "
        f"{_s(medc)} current, {_s(medf)} fixed ({'MET' if met and fast else 'MISSED'})"
    )
    return report


def _false_rollbacks(sim: dict[str, Any], report: Report, alpha: float) -> bool:
    """False rollbacks per 1,000 healthy releases, per policy and traffic level (the worst
    baseline); whether the sequential gates keep them within alpha."""
    met = True
    for level in LEVELS:
        for policy in POLICIES:
            worst = 0.0
            parts = []
            for base in BASELINES:
                case = sim["cases"][f"{level}/{base:.1%}/healthy"]
                k, _m, _p = _stats(case["detect_s"][policy])
                per_k = 1000 * k / case["releases"]
                worst = max(worst, per_k)
                parts.append(f"{base:.1%}: {per_k:.1f}")
            report.figure(
                f"false_per_1000_{policy}_{level}",
                worst,
                "/1000",
                f"worst baseline; by baseline {', '.join(parts)}",
            )
            if policy == "sequential" and worst > 1000 * alpha:
                met = False
    return met


Speed = dict[tuple[float, str, str, str], tuple[int, int, float | None, float | None]]


def _detection(sim: dict[str, Any], report: Report, cfg: Any) -> tuple[Speed, bool]:
    """Median and p90 seconds to detection per fault, policy and level; whether 5x errors and
    +150 ms are caught at least as fast as the fixed policy everywhere and the current gates
    at medium traffic (faults within the configured tolerance aside)."""
    faults = [(b, f"{m:g}x") for b in BASELINES if b > 0 for m in ERROR_FAULTS]
    faults += [(LATENCY_FAULT_BASELINE, f) for f in (*LATENCY_FAULTS, "tail")]
    speed: Speed = {}
    for base, fault in faults:
        for level in LEVELS:
            case = sim["cases"][f"{level}/{base:.1%}/{fault}"]
            cells = []
            for policy in POLICIES:
                k, med, p90 = _stats(case["detect_s"][policy])
                n = case["releases"]
                speed[(base, fault, level, policy)] = (k, n, med, p90)
                cells.append(
                    f"{policy} {k}/{n} " + (f"{med:.0f}/{p90:.0f}s" if med is not None else "never")
                )
            name = f"errors {fault} of {base:.1%}" if fault.endswith("x") else f"latency {fault}"
            report.figure(
                f"detect_{fault}_{base:.1%}_{level}".replace("%", "pct"),
                speed[(base, fault, level, "sequential")][2],
                "s",
                f"{name}: median/p90 " + "; ".join(cells),
            )
    met = True
    targets = [(b, "5x") for b in BASELINES if b > 0] + [(LATENCY_FAULT_BASELINE, "+150ms")]
    for base, fault in targets:
        beyond = fault != "5x" or base * 5 > min(
            cfg.slo.max_error_rate, base + cfg.canary.max_error_rate_increase
        )
        if not beyond:
            continue
        for level in LEVELS:
            med = speed[(base, fault, level, "sequential")][2]
            medf = speed[(base, fault, level, "fixed")][2]
            medc = speed[(base, fault, level, "current")][2]
            if medf is not None and (med is None or med > medf):
                met = False
            if level == "medium" and medc is not None and (med is None or med > medc):
                met = False
    return speed, met


def _recorded(res: dict[str, Any], report: Report) -> None:
    """One line per recorded scenario: how often and how fast each policy rolled it back."""
    for label, sc in res["scenarios"].items():
        rows = sc["runs"]
        cells = []
        for policy in POLICIES:
            times = [r[policy][1] for r in rows if r[policy][0] != "PROMOTED"]
            k, med, p90 = _stats(times)
            cells.append(f"{policy} {k}/{len(rows)}" + (f" {med:.0f}/{p90:.0f}s" if med else ""))
        report.figure(f"recorded_{label}", None, "", f"{sc['fault']}: " + "; ".join(cells))


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.0f} s"
