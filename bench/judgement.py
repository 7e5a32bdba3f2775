"""Canary judgement: time to detection and false rollbacks, the project's gates vs fixed thresholds.

Recording (``--judgement-record``, about ten minutes, done once): the local stack
(``rollout.local.stack.LocalStack``: real Postgres, Redis, nginx, Prometheus scraping every app
instance each second) runs the drill's load; for each scenario a canary is deployed through
``LocalTarget`` (good releases, and the fault switch ``PORTAL_FAULT_*``: 1%, 5%, 20% errors,
+100 ms and +300 ms latency) and walked through the release steps' weights (10/25/50/100%).
Prometheus' per-second cumulative series per track (requests, 5xx, latency histogram buckets)
are turned into per-second increments and saved to ``bench/data/judgement-recording.json``.

Replay (the default run, seconds): releases are rebuilt from the recorded seconds of the
matching weight (block bootstrap with a seed; 5-second blocks keep the real burstiness) and
judged by

(a) the project's gates: ``rollout.analysis.judge_metrics`` with the local stack's config
    (``rollout.local.stack.local_config``), driven the way ``ReleaseEngine._analyse`` drives it
    (settle, a check every interval over the window so far, the final plain comparison, the
    insufficient-data policy);
(b) a fixed-threshold policy with the defaults other progressive-delivery tools document: one
    check per 60 s interval over the last 60 s, success rate >= 99% and p99 <= 500 ms, the first
    failed check aborts (one step per interval).

Time to detection counts from the first canary traffic (weight set) to the failing verdict; the
engine's own overhead (queries, ledger writes) is not in it. Good releases are judged to the
end; any abort of one is a false rollback.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchError, Report, positive_float, positive_int, progress, server_root

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
    from rollout.analysis import selector

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
    from rollout.local.target import LocalTarget
    from rollout.prometheus import Prometheus
    from rollout.target import ReleaseSpec

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
            target = LocalTarget(stack)
            prom = Prometheus(state["prometheus_url"])
            load = LoadGenerator(state["nginx_url"], rate_per_s=args.judgement_rate).start()
            try:
                time.sleep(5)  # the stable instances' series exist before the first canary
                for n, (name, (env, desc, good)) in enumerate(SCENARIOS.items()):
                    version = f"2.0.{n}"
                    steps = ", ".join(f"{w}% {d:g}s" for w, d in zip(WEIGHTS, phase_s, strict=True))
                    progress(NAME, f"recording {name} ({desc}): canary {version}, {steps}")
                    target.deploy_canary(ReleaseSpec(f"bench-{name}", version, None, env), 1)
                    time.sleep(2)  # discovered and scraped once before it takes traffic
                    phases = []
                    for w, seconds in zip(WEIGHTS, phase_s, strict=True):
                        target.set_weight(w)
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
                    target.rollback()
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


def engine_schedule() -> tuple[list[tuple[int, int]], Any]:
    from rollout.local.stack import local_config

    cfg = local_config()
    c = cfg.canary
    sched = []
    for step in c.steps:
        if step.pause:
            continue
        checks = -(-step.analysis_s // c.interval_s)
        sched.append((int(step.weight or 0), round(c.settle_s + checks * c.interval_s) + 1))
    return sched, cfg


def judge_engine(tl: Timeline, cfg: Any) -> tuple[str, float | None, str]:
    """Replay ``ReleaseEngine._analyse``: (outcome, seconds to the failing verdict, reason)."""
    from rollout.analysis import WindowSample, judge_metrics

    c = cfg.canary
    t = 0.0
    for step in c.steps:
        if step.pause:
            continue
        t += c.settle_s
        window_start = t
        no_data_since: float | None = None
        while True:
            t += c.interval_s
            elapsed = t - window_start
            rng_s = max(elapsed, 2 * c.interval_s, 3.0)
            w, _ = tl.window(t - rng_s, t)
            sample = WindowSample(
                canary_requests=w.c_req,
                canary_errors=w.c_err,
                stable_requests=w.s_req,
                stable_errors=w.s_err,
                canary_p95_ms=tl.quantile_ms(0.95, w.c_buckets),
                stable_p95_ms=tl.quantile_ms(0.95, w.s_buckets),
            )
            result = judge_metrics(sample, c, cfg.slo, elapsed_s=elapsed, window_s=step.analysis_s)
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


def judge_fixed(tl: Timeline, checks: int) -> tuple[str, float | None, str]:
    """One check per 60 s over the last 60 s; the first failed check aborts."""
    for k in range(1, checks + 1):
        t = k * FIXED_INTERVAL_S
        w, _ = tl.window(t - FIXED_INTERVAL_S, t)
        if w.c_req <= 0:
            return "ABORTED", float(t), "no canary requests in the interval (no values)"
        success = 1 - w.c_err / w.c_req
        p99 = tl.quantile_ms(0.99, w.c_buckets)
        if success < FIXED_MIN_SUCCESS:
            return "ABORTED", float(t), f"success rate {success:.2%} < 99%"
        if p99 is not None and p99 > FIXED_MAX_P99_MS:
            return "ABORTED", float(t), f"p99 {p99:.0f} ms > 500 ms"
    return "PROMOTED", None, ""


def load_recording(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(
            f"no recording at {path}: run `python -m bench judgement --judgement-record` once"
        ) from None
    return doc


def replay(doc: dict[str, Any], good_n: int, fault_seeds: int) -> dict[str, Any]:
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
    sched_engine, cfg = engine_schedule()
    fixed_checks = len(sched_engine)
    sched_fixed = [(w, FIXED_INTERVAL_S) for w, _ in sched_engine]

    def pool_of(names: Sequence[str]) -> dict[int, list[list[Second]]]:
        pool: dict[int, list[list[Second]]] = {}
        for name in names:
            for ph in doc["scenarios"][name]["phases"]:
                pool.setdefault(int(ph["weight"]), []).append(_seconds(ph, les))
        return pool

    good = [n for n, s in doc["scenarios"].items() if s["good"]]
    out: dict[str, Any] = {"scenarios": {}}
    cases: list[tuple[str, list[str], int]] = [("good", good, good_n)]
    cases += [(n, [n], fault_seeds) for n, s in doc["scenarios"].items() if not s["good"]]
    for label, names, seeds in cases:
        pool = pool_of(names)
        rows = []
        for seed in range(seeds):
            tl_e = build(pool, sched_engine, random.Random(seed), les)
            tl_f = build(pool, sched_fixed, random.Random(10_000 + seed), les)
            e = judge_engine(tl_e, cfg)
            f = judge_fixed(tl_f, fixed_checks)
            rows.append(
                {
                    "seed": seed,
                    "engine": e[:2],
                    "engine_reason": e[2],
                    "fixed": f[:2],
                    "fixed_reason": f[2],
                }
            )
        out["scenarios"][label] = {
            "fault": "good release" if label == "good" else doc["scenarios"][label]["fault"],
            "runs": rows,
        }
    out["engine_release_s"] = sum(s for _, s in sched_engine)
    out["fixed_release_s"] = fixed_checks * FIXED_INTERVAL_S
    return out


def _detection(rows: list[dict[str, Any]], policy: str) -> tuple[int, list[float]]:
    times = [r[policy][1] for r in rows if r[policy][0] != "PROMOTED"]
    return len(times), [float(t) for t in times]


def run(args: argparse.Namespace) -> Report:
    if args.judgement_record:
        record(args)
    doc = load_recording(args.judgement_data)
    report = Report(
        NAME,
        params={
            "recording": str(args.judgement_data),
            "recorded_at": doc.get("recorded_at"),
            "recorded_rate": doc.get("rate"),
            "phase_s": doc.get("phase_s"),
            "good_releases": args.judgement_good,
            "fault_seeds": args.judgement_fault_seeds,
            "fixed": {
                "interval_s": FIXED_INTERVAL_S,
                "min_success": FIXED_MIN_SUCCESS,
                "max_p99_ms": FIXED_MAX_P99_MS,
                "failed_checks": 1,
            },
        },
    )
    progress(
        NAME,
        f"replaying {args.judgement_good} good releases and "
        f"{args.judgement_fault_seeds} replays of each fault",
    )
    res = replay(doc, args.judgement_good, args.judgement_fault_seeds)
    report.data = res
    met = True
    for label, sc in res["scenarios"].items():
        rows = sc["runs"]
        n = len(rows)
        if label == "good":
            for policy, name in (("engine", "gates"), ("fixed", "fixed")):
                k, _ = _detection(rows, policy)
                report.figure(
                    f"false_rollbacks_{name}",
                    k,
                    f"of {n}",
                    f"good releases ({name}: "
                    f"{res['engine_release_s' if policy == 'engine' else 'fixed_release_s']}"
                    " s of analysis each)",
                )
                if policy == "engine" and k:
                    met = False
            continue
        for policy, name in (("engine", "gates"), ("fixed", "fixed")):
            k, times = _detection(rows, policy)
            if k:
                note = (
                    f"{sc['fault']}: detected {k}/{n}, median {statistics.median(times):.0f}"
                    f" s, max {max(times):.0f} s"
                )
                value: float | None = statistics.median(times)
            else:
                note, value = f"{sc['fault']}: not detected in {n} releases", None
            report.figure(f"detect_s_{name}_{label}", value, "s", note)
            if (
                policy == "engine"
                and label in MUST_DETECT
                and (k < n or max(times) > DETECT_WITHIN_S)
            ):
                met = False
    g = res["scenarios"]
    parts = []
    for label in MUST_DETECT:
        k, times = _detection(g[label]["runs"], "engine")
        kf, times_f = _detection(g[label]["runs"], "fixed")
        parts.append(
            f"{g[label]['fault']} gates {max(times) if times else float('nan'):.0f} s"
            f" ({k}/{len(g[label]['runs'])}) vs fixed "
            + (f"{max(times_f):.0f} s ({kf}/{len(g[label]['runs'])})" if times_f else "never")
        )
    fr_e, _ = _detection(g["good"]["runs"], "engine")
    fr_f, _ = _detection(g["good"]["runs"], "fixed")
    report.finish(
        f"worst-case detection: {'; '.join(parts)}; false rollbacks {fr_e}/{len(g['good']['runs'])}"
        f" gates vs {fr_f} fixed (target: faults >= 5% within 30 s, no false rollbacks: "
        f"{'MET' if met else 'MISSED'})"
    )
    return report
