"""Simulated releases for the judgement benchmark: Poisson traffic split by the weight, binomial
errors and log-normal latency in the app's histogram buckets, judged on arrays by the four
policies (see ``bench.judgement``)."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    Report,
    median,
    percentile,
    progress,
)

# The fixed-threshold policy (documented defaults of other progressive-delivery tools).
NAME = "judgement"

FIXED_INTERVAL_S = 60
FIXED_MIN_SUCCESS = 0.99
FIXED_MAX_P99_MS = 500.0


SLOT_S = 5.0
"""Replayed recordings are judged by the vectorised policies in 5-second slots."""
LEVELS = {"low": 5.0, "medium": 50.0, "high": 500.0}
"""Traffic levels: the canary's requests per second at the first step's weight."""
BASELINES = (0.0, 0.001, 0.005, 0.01)
ERROR_FAULTS = (2.0, 5.0, 20.0)
LATENCY_FAULTS = {"+50ms": 50.0, "+150ms": 150.0, "+300ms": 300.0}
TAIL_SHARE, TAIL_MS = 0.02, 1000.0
"""The slow-tail fault: 2% of canary requests take a second longer (p99 moves, p95 does not)."""
LATENCY_MEDIAN_MS, LATENCY_SIGMA = 20.0, 0.45
"""Healthy latency: log-normal, median 20 ms, p95 about 42 ms, p99 about 57 ms."""
LATENCY_FAULT_BASELINE = 0.001
POLICIES = ("current", "sequential", "fixed", "kayenta")
KAYENTA_INTERVAL_S, KAYENTA_POINT_S, KAYENTA_CONFIDENCE = 60.0, 10.0, 0.98


@dataclass(frozen=True)
class Schedule:
    """The release as the engine walks it: per step (weight, first slot, settle slots, analysis
    slots); checks every interval after settle."""

    steps: tuple[tuple[float, int, int, int], ...]
    interval_slots: int
    slots: int
    slot_s: float
    """Counters advance in slots of this many seconds (divides the settle and the interval)."""

    @classmethod
    def of(cls, canary: Any) -> Schedule:
        slot_s = float(math.gcd(round(canary.interval_s), round(canary.settle_s)) or 1)
        out, at = [], 0
        interval = round(canary.interval_s / slot_s)
        for step in canary.steps:
            if step.pause:
                continue
            settle = round(canary.settle_s / slot_s)
            analysis = -(-round(step.analysis_s / slot_s) // interval) * interval
            out.append((float(step.weight) / 100, at, settle, analysis))
            at += settle + analysis
        return cls(tuple(out), interval, at, slot_s)

    def weights(self) -> Any:
        import numpy as np

        w = np.zeros(self.slots)
        for weight, first, settle, analysis in self.steps:
            w[first : first + settle + analysis] = weight
        return w

    def checks(self) -> list[tuple[int, int, int, int]]:
        """(step, window start slot, check end slot, slots since the window start)."""
        out = []
        for j, (_w, first, settle, analysis) in enumerate(self.steps):
            start = first + settle
            for end in range(
                start + self.interval_slots, start + analysis + 1, self.interval_slots
            ):
                out.append((j, start, end, end - start))
        return out


@dataclass(frozen=True)
class Case:
    level: str
    baseline: float
    fault: str
    """``healthy``, ``2x``/``5x``/``20x`` errors, ``+50ms``..., or ``tail``."""

    @property
    def label(self) -> str:
        return f"{self.level}/{self.baseline:.1%}/{self.fault}"


def _bucket_probs(bounds_s: Any, shift_ms: float = 0.0, tail: float = 0.0) -> Any:
    """P(latency <= each bound) for the simulated latency, then the ``+Inf`` bucket."""
    import numpy as np
    from scipy import stats

    dist = stats.lognorm(LATENCY_SIGMA, scale=LATENCY_MEDIAN_MS)
    b = np.asarray(bounds_s) * 1000
    cdf = (1 - tail) * dist.cdf(b - shift_ms) + tail * dist.cdf(b - shift_ms - TAIL_MS)
    cdf = np.append(cdf, 1.0)
    return np.diff(np.concatenate([[0.0], cdf]))


def simulate(case: Case, sched: Schedule, releases: int, bounds_s: Any, rng: Any) -> dict[str, Any]:
    """Per-slot counts of ``releases`` simulated releases: requests, errors and latency bins
    (non-cumulative, ``+Inf`` last) per track, arrays (releases, slots[, bins])."""
    import numpy as np

    rate = LEVELS[case.level] / sched.steps[0][0]
    w = sched.weights()
    lam_c = rate * w * sched.slot_s
    lam_s = rate * (1 - w) * sched.slot_s
    nc = rng.poisson(np.broadcast_to(lam_c, (releases, sched.slots)))
    ns = rng.poisson(np.broadcast_to(lam_s, (releases, sched.slots)))
    p_err = case.baseline
    shift, tail = 0.0, 0.0
    if case.fault.endswith("x"):
        p_err = min(1.0, case.baseline * float(case.fault[:-1]))
    elif case.fault in LATENCY_FAULTS:
        shift = LATENCY_FAULTS[case.fault]
    elif case.fault == "tail":
        tail = TAIL_SHARE
    ec = rng.binomial(nc, p_err)
    es = rng.binomial(ns, case.baseline)
    bc = rng.multinomial(nc, _bucket_probs(bounds_s, shift, tail))
    bs = rng.multinomial(ns, _bucket_probs(bounds_s))
    return {"nc": nc, "ec": ec, "ns": ns, "es": es, "bc": bc, "bs": bs}


def _sums(x: Any, lo: Any, hi: Any) -> Any:
    """Sums of ``x`` over slots [lo, hi) (axis 1), for each (lo, hi) pair."""
    import numpy as np

    c = np.concatenate([np.zeros_like(x[:, :1]), np.cumsum(x, axis=1)], axis=1)
    return c[:, hi] - c[:, lo]


def _quantile_ms(q: float, bounds_s: Any, le: Any, total: Any) -> Any:
    """Vectorised ``histogram_quantile``: ``le`` cumulative counts at the finite bounds (last
    axis), ``total`` the ``+Inf`` count; nan where there is no request."""
    import numpy as np

    b = np.asarray(bounds_s) * 1000
    rank = q * total[..., None]
    reached = le >= rank
    any_ = reached.any(axis=-1)
    i = np.argmax(reached, axis=-1)
    hi_b = b[i]
    lo_b = np.where(i > 0, b[np.maximum(i - 1, 0)], 0.0)
    hi_c = np.take_along_axis(le, i[..., None], axis=-1)[..., 0]
    lo_c = np.where(
        i > 0, np.take_along_axis(le, np.maximum(i - 1, 0)[..., None], axis=-1)[..., 0], 0.0
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(hi_c > lo_c, (rank[..., 0] - lo_c) / (hi_c - lo_c), 1.0)
    est = lo_b + (hi_b - lo_b) * frac
    est = np.where(any_, est, b[-1])  # beyond the last finite bound: as Prometheus, that bound
    return np.where(total > 0, est, np.nan)


def _wilson_lower(e: Any, n: Any, confidence: float) -> Any:
    from statistics import NormalDist

    import numpy as np

    z = NormalDist().inv_cdf(confidence)
    n_ = np.where(n > 0, n, 1)
    p = np.clip(e / n_, 0, 1)
    denom = 1 + z * z / n_
    centre = p + z * z / (2 * n_)
    margin = z * np.sqrt(p * (1 - p) / n_ + z * z / (4 * n_ * n_))
    return np.where(n > 0, np.maximum(0.0, (centre - margin) / denom), 0.0)


def detect_current(sim: dict[str, Any], sched: Schedule, cfg: Any, bounds_s: Any) -> Any:
    """The gates before the sequential tests: mid-window a one-sided Wilson bound at 0.99 over
    the window so far (``increase`` over max(elapsed, 2 x interval)), at the window's end the
    plain comparison; p95 x1.25 mid-window; no verdict below ``minRequests``."""
    import numpy as np

    c, slo = cfg.canary, cfg.slo
    R = sim["nc"].shape[0]
    found = np.full(R, np.nan)
    le_c = np.cumsum(sim["bc"][..., :-1], axis=-1)
    le_s = np.cumsum(sim["bs"][..., :-1], axis=-1)
    for step, _start, end, since in sched.checks():
        final = since >= sched.steps[step][3]
        span = max(since, 2 * sched.interval_slots, 1)
        lo = np.array([max(0, end - span)])
        hi = np.array([end])
        nc, ec = _sums(sim["nc"], lo, hi)[:, 0], _sums(sim["ec"], lo, hi)[:, 0]
        ns, es = _sums(sim["ns"], lo, hi)[:, 0], _sums(sim["es"], lo, hi)[:, 0]
        bc = _sums(le_c, lo, hi)[:, 0]
        bs = _sums(le_s, lo, hi)[:, 0]
        enough = nc >= c.min_requests
        rate_c = np.where(nc > 0, ec / np.maximum(nc, 1), 0.0)
        stable = np.where(ns > 0, es / np.maximum(ns, 1), np.inf)
        limit = np.where(
            stable + c.max_error_rate_increase < slo.max_error_rate,
            stable + c.max_error_rate_increase,
            slo.max_error_rate,
        )
        err = rate_c > limit if final else _wilson_lower(ec, nc, 0.99) > limit
        p95_c = _quantile_ms(0.95, bounds_s, bc, nc)
        p95_s = _quantile_ms(0.95, bounds_s, bs, ns)
        rel = np.maximum(p95_s * c.max_p95_ratio, p95_s + c.min_p95_increase_ms)
        lat_limit = np.where((p95_s > 0) & (rel < slo.max_p95_ms), rel, slo.max_p95_ms)
        margin = 1.0 if final else 1.25
        lat = np.nan_to_num(p95_c, nan=-1.0) > lat_limit * margin
        fail = enough & (err | lat) & np.isnan(found)
        found[fail] = end * sched.slot_s
    return found


def detect_sequential(sim: dict[str, Any], sched: Schedule, cfg: Any, bounds_s: Any) -> Any:
    """The product's sequential gates (``rollout.evidence.error_test`` / ``latency_test`` on
    every check's cumulative counts), vectorised over releases and checks."""
    import numpy as np

    from rollout.evidence import error_test, latency_share_log_e, latency_test
    from rollout.sequential import log_e_share

    c, slo = cfg.canary, cfg.slo
    checks = sched.checks()
    lo = np.array([end - sched.interval_slots for _j, _s, end, _n in checks])
    hi = np.array([end for _j, _s, end, _n in checks])
    iv = {k: _sums(sim[k], lo, hi) for k in ("nc", "ec", "ns", "es")}  # (R, K)
    le_c = _sums(np.cumsum(sim["bc"][..., :-1], axis=-1), lo, hi)  # (R, K, B)
    le_s = _sums(np.cumsum(sim["bs"][..., :-1], axis=-1), lo, hi)
    tot = {k: np.cumsum(v, axis=1) for k, v in iv.items()}
    guard_e = log_e_share(iv["ec"], iv["es"], iv["nc"], iv["ns"], cumulative=True)
    et = error_test(
        tot["nc"],
        tot["ec"],
        tot["ns"],
        tot["es"],
        guard_e,
        alpha=c.alpha,
        slo_rate=slo.max_error_rate,
        margin=c.max_error_rate_increase,
    )
    guard_l = latency_share_log_e(iv["nc"], le_c, iv["ns"], le_s, cumulative=True)
    lt = latency_test(
        np.cumsum(le_c, axis=1),
        tot["nc"],
        np.cumsum(le_s, axis=1),
        tot["ns"],
        np.asarray(bounds_s) * 1000,
        guard_l,
        alpha=c.alpha,
        slo_ms=slo.max_p95_ms,
        canary=c,
    )
    fail = np.asarray(et.fail) | np.asarray(lt.fail)
    first = np.where(fail.any(axis=1), np.argmax(fail, axis=1), -1)
    return np.where(first >= 0, hi[np.maximum(first, 0)] * sched.slot_s, np.nan)


def detect_fixed(sim: dict[str, Any], sched: Schedule, bounds_s: Any) -> Any:
    """Flagger's defaults: every 60 s over the last 60 s, success rate >= 99% and p99 <= 500 ms,
    the first failed check (threshold 1) or an interval with no canary request rolls back."""
    import numpy as np

    per = round(FIXED_INTERVAL_S / sched.slot_s)
    ends = np.arange(per, sched.slots + 1, per)
    lo, hi = ends - per, ends
    nc, ec = _sums(sim["nc"], lo, hi), _sums(sim["ec"], lo, hi)
    le = _sums(np.cumsum(sim["bc"][..., :-1], axis=-1), lo, hi)
    p99 = _quantile_ms(0.99, bounds_s, le, nc)
    success = np.where(nc > 0, 1 - ec / np.maximum(nc, 1), 0.0)
    fail = (nc <= 0) | (success < FIXED_MIN_SUCCESS) | (np.nan_to_num(p99) > FIXED_MAX_P99_MS)
    first = np.where(fail.any(axis=1), np.argmax(fail, axis=1), -1)
    return np.where(first >= 0, ends[np.maximum(first, 0)] * sched.slot_s, np.nan)


def detect_kayenta(sim: dict[str, Any], sched: Schedule, bounds_s: Any) -> Any:
    """Kayenta-style: every 60 s, the interval's 10-second points of error rate and p95 of the
    canary against the baseline's, one-sided Mann-Whitney U at 98% confidence per metric; a
    metric judged worse rolls back. An interval without baseline traffic is not judged."""
    import numpy as np
    from scipy import stats

    per = round(KAYENTA_INTERVAL_S / sched.slot_s)
    pt = round(KAYENTA_POINT_S / sched.slot_s)
    ends = np.arange(per, sched.slots + 1, per)
    R = sim["nc"].shape[0]
    found = np.full(R, np.nan)
    le_c = np.cumsum(sim["bc"][..., :-1], axis=-1)
    le_s = np.cumsum(sim["bs"][..., :-1], axis=-1)
    for end in ends:
        hi = np.arange(end - per + pt, end + 1, pt)
        lo = hi - pt
        nc, ec = _sums(sim["nc"], lo, hi), _sums(sim["ec"], lo, hi)
        ns, es = _sums(sim["ns"], lo, hi), _sums(sim["es"], lo, hi)
        rc = np.where(nc > 0, ec / np.maximum(nc, 1), np.nan)
        rs = np.where(ns > 0, es / np.maximum(ns, 1), np.nan)
        pc = _quantile_ms(0.95, bounds_s, _sums(le_c, lo, hi), nc)
        ps = _quantile_ms(0.95, bounds_s, _sums(le_s, lo, hi), ns)
        judged = (ns > 0).all(axis=1) & (nc > 0).all(axis=1)
        worse = np.zeros(R, dtype=bool)
        for a, b in ((rc, rs), (pc, ps)):
            ok = judged & ~(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1))
            same = np.ptp(np.concatenate([a, b], axis=1), axis=1) == 0
            idx = ok & ~np.nan_to_num(same, nan=1).astype(bool)
            if idx.any():
                with np.errstate(all="ignore"):
                    p = stats.mannwhitneyu(
                        a[idx], b[idx], alternative="greater", axis=1, method="asymptotic"
                    ).pvalue
                w = np.zeros(R, dtype=bool)
                w[idx] = p < 1 - KAYENTA_CONFIDENCE
                worse |= w
        hit = worse & np.isnan(found)
        found[hit] = end * sched.slot_s
    return found


def simulated(args: argparse.Namespace, report: Report) -> dict[str, Any]:
    import numpy as np

    from app.metrics import HTTP_BUCKETS

    cfg = _stack_config(args.judgement_stack)
    sched = Schedule.of(cfg.canary)
    bounds = np.array(HTTP_BUCKETS)
    cases = []
    for level in LEVELS:
        for base in BASELINES:
            cases.append((Case(level, base, "healthy"), args.judgement_healthy))
            if base > 0:
                cases += [
                    (Case(level, base, f"{m:g}x"), args.judgement_faulty) for m in ERROR_FAULTS
                ]
        for fault in (*LATENCY_FAULTS, "tail"):
            cases.append((Case(level, LATENCY_FAULT_BASELINE, fault), args.judgement_faulty))
    out: dict[str, Any] = {
        "stack": args.judgement_stack,
        "release_s": sched.slots * sched.slot_s,
        "cases": {},
    }
    rng = np.random.default_rng(args.judgement_seed)
    total = sum(n for _c, n in cases)
    done = 0
    t0 = time.time()
    for case, n in cases:
        found: dict[str, list[float]] = {p: [] for p in POLICIES}
        for chunk in range(0, n, 500):
            k = min(500, n - chunk)
            sim = simulate(case, sched, k, bounds, rng)
            for policy, times in (
                ("current", detect_current(sim, sched, cfg, bounds)),
                ("sequential", detect_sequential(sim, sched, cfg, bounds)),
                ("fixed", detect_fixed(sim, sched, bounds)),
                ("kayenta", detect_kayenta(sim, sched, bounds)),
            ):
                found[policy] += [float(t) for t in times]
        done += n
        out["cases"][case.label] = {
            "level": case.level,
            "baseline": case.baseline,
            "fault": case.fault,
            "releases": n,
            "detect_s": {p: [None if math.isnan(t) else t for t in v] for p, v in found.items()},
        }
        progress(NAME, f"{done}/{total} simulated releases ({case.label}, {time.time() - t0:.0f}s)")
    return out


def _stats(times: Sequence[float | None]) -> tuple[int, float | None, float | None]:
    got = [float(t) for t in times if t is not None]
    if not got:
        return 0, None, None
    return len(got), median(got), percentile(got, 90)


def _stack_config(stack: str) -> Any:
    from contract.config import load_stack

    if stack == "local":
        from rollout.local.stack import local_config

        return local_config()
    return load_stack(stack, Path(__file__).resolve().parents[2])
