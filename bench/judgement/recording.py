"""The judgement benchmark's recording: real series from the local stack, and their replay
through the four policies (see ``bench.judgement``)."""

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
    progress,
    server_root,
)
from bench.judgement.simulation import (
    FIXED_INTERVAL_S,
    NAME,
    SLOT_S,
    Schedule,
    _quantile_ms,
    _wilson_lower,
    detect_fixed,
    detect_kayenta,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "judgement-recording.json"
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
            load = LoadGenerator(
                state["nginx_url"], stack.credentials(), rate_per_s=args.judgement_rate
            ).start()
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
    from rollout.readings import TrackCounts

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
    from rollout.analysis import judge_metrics
    from rollout.readings import Snapshot

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
