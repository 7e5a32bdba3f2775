"""Canary judgement: false rollbacks and time to detection of four policies, side by side.

The policies, each fed the same releases:

- ``current``: the gates before the sequential tests (mid-window a one-sided Wilson bound at
  0.99 over the window so far, the plain comparison at the window's end, p95 x1.25
  mid-window, nothing below ``minRequests``), re-implemented here on arrays;
- ``sequential``: the product's anytime-valid gates, through the same functions the engine
  uses (``rollout.analysis.error_test`` / ``latency_test`` and the share tests), evaluated on
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
import itertools
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    Report,
    median,
    percentile,
    positive_float,
    positive_int,
    progress,
    server_root,
)

NAME = "judgement"
DATA = Path(__file__).resolve().parent / "data" / "judgement-recording.json"
WEIGHTS = (10, 25, 50, 100)
BLOCK_S = 5

# name -> (fault switch env, description, is the release good)
SCENARIOS: dict[str, tuple[dict[str, str], str, bool]] = {
    "good-1": ({}, "good release", True),
    "good-2": ({}, "good release", True),
    "err-1pct": ({"PORTAL_FAULT_ERROR_RATE": "0.01"}, "1% errors", False),
    "err-5pct": ({"PORTAL_FAULT_ERROR_RATE": "0.05"}, "5% errors", False),
    "err-20pct": ({"PORTAL_FAULT_ERROR_RATE": "0.2"}, "20% errors", False),
    "lat-100ms": ({"PORTAL_FAULT_LATENCY_MS": "100"}, "+100 ms latency", False),
    "lat-300ms": ({"PORTAL_FAULT_LATENCY_MS": "300"}, "+300 ms latency", False),
}
MUST_DETECT = ("err-5pct", "err-20pct")
DETECT_WITHIN_S = 30.0

# The fixed-threshold policy (documented defaults of other progressive-delivery tools).
FIXED_INTERVAL_S = 60
FIXED_MIN_SUCCESS = 0.99
FIXED_MAX_P99_MS = 500.0


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


# ------------------------------------------------------------------------------ recording


def _filled(points: Sequence[tuple[float, float]], start: int, end: int) -> list[float]:
    """One value per second from ``start`` to ``end`` (missing: the last known value, or 0)."""
    by_t = {round(t): v for t, v in points}
    out, last = [], 0.0
    for t in range(start, end + 1):
        last = by_t.get(t, last)
        out.append(last)
    return out


def _increments(values: Sequence[float]) -> list[float]:
    return [max(0.0, b - a) for a, b in itertools.pairwise(values)]


def _record_track(
    prom: Any, track: str, version: str | None, start: int, end: int
) -> dict[str, Any]:
    """Per-second increments of requests, 5xx and latency buckets in [start, end]."""
    from contract.promql import track_selector as selector

    sel = selector(track, version)
    err = selector(track, version, 'status=~"5.."')

    def one(promql: str) -> list[float]:
        series = prom.query_range(promql, start, end, 1)
        return _increments(_filled(series[0].points if series else (), start, end))

    req = one(f"sum(http_requests_total{sel})")
    errs = one(f"sum(http_requests_total{err})")
    by_le = prom.query_range(
        f"sum by (le) (http_request_duration_seconds_bucket{sel})", start, end, 1
    )
    cols = {s.labels["le"]: _increments(_filled(s.points, start, end)) for s in by_le}
    les = sorted(cols, key=float)
    rows = [[cols[le][i] for le in les] for i in range(len(req))] if les else []
    return {"requests": req, "errors": errs, "le": les, "buckets": rows}


def record(args: argparse.Namespace) -> Path:
    from rollout.local.load import LoadGenerator
    from rollout.local.stack import LocalStack
    from rollout.local.target import local_target
    from rollout.ports import ReleaseSpec
    from rollout.prometheus import Prometheus

    phase_s = [float(x) for x in str(args.judgement_phase_seconds).split(",")]
    if len(phase_s) != len(WEIGHTS) or min(phase_s) < 2 * BLOCK_S:
        raise BenchError(
            f"--judgement-phase-seconds {args.judgement_phase_seconds}: give {len(WEIGHTS)} "
            f"comma-separated durations of at least {2 * BLOCK_S} s"
        )
    doc: dict[str, Any] = {
        "recorded_at": time.time(),
        "rate": args.judgement_rate,
        "phase_s": phase_s,
        "weights": list(WEIGHTS),
        "scenarios": {},
    }
    with server_root(NAME) as root:
        stack = LocalStack(root / "local")
        state = stack.up(lambda m: progress(NAME, m))
        try:
            target = local_target(stack)
            prom = Prometheus(state["prometheus_url"])
            load = LoadGenerator(state["nginx_url"], rate_per_s=args.judgement_rate).start()
            try:
                time.sleep(5)  # the stable instances' series exist before the first canary
                for n, (name, (env, desc, good)) in enumerate(SCENARIOS.items()):
                    version = f"2.0.{n}"
                    steps = ", ".join(f"{w}% {d:g}s" for w, d in zip(WEIGHTS, phase_s, strict=True))
                    progress(NAME, f"recording {name} ({desc}): canary {version}, {steps}")
                    stack.set_version_env(version, env)
                    target.workloads.deploy_canary(ReleaseSpec(f"bench-{name}", version), 1)
                    time.sleep(2)  # discovered and scraped once before it takes traffic
                    phases = []
                    for w, seconds in zip(WEIGHTS, phase_s, strict=True):
                        target.router.set_weight(w)
                        start = math.ceil(time.time())
                        time.sleep(seconds)
                        phases.append((w, start, math.floor(time.time())))
                    time.sleep(2.5)  # the last seconds scraped
                    recorded = []
                    for w, start, end in phases:
                        recorded.append(
                            {
                                "weight": w,
                                "canary": _record_track(prom, "canary", version, start, end),
                                "stable": _record_track(prom, "stable", None, start, end),
                            }
                        )
                    target.workloads.rollback()
                    doc["scenarios"][name] = {
                        "fault": desc,
                        "env": env,
                        "good": good,
                        "version": version,
                        "phases": recorded,
                    }
            finally:
                counts = load.stop()
                doc["load"] = {"sent": counts.sent, "errors": counts.errors}
        finally:
            stack.down(lambda m: progress(NAME, m))
    args.judgement_data.parent.mkdir(parents=True, exist_ok=True)
    args.judgement_data.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    progress(NAME, f"recording saved to {args.judgement_data}")
    return Path(args.judgement_data)


# ------------------------------------------------------------------------------ replay


@dataclass(frozen=True)
class Second:
    """Increments over one second, per track (buckets: cumulative ``le`` counts)."""

    c_req: float
    c_err: float
    c_buckets: tuple[float, ...]
    s_req: float
    s_err: float
    s_buckets: tuple[float, ...]


def _seconds(phase: dict[str, Any], les: Sequence[str]) -> list[Second]:
    def aligned(track: dict[str, Any]) -> list[tuple[float, ...]]:
        index = {le: i for i, le in enumerate(track["le"])}
        rows = track["buckets"] or [[] for _ in track["requests"]]
        return [tuple(row[index[le]] if le in index else 0.0 for le in les) for row in rows]

    c, s = phase["canary"], phase["stable"]
    cb, sb = aligned(c), aligned(s)
    n = min(len(c["requests"]), len(s["requests"]), len(cb), len(sb))
    return [
        Second(c["requests"][i], c["errors"][i], cb[i], s["requests"][i], s["errors"][i], sb[i])
        for i in range(n)
    ]


class Timeline:
    """Per-second increments of one replayed release."""

    def __init__(self, seconds: list[Second], les: Sequence[str]) -> None:
        self.seconds = seconds
        self.bounds = [float(le) for le in les]

    def window(self, start: float, end: float) -> tuple[Second, int]:
        """Sums over the seconds in (start, end]."""
        lo, hi = max(0, int(start)), min(len(self.seconds), int(end))
        chunk = self.seconds[lo:hi]
        width = len(self.bounds)
        return Second(
            sum(x.c_req for x in chunk),
            sum(x.c_err for x in chunk),
            tuple(sum(x.c_buckets[i] for x in chunk) for i in range(width)),
            sum(x.s_req for x in chunk),
            sum(x.s_err for x in chunk),
            tuple(sum(x.s_buckets[i] for x in chunk) for i in range(width)),
        ), len(chunk)

    def quantile_ms(self, q: float, buckets: Sequence[float]) -> float | None:
        """PromQL ``histogram_quantile`` over cumulative buckets, in milliseconds."""
        if not buckets or buckets[-1] <= 0:
            return None
        rank = q * buckets[-1]
        prev_bound, prev_count = 0.0, 0.0
        for bound, count in zip(self.bounds, buckets, strict=True):
            if count >= rank:
                if bound == float("inf"):
                    return prev_bound * 1000  # as Prometheus: the last finite bound
                if count == prev_count:
                    return bound * 1000
                return (
                    prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
                ) * 1000
            prev_bound, prev_count = bound, count
        return prev_bound * 1000


def build(
    pool: dict[int, list[list[Second]]],
    schedule: Sequence[tuple[int, int]],
    rng: random.Random,
    les: Sequence[str],
) -> Timeline:
    """A release of ``schedule`` ((weight, seconds), ...) from 5-second blocks of the recorded
    seconds at that weight (block bootstrap)."""
    out: list[Second] = []
    for weight, length in schedule:
        runs = [r for r in pool[weight] if len(r) >= BLOCK_S]
        if not runs:
            raise BenchError(f"the recording has no {weight}% phase of {BLOCK_S}s or more")
        need = length
        while need > 0:
            run = rng.choice(runs)
            at = rng.randrange(0, len(run) - BLOCK_S + 1)
            take = run[at : at + min(BLOCK_S, need)]
            out.extend(take)
            need -= len(take)
    return Timeline(out, les)


# ============================================================================ simulation

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
    """The product's sequential gates (``rollout.analysis.error_test`` / ``latency_test`` on
    every check's cumulative counts), vectorised over releases and checks."""
    import numpy as np

    from rollout.analysis import error_test, latency_share_log_e, latency_test
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


def _stack_config(stack: str) -> Any:
    from contract.config import load_stack

    if stack == "local":
        from rollout.local.stack import local_config

        return local_config()
    return load_stack(stack, Path(__file__).resolve().parent.parent)


# ============================================================================ replay


def load_recording(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(
            f"no recording at {path}: run `python -m bench judgement --judgement-record` once"
        ) from None
    return doc


def engine_schedule(cfg: Any) -> list[tuple[int, int]]:
    """(weight, seconds) of each analysed step: settle, then the checks of its window."""
    c = cfg.canary
    sched = []
    for step in c.steps:
        if step.pause:
            continue
        checks = -(-step.analysis_s // c.interval_s)
        sched.append((int(step.weight or 0), round(c.settle_s + checks * c.interval_s) + 1))
    return sched


def _track(seconds: Sequence[Second], upto: int, canary: bool, bounds: Sequence[float]) -> Any:
    from rollout.analysis import TrackCounts

    chunk = seconds[:upto]
    if canary:
        req, err = sum(x.c_req for x in chunk), sum(x.c_err for x in chunk)
        b = [sum(x.c_buckets[i] for x in chunk) for i in range(len(bounds))]
    else:
        req, err = sum(x.s_req for x in chunk), sum(x.s_err for x in chunk)
        b = [sum(x.s_buckets[i] for x in chunk) for i in range(len(bounds))]
    return TrackCounts(req, err, tuple(zip(bounds, b, strict=True)))


def judge_engine(tl: Timeline, cfg: Any) -> tuple[str, float | None, str]:
    """Replay ``ReleaseEngine._analyse`` with the product's ``judge_metrics``: readings of the
    cumulative counters at the window start and at every check, evidence across steps."""
    from rollout.analysis import Snapshot, judge_metrics

    c = cfg.canary
    t = 0.0
    history: list[Snapshot] = []

    def read(at: float, step: int, opens: bool) -> Snapshot:
        i = int(at)
        return Snapshot(
            at,
            step,
            _track(tl.seconds, i, True, tl.bounds),
            _track(tl.seconds, i, False, tl.bounds),
            opens,
        )

    for index, step in enumerate(c.steps):
        if step.pause:
            continue
        t += c.settle_s
        window_start = t
        history.append(read(t, index, True))
        no_data_since: float | None = None
        while True:
            t += c.interval_s
            elapsed = t - window_start
            history.append(read(t, index, False))
            result, _w, _s = judge_metrics(history, c, cfg.slo)
            if result.verdict == "FAIL":
                return "ABORTED", t, result.reason
            if result.verdict == "INSUFFICIENT_DATA":
                no_data_since = t if no_data_since is None else no_data_since
                if t - no_data_since >= c.on_insufficient_data.limit_s:
                    outcome = "HELD" if c.on_insufficient_data.then == "hold" else "ABORTED"
                    return outcome, t, result.reason
                continue
            no_data_since = None
            if elapsed >= step.analysis_s:
                break
    return "PROMOTED", None, ""


def _as_sim(tl: Timeline, slot_s: float) -> dict[str, Any]:
    """A replayed release as per-slot arrays (one release) for the vectorised policies."""
    import numpy as np

    n = len(tl.seconds) // int(slot_s)

    def col(f: Any) -> Any:
        x = np.array([f(s) for s in tl.seconds[: n * int(slot_s)]], dtype=np.float64)
        return x.reshape(n, int(slot_s), *x.shape[1:]).sum(axis=1)[None]

    def bins(cum: Any) -> Any:
        return np.diff(np.concatenate([np.zeros_like(cum[..., :1]), cum], axis=-1), axis=-1)

    bc = col(lambda s: s.c_buckets)
    bs = col(lambda s: s.s_buckets)
    return {
        "nc": col(lambda s: s.c_req),
        "ec": col(lambda s: s.c_err),
        "ns": col(lambda s: s.s_req),
        "es": col(lambda s: s.s_err),
        "bc": np.concatenate([bins(bc), np.zeros_like(bc[..., :1])], axis=-1),
        "bs": np.concatenate([bins(bs), np.zeros_like(bs[..., :1])], axis=-1),
    }


def _slot_schedule(sched_s: Sequence[tuple[int, int]], slot_s: float) -> Schedule:
    steps, at = [], 0
    for w, seconds in sched_s:
        steps.append((w / 100, at, 0, int(seconds // slot_s)))
        at += int(seconds // slot_s)
    return Schedule(tuple(steps), 1, at, slot_s)


def judge_legacy(tl: Timeline, cfg: Any) -> tuple[str, float | None, str]:
    """The gates before the sequential tests, on the replayed seconds."""
    import numpy as np

    c = cfg.canary
    t = 0.0
    les = tl.bounds
    bounds = np.array([b for b in les if not math.isinf(b)])
    for step in c.steps:
        if step.pause:
            continue
        t += c.settle_s
        window_start = t
        while True:
            t += c.interval_s
            elapsed = t - window_start
            rng_s = max(elapsed, 2 * c.interval_s, 3.0)
            w, _ = tl.window(t - rng_s, t)
            cb = np.array(w.c_buckets[: len(bounds)])[None]
            sb = np.array(w.s_buckets[: len(bounds)])[None]
            sim_like = {
                "nc": np.array([[w.c_req]]),
                "ec": np.array([[w.c_err]]),
                "ns": np.array([[w.s_req]]),
                "es": np.array([[w.s_err]]),
            }
            final = elapsed >= step.analysis_s
            nc, ec, ns, es = (float(sim_like[k][0, 0]) for k in ("nc", "ec", "ns", "es"))
            if nc >= c.min_requests:
                stable = es / ns if ns > 0 else math.inf
                limit = (
                    stable + c.max_error_rate_increase
                    if stable + c.max_error_rate_increase < cfg.slo.max_error_rate
                    else cfg.slo.max_error_rate
                )
                rate = ec / nc
                err = rate > limit if final else float(_wilson_lower(ec, nc, 0.99)) > limit
                p95_c = float(_quantile_ms(0.95, bounds, cb, np.array([nc]))[0])
                p95_s = float(_quantile_ms(0.95, bounds, sb, np.array([ns]))[0])
                rel = max(p95_s * c.max_p95_ratio, p95_s + c.min_p95_increase_ms)
                lat_limit = rel if p95_s > 0 and rel < cfg.slo.max_p95_ms else cfg.slo.max_p95_ms
                lat = not math.isnan(p95_c) and p95_c > lat_limit * (1.0 if final else 1.25)
                if err or lat:
                    return "ABORTED", t, "errors" if err else "latency"
            if final:
                break
    return "PROMOTED", None, ""


def replay(doc: dict[str, Any], good_n: int, fault_seeds: int) -> dict[str, Any]:
    from rollout.local.stack import local_config

    les: list[str] = sorted(
        {
            le
            for s in doc["scenarios"].values()
            for ph in s["phases"]
            for tr in ("canary", "stable")
            for le in ph[tr]["le"]
        },
        key=float,
    )
    cfg = local_config()
    sched_engine = engine_schedule(cfg)
    sched_long = [(w, max(s, FIXED_INTERVAL_S)) for w, s in sched_engine]

    def pool_of(names: Sequence[str]) -> dict[int, list[list[Second]]]:
        pool: dict[int, list[list[Second]]] = {}
        for name in names:
            for ph in doc["scenarios"][name]["phases"]:
                pool.setdefault(int(ph["weight"]), []).append(_seconds(ph, les))
        return pool

    import numpy as np

    bounds = np.array([float(le) for le in les if le != "+Inf"])
    good = [n for n, s in doc["scenarios"].items() if s["good"]]
    out: dict[str, Any] = {"scenarios": {}}
    cases: list[tuple[str, list[str], int]] = [("good", good, good_n)]
    cases += [(n, [n], fault_seeds) for n, s in doc["scenarios"].items() if not s["good"]]
    for label, names, seeds in cases:
        pool = pool_of(names)
        rows = []
        for seed in range(seeds):
            tl_e = build(pool, sched_engine, random.Random(seed), les)
            tl_f = build(pool, sched_long, random.Random(10_000 + seed), les)
            row: dict[str, Any] = {"seed": seed}
            for policy, (outcome, at, why) in (
                ("current", judge_legacy(tl_e, cfg)),
                ("sequential", judge_engine(tl_e, cfg)),
            ):
                row[policy] = [outcome, at]
                row[f"{policy}_reason"] = why
            sim = _as_sim(tl_f, SLOT_S)
            sch = _slot_schedule(sched_long, SLOT_S)
            for policy, times in (
                ("fixed", detect_fixed(sim, sch, bounds)),
                ("kayenta", detect_kayenta(sim, sch, bounds)),
            ):
                t = float(times[0])
                row[policy] = ["PROMOTED", None] if math.isnan(t) else ["ABORTED", t]
            rows.append(row)
        out["scenarios"][label] = {
            "fault": "good release" if label == "good" else doc["scenarios"][label]["fault"],
            "runs": rows,
        }
        progress(NAME, f"replayed {label}: {seeds} releases")
    return out


# ============================================================================ the run


def _stats(times: Sequence[float | None]) -> tuple[int, float | None, float | None]:
    got = [float(t) for t in times if t is not None]
    if not got:
        return 0, None, None
    return len(got), median(got), percentile(got, 90)


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
    met = True
    # false rollbacks per 1,000 healthy releases, per policy and traffic level (all baselines)
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
    # detection: median and p90 seconds per fault, policy and level
    faults = [(b, f"{m:g}x") for b in BASELINES if b > 0 for m in ERROR_FAULTS]
    faults += [(LATENCY_FAULT_BASELINE, f) for f in (*LATENCY_FAULTS, "tail")]
    speed = {}
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
            seq = speed[(base, fault, level, "sequential")]
            report.figure(
                f"detect_{fault}_{base:.1%}_{level}".replace("%", "pct"),
                seq[2],
                "s",
                f"{name}: median/p90 " + "; ".join(cells),
            )
    # the detection targets: 5x errors and +150 ms
    for base, fault in [(b, "5x") for b in BASELINES if b > 0] + [
        (LATENCY_FAULT_BASELINE, "+150ms")
    ]:
        for level in LEVELS:
            k, n, med, _p = speed[(base, fault, level, "sequential")]
            _kf, _nf, medf, _pf = speed[(base, fault, level, "fixed")]
            _kc, _nc, medc, _pc = speed[(base, fault, level, "current")]
            beyond = fault != "5x" or base * 5 > min(
                cfg.slo.max_error_rate, base + cfg.canary.max_error_rate_increase
            )
            if not beyond:
                continue
            if medf is not None and (med is None or med > medf):
                met = False
            if level == "medium" and medc is not None and (med is None or med > medc):
                met = False
    progress(NAME, "replaying the local stack's recorded series")
    res = replay(doc, args.judgement_good, args.judgement_fault_seeds)
    report.data["recorded"] = res
    for label, sc in res["scenarios"].items():
        rows = sc["runs"]
        cells = []
        for policy in POLICIES:
            times = [r[policy][1] for r in rows if r[policy][0] != "PROMOTED"]
            k, med, p90 = _stats(times)
            cells.append(f"{policy} {k}/{len(rows)}" + (f" {med:.0f}/{p90:.0f}s" if med else ""))
        report.figure(f"recorded_{label}", None, "", f"{sc['fault']}: " + "; ".join(cells))
    worst_seq = max(
        1000
        * _stats(sim["cases"][f"{lv}/{b:.1%}/healthy"]["detect_s"]["sequential"])[0]
        / args.judgement_healthy
        for lv in LEVELS
        for b in BASELINES
    )
    worst_cur = max(
        1000
        * _stats(sim["cases"][f"{lv}/{b:.1%}/healthy"]["detect_s"]["current"])[0]
        / args.judgement_healthy
        for lv in LEVELS
        for b in BASELINES
    )
    med = speed[(0.005, "5x", "medium", "sequential")][2]
    medc = speed[(0.005, "5x", "medium", "current")][2]
    medf = speed[(0.005, "5x", "medium", "fixed")][2]
    report.finish(
        f"false rollbacks per 1,000 healthy releases (worst level and baseline): sequential "
        f"{worst_seq:.1f} vs current {worst_cur:.1f} (target <= {1000 * alpha:g}); 5x errors of "
        f"0.5% at medium traffic: median {_s(med)} sequential, {_s(medc)} current, {_s(medf)} "
        f"fixed ({'MET' if met else 'MISSED'})"
    )
    return report


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.0f} s"
