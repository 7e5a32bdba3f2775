"""The release report: charts a reviewer reads at a glance, values formatted for people."""

from __future__ import annotations

import math
import re

from rollout.analysis import judge_metrics
from rollout.local.stack import local_config
from rollout.readings import MetricsSample, Snapshot, TrackCounts
from rollout.report import render

CFG = local_config()
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def counts(n, e, latency_s=0.02):
    return TrackCounts(n, e, (*((b, n if latency_s <= b else 0.0) for b in BOUNDS), (math.inf, n)))


def release_record(canary_error_every=5):
    """A release the way the engine records it: two steps, a reading per check, the second
    step's canary failing with 1 error in ``canary_error_every`` requests."""
    start = 1_000.0
    samples, verdicts, transitions, history = [], [], [], []
    c = [0.0, 0.0]
    s = [500.0, 0.0]
    t = start
    status = "PROMOTED"
    for step, weight in enumerate((25, 50)):
        transitions.append(
            {
                "action": "set_weight",
                "args": {"weight": weight, "step": step},
                "state": "done",
                "at": t,
                "done_at": t,
            }
        )
        t += 3
        opening = Snapshot(t, step, counts(c[0], c[1]), counts(s[0], s[1]), True)
        history.append(opening)
        taken = [opening]
        for _ in range(6):
            t += 2
            n = 2 * weight
            c = [c[0] + n, c[1] + (n // canary_error_every if step == 1 else 0)]
            s = [s[0] + 200 - n, s[1]]
            snap = Snapshot(t, step, counts(c[0], c[1]), counts(s[0], s[1]))
            history.append(snap)
            taken.append(snap)
            result, window, stats = judge_metrics(history, CFG.canary, CFG.slo)
            point = {
                "at": t,
                "weight": weight,
                "step": step,
                "verdicts": {"metrics": result.verdict},
            }
            point.update(MetricsSample(tuple(taken), window, stats).to_dict())
            samples.append(point)
            taken = []
            if result.verdict != "PASS":
                verdicts.append({"step": step, "weight": weight, "at": t, **result.to_dict()})
            if result.verdict == "FAIL":
                status = "ABORTED"
                break
        if status == "ABORTED":
            break
    failing = next(v for v in verdicts if v["verdict"] == "FAIL") if status == "ABORTED" else None
    check = failing["checks"][0] if failing else None
    return {
        "id": "20261202T000000Z-3.0.0",
        "version": "3.0.0",
        "status": status,
        "created_at": start,
        "ended_at": t,
        "steps": ["25% for 12s", "50% for 12s"],
        "previous_stable": {"version": "1.0.0"},
        "transitions": transitions,
        "samples": samples,
        "verdicts": verdicts,
        "incident": None
        if check is None
        else {
            "reason": failing["reason"],
            "gate": "metrics",
            "check": check["name"],
            "query": check["query"],
            "values": {
                "canary": check["value"],
                "stable": check["baseline"],
                "threshold": check["threshold"],
            },
            "runbook": "release-aborted",
            "actions": [],
        },
    }


def test_a_rolled_back_release_shows_the_confidence_sequence_the_limit_and_the_decision():
    release = release_record()
    assert release["status"] == "ABORTED"
    page = render(release)
    # the charts: inline SVG with text kept as text
    assert page.count("<svg") >= 4
    assert "Error rate, canary minus stable, with its confidence sequence" in page
    assert "confidence sequence" in page and "margin +1.00%" in page
    assert re.search(r"FAIL at \d+ s: error_rate", page)
    assert "step 1 · 25%" in page and "step 2 · 50%" in page
    assert "FAIL at 400" in page  # the level e-values must reach, drawn as a line
    # values formatted for people, no Python reprs
    assert "{'" not in page and "': " not in page
    table = page.split("<table>")[1]
    assert re.search(r"<td>FAIL</td><td>\d+\.\d\d%</td><td>1\.00%</td><td>0\.00%</td>", table)
    assert re.search(r"<td>\d+(,\d+)? / 400</td><td>\+\d+\.\d\d% \.\. \+\d+\.\d\d%</td>", table)
    assert re.search(r"canary \d+\.\d\d%, stable 0\.00%, threshold 1\.00%", page)
    assert "release-aborted" in page


def test_a_promoted_release_marks_the_promotion_and_a_record_without_stats_still_renders():
    release = release_record(canary_error_every=10_000)
    assert release["status"] == "PROMOTED"
    page = render(release)
    assert "promoted at" in page and "<svg" in page
    old = {
        **release,
        "samples": [{k: v for k, v in s.items() if k != "stats"} for s in release["samples"]],
    }
    assert "<svg" in render(old)  # older ledgers: the weight chart still draws
