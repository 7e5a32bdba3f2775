"""The ledger writes of whole releases, without running them: what the engine writes at a
release's start, at each check round (a sample of real size with its readings, through the
engine's own ``add_rounds``, which compacts) and at its end, for tests of the ledger's size."""

from __future__ import annotations

import math
from collections.abc import Callable

from rollout.engine.compaction import add_rounds
from rollout.engine.records import done, intent
from rollout.ledger import Action, Incident, Ledger, LedgerDoc, Release, ReleaseStatus, Stable
from rollout.ledger.model import Sample, TransitionArgs, VerdictRecord
from rollout.readings import MetricsSample, Snapshot, TrackCounts

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2)
STATS = {
    "level": 400.0,
    "error_rate": {
        "estimate": 0.00412,
        "stable": 0.00388,
        "difference": 0.00024,
        "cs": [-0.0123, 0.0166],
        "canary_cs": [0.0, 0.0213],
        "limit": 0.0139,
        "slo": 0.02,
        "margin": 0.01,
        "evalue": {"slo": 0.0211, "margin": 0.0532, "share": 0.873},
    },
    "p95_latency": {
        "estimate": 42.5,
        "stable": 40.125,
        "cs": [25.0, 75.0],
        "limit": 500.0,
        "evalue": 0.0234,
        "share": 1.05245,
    },
}
CHECK = {
    "name": "error_rate",
    "verdict": "PASS",
    "value": 0.00412,
    "threshold": 0.0139,
    "baseline": 0.00388,
    "query": 'sum by (track) (http_requests_total{app="portal",track="canary",status=~"5.."})',
    "detail": "canary error rate 0.41% (3/728 this release) not surely over the limit 1.39% "
    "(stable + maxErrorRateIncrease): canary 0.00%..2.13%, canary - stable -1.23%..+1.66%",
    "evalue": 0.0532,
    "needed": 400.0,
    "cs": [-0.0123, 0.0166],
}


def _track(n: float, errors: float) -> TrackCounts:
    buckets = tuple((b, math.floor(n * min(1.0, 0.3 + b))) for b in BOUNDS)
    return TrackCounts(n, errors, (*buckets, (math.inf, n)))


def round_of(at: float, step: int, weight: int, n: int) -> tuple[Sample, list[VerdictRecord]]:
    """One check round as the engine records it (about 1.2 KB, readings included)."""
    canary, stable = 40.0 * n * weight / 100, 5000 + 40.0 * n * (100 - weight) / 100
    snap = Snapshot(at, step, _track(canary, n // 50), _track(stable, n // 40))
    window = {"canary_requests": canary, "stable_requests": stable, "canary_p95_ms": 42.5}
    metrics = MetricsSample((snap,), window, STATS).to_dict()
    verdicts = {"health": "PASS", "metrics": "PASS"}
    sample = Sample.model_validate(
        {"at": at, "weight": weight, "step": step} | metrics | {"verdicts": verdicts}
    )
    kept = [
        VerdictRecord.model_validate(
            {"step": step, "weight": weight, "at": at, "elapsed_s": 120.0, "gate": "metrics"}
            | {"verdict": "PASS", "reason": CHECK["detail"], "checks": [CHECK]}
        )
    ]
    return sample, kept if n % 12 == 11 else []  # a step's closing round keeps its verdicts


def release(ledger: Ledger, n: int, rounds: int, aborted: bool, start: float) -> str:
    """Release number ``n`` of ``rounds`` check rounds, written as the engine writes it: its
    start, its rounds (one write), its end (promoted, or rolled back with an incident)."""
    for write in writes(n, rounds, aborted, start):
        ledger.update(write)
    return f"1.{n}.0"


def writes(n: int, rounds: int, aborted: bool, start: float) -> list[Callable[[LedgerDoc], None]]:
    """The three changes ``release`` writes, to apply to a document of one's own."""
    version = f"1.{n}.0"
    image = f"ghcr.io/acme/portal:{version}"
    rid = f"{n:05d}-{version}"

    def begin(doc: LedgerDoc) -> None:
        if doc.stable is None:
            doc.stable = Stable(version="1.0.0", image="ghcr.io/acme/portal:1.0.0", at=start)
            doc.stable_history = [doc.stable.model_copy()]
        doc.releases.append(
            Release(
                id=rid,
                version=version,
                image=image,
                status=ReleaseStatus.PROGRESSING,
                created_at=start,
                steps=["10% for 300s", "25% for 300s", "50% for 300s", "100% for 300s"],
                previous_stable=doc.stable.model_copy(),
            )
        )

    def check_rounds(doc: LedgerDoc) -> None:
        r = doc.find(rid)
        assert r is not None
        for step in range(4):
            weight = (10, 25, 50, 100)[step]
            intent(r, Action.SET_WEIGHT, TransitionArgs(weight=weight, step=step), start)
            done(r, start)
            share = rounds // 4
            add_rounds(
                r,
                [
                    round_of(start + 10 * i, step, weight, i)
                    for i in range(step * share, (step + 1) * share)
                ],
            )

    def end(doc: LedgerDoc) -> None:
        r = doc.find(rid)
        assert r is not None
        intent(r, Action.ROLLBACK if aborted else Action.PROMOTE, TransitionArgs(), start)
        done(r, start)
        r.ended_at = start + 10 * rounds
        if aborted:
            r.status, r.reason = ReleaseStatus.ABORTED, "metrics gate failed: error rate"
            r.incident = Incident(id=rid, opened_at=start, reason=r.reason, gate="metrics")
            return
        r.status, r.reason = ReleaseStatus.PROMOTED, "every step passed"
        doc.stable = Stable(version=version, image=image, release_id=rid, at=start + 10 * rounds)
        doc.stable_history.append(doc.stable.model_copy())

    return [begin, check_rounds, end]
