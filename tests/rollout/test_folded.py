"""The ledger keeps a release's oldest readings folded, and the gates' evidence does not notice:
judging the remaining readings after the folded evidence gives the same verdict, e-values,
confidence sequences and window as judging every reading, at every cut, through the ledger's
JSON, and after folding twice. So a release resumed from a compacted ledger continues its
e-processes exactly."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from rollout.analysis import judge_metrics
from rollout.folded import Folded, fold
from rollout.readings import Snapshot, TrackCounts
from tests.conftest import local_config_with

CFG = local_config_with()
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)


def release_history(seed: int, steps: int = 4, rounds: int = 15) -> list[Snapshot]:
    """A release's readings as the engine takes them: each step opens with a window-start
    reading, then one per check; the canary's share grows by step, it has a few errors and slow
    requests, and one canary instance restarts (its counters go back) in step 2."""
    rng = np.random.default_rng(seed)
    out: list[Snapshot] = []
    c: dict[str, Any] = {"n": 0.0, "e": 0.0, "le": [0.0] * len(BOUNDS)}
    s: dict[str, Any] = {"n": 20_000.0, "e": 30.0, "le": [15_000.0] * len(BOUNDS)}
    t = 0.0

    def reading(step: int, opens: bool) -> Snapshot:
        ct = TrackCounts(c["n"], c["e"], (*zip(BOUNDS, c["le"], strict=True), (math.inf, c["n"])))
        st = TrackCounts(s["n"], s["e"], (*zip(BOUNDS, s["le"], strict=True), (math.inf, s["n"])))
        return Snapshot(round(t, 3), step, ct, st, opens)

    for step in range(steps):
        share = (0.1, 0.25, 0.5, 1.0)[step % 4]
        out.append(reading(step, True))
        for r in range(rounds):
            t += 2.0
            nc = float(rng.poisson(40 * share))
            ns = float(rng.poisson(40 * (1 - share)))
            c["n"] += nc
            c["e"] += float(rng.binomial(int(nc), 0.02))
            s["n"] += ns
            s["e"] += float(rng.binomial(int(ns), 0.01))
            for key, n, slow in ((c, nc, 0.08), (s, ns, 0.02)):
                fast = n - rng.binomial(int(n), slow)
                for i, bound in enumerate(BOUNDS):
                    key["le"][i] += n if bound >= 0.3 else round(fast * min(1.0, 0.5 + 0.1 * i))
            if step == 2 and r == 7:  # a canary instance restarted: its counts are gone
                c["n"], c["e"] = c["n"] * 0.5, c["e"] * 0.5
                c["le"] = [x * 0.5 for x in c["le"]]
            out.append(reading(step, False))
    return out


def figures(history, folded=None) -> dict:
    result, window, stats = judge_metrics(history, CFG.canary, CFG.slo, folded=folded)
    return {
        "verdict": result.verdict,
        "checks": [
            (c.name, c.verdict, c.value, c.threshold, c.evalue, c.cs) for c in result.checks
        ],
        "window": window,
        "stats": stats,
    }


def close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


@pytest.mark.parametrize("seed", [1, 2])
def test_judging_after_folded_readings_gives_the_same_figures_at_every_cut(seed):
    history = release_history(seed)
    whole = figures(history)
    assert whole["stats"]["error_rate"]["evalue"]["share"] != 1.0  # the share test has evidence
    for cut in range(seed, len(history), 3):
        folded = fold(history[:cut])
        assert close(figures(history[cut:], folded), whole), f"cut at reading {cut}"


def test_folded_evidence_survives_the_ledgers_json_and_folds_again():
    history = release_history(3)
    whole = figures(history)
    first = fold(history[:20])
    stored = Folded.from_dict(json.loads(json.dumps(first.to_dict())))
    assert stored == first
    second = fold(history[20:47], stored)
    assert second.intervals > first.intervals
    again = Folded.from_dict(json.loads(json.dumps(second.to_dict())))
    assert close(figures(history[47:], again), whole)
    assert close(figures([], fold(history)), whole)  # everything folded: still the same


def test_a_fold_inside_a_step_keeps_the_steps_window():
    history = release_history(4, steps=2, rounds=20)
    cut = 30  # in the second step's window
    assert not history[cut].opens and history[cut].step == history[cut - 1].step
    whole = figures(history)
    folded = figures(history[cut:], fold(history[:cut]))
    assert folded["window"] == pytest.approx(whole["window"])
    assert whole["window"]["canary_requests"] > 0
