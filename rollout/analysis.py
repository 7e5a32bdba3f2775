"""The release gates: pure functions from measurements to a verdict. No I/O here.

Each check round gives each gate one verdict: PASS, FAIL, INSUFFICIENT_DATA or PROVIDER_ERROR
(the last one is produced by the engine when Prometheus does not answer).

What the metrics gate observes. Every ``interval`` the engine reads, per track, the cumulative
Prometheus counters summed over the track's instances: requests, 5xx errors and the latency
histogram's buckets (instant queries, no ``rate``/``increase`` extrapolation, so the counts are
whole requests). At the first check of a step it also reads them as they were when the step's
window opened (after ``settle``). Consecutive readings within a step give per-interval
increments; an interval in which a counter went backwards (an instance restarted or went away)
carries no evidence. The release's evidence is the sum over every step's intervals, so it keeps
growing from step to step instead of starting again, and one error budget covers the release.

The guarantee. ``canary.alpha`` is the probability that a healthy canary is ever rolled back by
the metrics gate, over the whole release, however often it is checked. Every FAIL below is an
anytime-valid test (``rollout.sequential``): an e-process that stays below ``1/level`` for ever
with probability at least ``1 - level`` when its null holds, evaluated on cumulative counts, so
checking it at every interval and across steps (whatever the weights) costs nothing. alpha is
split in four equal parts (``SHARES``); a FAIL needs an e-value of ``4 / alpha``:

Error rate, two ways to fail.
- Over the SLO: the canary's rate is surely above ``maxErrorRate`` (the one-rate e-process
  against it reaches the level). Valid whatever the rates do over time, as long as the canary's
  never exceeds the SLO (alpha/4).
- Over stable plus the margin: the two-track e-process against "canary rate at most stable's
  plus ``maxErrorRateIncrease``" (``log_e_difference``: no bound on stable's rate has to be
  paid for first) reaches the level, *and* so does the share test: the canary's errors are
  over-represented against its traffic share, interval by interval. Why both: the two-track
  test compares release-long rates, exact when each track's rate is steady but fooled when a
  background shared by both tracks moves while the weights change (the canary's requests lean
  to the later steps, stable's to the earlier); the share test is exact under any such common
  drift (each interval is conditioned on its own split) but cannot carry an additive margin.
  A FAIL that needs both keeps the bound when either model holds: a steady healthy canary
  fails only through the SLO test or the two-track test (alpha/4 + alpha/4), a healthy canary
  under common drift (never worse than stable at any moment, under the SLO) only through the
  SLO test or the share test (alpha/4 + alpha/4). So errors spend at most alpha/2.

Latency, the same shape on the histogram. "p95 above x" means "more than 5% of requests slower
than x": a rate of requests beyond one bucket bound. The canary's p95 is surely above bound
``b`` when the one-rate e-process against "at most 5% beyond ``b``" reaches the level; stable's
p95 is surely at most ``b`` when the one against "at least 5% beyond ``b``" does. One test per
track covers every bound at once: a false "surely above" at any bound at or above the true
p95 implies one at the first such bound (fewer requests are slower than a higher bound), so
there is no multiplicity (alpha/4 each). The canary fails when its p95 is surely above
``maxP95Ms``, or surely above ``max(maxP95Ratio x s, s + minP95IncreaseMs)`` where ``s`` is
the bound stable's p95 is surely under, and the share test on slow requests (mixed over every
bucket bound) agrees, for the same reason as with errors. Bucket resolution makes both sides
conservative: a canary p95 between two bounds counts as the lower one, stable's as the higher.
With no request slower than a bound, being sure that fewer than 5% are takes about 120
requests at alpha/4 = 0.25% (0.95^n must fall below it), so the relative latency test needs
that much stable traffic first.

PASS at any check means "no evidence of a regression at alpha yet"; at the end of a step's
window it passes the step. ``minRequests`` is only a floor: below that many canary requests in
the step's window the verdict is INSUFFICIENT_DATA instead of PASS (a FAIL needs no minimum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from contract.config import CanaryConfig, Slo
from contract.promql import track_selector
from rollout.ports import HealthProbe
from rollout.sequential import (
    log_e_above,
    log_e_below,
    log_e_difference,
    log_e_share,
    lower_bound,
    upper_bound,
)

Verdict = Literal["PASS", "FAIL", "INSUFFICIENT_DATA", "PROVIDER_ERROR"]
QUANTILE = 0.95
SHARES = 4
"""alpha is spent in this many equal parts: canary and stable bounds, for errors and latency."""

Array = NDArray[np.float64]


# ------------------------------------------------------------------------------ readings


@dataclass(frozen=True)
class TrackCounts:
    """One track's cumulative counters at one instant, summed over its instances."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()
    """``(upper bound in seconds, cumulative count)`` of the latency histogram, ``inf`` last."""

    def to_list(self, les: Sequence[float]) -> list[float]:
        """``[requests, errors, count at or below each of les...]`` (compact, for the ledger)."""
        cum = dict(self.buckets)
        return [_compact(self.requests), _compact(self.errors)] + [
            _compact(cum.get(le, 0.0)) for le in les
        ]

    @classmethod
    def from_list(cls, values: Sequence[float], les: Sequence[float]) -> TrackCounts:
        counts = [float(v) for v in values]
        requests, errors = [*counts, 0.0, 0.0][:2]
        return cls(requests, errors, tuple(zip(les, counts[2:], strict=False)))


@dataclass(frozen=True)
class Snapshot:
    """Both tracks' counters at ``at``; ``opens`` marks the reading at a step window's start."""

    at: float
    step: int
    canary: TrackCounts
    stable: TrackCounts
    opens: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Compact: the bucket bounds once, then per track requests, errors and the
        cumulative count at each bound (a prod release records a few hundred of these)."""
        les = sorted({le for t in (self.canary, self.stable) for le, _ in t.buckets})
        return {
            "at": round(self.at, 3),
            "step": self.step,
            "opens": self.opens,
            "le": [_le_text(le) for le in les],
            "canary": self.canary.to_list(les),
            "stable": self.stable.to_list(les),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Snapshot:
        les = [float(le) for le in d.get("le") or ()]
        return cls(
            float(d["at"]),
            int(d["step"]),
            TrackCounts.from_list(d.get("canary") or (), les),
            TrackCounts.from_list(d.get("stable") or (), les),
            bool(d.get("opens")),
        )


def _compact(value: float) -> float:
    """Whole counts as ints in JSON (44, not 44.0)."""
    return int(value) if float(value).is_integer() else round(float(value), 3)


def _le_text(le: float) -> str:
    return "+Inf" if math.isinf(le) else f"{le:g}"


def snapshots_of(samples: Sequence[Mapping[str, Any]]) -> list[Snapshot]:
    """The readings stored in a release's ledger samples, in order (for resume)."""
    return [Snapshot.from_dict(s) for sample in samples for s in sample.get("snapshots") or ()]


@dataclass(frozen=True)
class Intervals:
    """Per-interval increments of the release so far (arrays over intervals)."""

    bounds_s: Array
    """Finite histogram bounds (seconds)."""
    canary: Array
    """Shape (intervals, 2 + bounds): requests, errors, then requests at or below each bound."""
    stable: Array
    window_canary: Array
    """The current step's window so far (same columns)."""
    window_stable: Array
    window_s: float


def intervals(history: Sequence[Snapshot]) -> Intervals:
    """Increments between consecutive readings of one step window (each window starts at its
    ``opens`` reading, or at its first reading when that one is missing)."""
    les = sorted({le for s in history for t in (s.canary, s.stable) for le, _ in t.buckets})
    finite = [le for le in les if not math.isinf(le)]

    def row(t: TrackCounts) -> Array:
        cum = dict(t.buckets)
        out = [t.requests, t.errors]
        last = 0.0
        for le in finite:
            last = cum.get(le, last)
            out.append(last)
        return np.array(out, dtype=np.float64)

    width = 2 + len(finite)
    rows_c: list[Array] = []
    rows_s: list[Array] = []
    start: Snapshot | None = None
    prev: Snapshot | None = None
    for snap in history:
        if snap.opens or prev is None or snap.step != prev.step:
            start = prev = snap
            continue
        dc, ds = row(snap.canary) - row(prev.canary), row(snap.stable) - row(prev.stable)
        if (dc >= 0).all() and (ds >= 0).all():
            rows_c.append(dc)
            rows_s.append(ds)
        prev = snap
    empty = np.zeros((0, width))
    win_c = win_s = np.zeros(width)
    window_s = 0.0
    if start is not None and prev is not None:
        win_c = np.maximum(row(prev.canary) - row(start.canary), 0.0)
        win_s = np.maximum(row(prev.stable) - row(start.stable), 0.0)
        window_s = prev.at - start.at
    return Intervals(
        np.array(finite, dtype=np.float64),
        np.array(rows_c) if rows_c else empty,
        np.array(rows_s) if rows_s else empty,
        win_c,
        win_s,
        window_s,
    )


# ------------------------------------------------------------------------------ the tests


@dataclass(frozen=True)
class ErrorTest:
    """The error-rate test at each check (arrays broadcast over releases and checks)."""

    fail: Any
    fail_slo: Any
    slo_log_e: Any
    """Log e-value of "the canary's rate is above the SLO"."""
    relative_log_e: Any
    """Log e-value of "the canary's rate is more than the margin above stable's"."""
    guard_log_e: Any
    """Log e-value of the share test: the canary's errors over-represented per request."""
    limit: Any
    """The rate limit as the counts put it: the SLO, or stable's rate plus the margin."""
    from_slo: Any
    level: float
    """An e-value must reach this (``SHARES / alpha``) to count."""


def error_test(
    nc: ArrayLike,
    ec: ArrayLike,
    ns: ArrayLike,
    es: ArrayLike,
    guard_log_e: ArrayLike,
    *,
    alpha: float,
    slo_rate: float,
    margin: float,
) -> ErrorTest:
    """``nc``/``ec``/``ns``/``es``: the release's requests and errors so far per track;
    ``guard_log_e``: the share test of the same intervals (``rollout.sequential``)."""
    level = math.log(SHARES / alpha)
    nc_, ns_ = np.asarray(nc, dtype=np.float64), np.asarray(ns, dtype=np.float64)
    stable = np.asarray(es, dtype=np.float64) / np.where(ns_ > 0, ns_, 1)
    relative = np.where(ns_ > 0, stable + margin, np.inf)
    from_slo = relative >= slo_rate
    slo_log_e = np.asarray(log_e_above(slo_rate, ec, nc_))
    rel_log_e = np.asarray(log_e_difference(margin, ec, nc_, es, ns_))
    guard = np.asarray(guard_log_e, dtype=np.float64)
    fail_slo = slo_log_e >= level
    fail = fail_slo | ((rel_log_e >= level) & (guard >= level))
    return ErrorTest(
        fail=fail,
        fail_slo=fail_slo,
        slo_log_e=slo_log_e,
        relative_log_e=rel_log_e,
        guard_log_e=guard,
        limit=np.minimum(relative, slo_rate),
        from_slo=from_slo,
        level=SHARES / alpha,
    )


def difference_cs(ec: float, nc: float, es: float, ns: float, alpha: float) -> tuple[float, float]:
    """The (1 - alpha/4) confidence sequence of canary minus stable error rate, each end the
    inversion of ``log_e_difference`` (the lower end is what the relative test compares with
    the margin)."""
    level = math.log(SHARES / alpha)
    if nc <= 0 or ns <= 0:
        return (-1.0, 1.0)

    def edge(above: bool) -> float:
        # three rounds of a 64-point grid: each narrows the bracket 63-fold (to about 1e-5)
        lo, hi = -1.0, 1.0
        for _ in range(3):
            grid = np.linspace(lo, hi, 64)
            rejected = np.asarray(log_e_difference(grid, ec, nc, es, ns, above=above)) >= level
            if above:  # rejecting "at most d": the difference is surely above d
                i = int(np.max(np.nonzero(rejected)[0], initial=-1))
                lo, hi = (grid[i], grid[min(i + 1, 63)]) if i >= 0 else (-1.0, grid[0])
            else:
                i = int(np.min(np.nonzero(rejected)[0], initial=64))
                lo, hi = (grid[max(i - 1, 0)], grid[i]) if i < 64 else (grid[63], 1.0)
        return float(lo if above else hi)

    return edge(True), edge(False)


def relative_p95_limit(stable_ms: ArrayLike, canary: CanaryConfig) -> Any:
    """The p95 the canary may reach next to a stable p95 of ``stable_ms``."""
    s = np.asarray(stable_ms, dtype=np.float64)
    return np.maximum(s * canary.max_p95_ratio, s + canary.min_p95_increase_ms)


@dataclass(frozen=True)
class LatencyTest:
    """The p95 test at each check; bounds in ms (0: nothing sure yet; inf: no bound yet)."""

    fail: Any
    fail_slo: Any
    canary_above_ms: Any
    """The canary's p95 is surely above this bucket bound."""
    stable_at_most_ms: Any
    """Stable's p95 is surely at most this bucket bound."""
    limit_ms: Any
    from_slo: Any
    canary_log_e: Any
    """Log e-value of "over 5% of canary requests are slower than the limit's bucket"."""
    guard_log_e: Any
    level: float


def latency_test(
    canary_le: ArrayLike,
    canary_n: ArrayLike,
    stable_le: ArrayLike,
    stable_n: ArrayLike,
    bounds_ms: ArrayLike,
    guard_log_e: ArrayLike,
    *,
    alpha: float,
    slo_ms: float,
    canary: CanaryConfig,
) -> LatencyTest:
    """``*_le``: requests at or below each finite bucket bound (last axis) over the release so
    far; ``*_n``: all requests (the ``+Inf`` bucket)."""
    level = math.log(SHARES / alpha)
    bounds = np.asarray(bounds_ms, dtype=np.float64)
    nc = np.asarray(canary_n, dtype=np.float64)
    ns = np.asarray(stable_n, dtype=np.float64)
    slow_c = np.maximum(nc[..., None] - np.asarray(canary_le, dtype=np.float64), 0.0)
    slow_s = np.maximum(ns[..., None] - np.asarray(stable_le, dtype=np.float64), 0.0)
    tail = 1 - QUANTILE

    def canary_sure(i: Any) -> Any:  # "the canary's p95 is surely above bound i"
        s = np.take_along_axis(slow_c, i[..., None], axis=-1)[..., 0]
        return np.asarray(log_e_above(tail, s, nc)) >= level

    def stable_sure(i: Any) -> Any:  # "stable's p95 is surely at most bound i"
        s = np.take_along_axis(slow_s, i[..., None], axis=-1)[..., 0]
        return np.asarray(log_e_below(tail, s, ns)) >= level

    # Fewer requests are slower than a higher bound, so "surely above" holds for a run of
    # bounds from the bottom and "surely at most" for a run to the top: bisect for the edges.
    last_above = _edge(canary_sure, bounds.size, nc.shape, first_true=False)
    first_at_most = _edge(stable_sure, bounds.size, ns.shape, first_true=True)
    padded = np.concatenate([[0.0], bounds, [np.inf]])
    canary_above = padded[last_above + 1]
    stable_at_most = padded[first_at_most + 1]
    relative = relative_p95_limit(stable_at_most, canary)
    from_slo = relative >= slo_ms
    limit = np.minimum(relative, slo_ms)
    # the e-value at the first bucket bound at or above the limit (the one that decides)
    if bounds.size:
        at = np.minimum(np.searchsorted(bounds, limit), bounds.size - 1)
        s_at = np.take_along_axis(slow_c, np.asarray(at)[..., None], axis=-1)[..., 0]
        limit_log_e = np.asarray(log_e_above(tail, s_at, nc))
    else:
        limit_log_e = np.zeros_like(limit)
    guard = np.asarray(guard_log_e, dtype=np.float64)
    fail_slo = canary_above >= slo_ms
    fail = fail_slo | ((canary_above >= relative) & (guard >= level))
    return LatencyTest(
        fail=fail,
        fail_slo=fail_slo,
        canary_above_ms=canary_above,
        stable_at_most_ms=stable_at_most,
        limit_ms=limit,
        from_slo=from_slo,
        canary_log_e=limit_log_e,
        guard_log_e=guard,
        level=SHARES / alpha,
    )


def _edge(sure: Any, size: int, shape: tuple[int, ...], *, first_true: bool) -> Any:
    """Bisection over bound indices for a predicate that is True on a run at the top
    (``first_true``: the first index of it, ``size`` when none) or at the bottom (the last
    index of it, -1 when none), elementwise over ``shape``."""
    lo = np.full(shape, -1, dtype=np.int64)  # below the answer (or the answer when last)
    hi = np.full(shape, size, dtype=np.int64)
    for _ in range(max(1, size).bit_length() + 1):
        open_ = hi - lo > 1
        if not open_.any():
            break
        mid = np.where(open_, (lo + hi) // 2, np.maximum(lo, 0))
        ok = np.asarray(sure(np.clip(mid, 0, max(size - 1, 0)))) & open_
        if first_true:
            hi = np.where(ok, mid, hi)
            lo = np.where(open_ & ~ok, mid, lo)
        else:
            lo = np.where(ok, mid, lo)
            hi = np.where(open_ & ~ok, mid, hi)
    return hi if first_true else lo


def latency_share_log_e(
    canary_n: ArrayLike,
    canary_le: ArrayLike,
    stable_n: ArrayLike,
    stable_le: ArrayLike,
    cumulative: bool = False,
) -> Any:
    """The share test on slow requests, mixed with equal weights over the bucket bounds: per
    interval (axis -1 of ``*_n``, -2 of ``*_le``), the canary's share of the requests slower
    than each bound against its share of all requests."""
    nc, ns = np.asarray(canary_n, dtype=np.float64), np.asarray(stable_n, dtype=np.float64)
    le_c, le_s = np.asarray(canary_le, dtype=np.float64), np.asarray(stable_le, dtype=np.float64)
    bounds = le_c.shape[-1]
    if bounds == 0 or nc.shape[-1] == 0:
        return np.zeros(nc.shape if cumulative else nc.shape[:-1])
    # (..., bounds, intervals)
    slow_c = np.swapaxes(np.maximum(nc[..., None] - le_c, 0.0), -1, -2)
    slow_s = np.swapaxes(np.maximum(ns[..., None] - le_s, 0.0), -1, -2)
    per_bound = np.asarray(
        log_e_share(slow_c, slow_s, nc[..., None, :], ns[..., None, :], cumulative=cumulative)
    )
    axis = -2 if cumulative else -1
    return special.logsumexp(per_bound, axis=axis) - math.log(bounds)


# ------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    value: float | None
    threshold: float | None
    baseline: float | None
    query: str
    detail: str
    evalue: float | None = None
    """The e-value against the limit that binds (FAIL once it reaches ``needed``)."""
    needed: float | None = None
    cs: tuple[float | None, float | None] | None = None
    """The confidence sequence at this check: canary - stable error rate, or the canary's p95
    (ms, between bucket bounds; ``None`` above: no bound sure yet)."""


@dataclass(frozen=True)
class GateResult:
    gate: str
    """``health`` or ``metrics``."""
    verdict: Verdict
    checks: tuple[Check, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "verdict": self.verdict,
            "reason": self.reason,
            "checks": [asdict(c) for c in self.checks],
        }

    def failing(self) -> Check | None:
        return next((c for c in self.checks if c.verdict == "FAIL"), None)


@dataclass(frozen=True)
class MetricsSample:
    """What one check round of the metrics gate stores in the ledger: the readings taken
    (so a resumed release rebuilds its evidence), the step window so far, and per check the
    statistic and confidence sequence the report draws."""

    snapshots: tuple[Snapshot, ...]
    window: dict[str, float | None]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshots": [s.to_dict() for s in self.snapshots],
            **_rounded(self.window),
            "stats": _rounded(self.stats),
        }


def _rounded(value: Any) -> Any:
    """Floats to 6 significant digits, all the way down (the ledger is read by people and
    kept in a ConfigMap)."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


# ------------------------------------------------------------------------------------ queries


def queries(canary_version: str) -> dict[str, str]:
    """The PromQL of one reading: both tracks' cumulative counters summed over their
    instances, in two queries. ``latency``: the histogram's buckets by ``track`` and ``le``
    (its ``+Inf`` bucket counts every request); ``errors``: 5xx responses by ``track``."""
    parts: dict[str, list[str]] = {"latency": [], "errors": []}
    for track, version in (("canary", canary_version), ("stable", None)):
        sel = track_selector(track, version)
        err = track_selector(track, version, 'status=~"5.."')
        parts["latency"].append(f"sum by (track, le) (http_request_duration_seconds_bucket{sel})")
        parts["errors"].append(f"sum by (track) (http_requests_total{err})")
    return {name: " or ".join(qs) for name, qs in parts.items()}


def track_counts(
    track: str,
    errors: Sequence[tuple[Mapping[str, str], float]],
    buckets: Sequence[tuple[Mapping[str, str], float]],
) -> TrackCounts:
    """One track's reading from the two queries' samples (``(labels, value)`` pairs)."""
    rows = sorted(
        (float(labels.get("le", "+Inf")), float(v))
        for labels, v in buckets
        if labels.get("track") == track
    )
    requests = next((v for le, v in rows if math.isinf(le)), 0.0)
    failed = sum(float(v) for labels, v in errors if labels.get("track") == track)
    return TrackCounts(requests, failed, tuple(rows))


# ------------------------------------------------------------------------------------ gates


def quantile_ms(q: float, bounds_s: Array, le_counts: Array, total: float) -> float | None:
    """PromQL's ``histogram_quantile`` over cumulative counts, in ms (for display)."""
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds_s.tolist(), le_counts.tolist(), strict=True):
        if count >= rank:
            if count == prev_count:
                return float(bound) * 1000
            share = (rank - prev_count) / (count - prev_count)
            return float(prev_bound + (bound - prev_bound) * share) * 1000
        prev_bound, prev_count = bound, count
    return prev_bound * 1000


def judge_metrics(
    history: Sequence[Snapshot],
    canary: CanaryConfig,
    slo: Slo,
    *,
    queries: Mapping[str, str] | None = None,
) -> tuple[GateResult, dict[str, float | None], dict[str, Any]]:
    """The metrics verdict on the release's readings so far (the last one is this check).

    Returns the verdict, the step window's figures and the per-check statistics."""
    q = dict(queries or {})
    iv = intervals(history)
    bounds_ms = iv.bounds_s * 1000
    C, S = iv.canary, iv.stable
    nc, ec, ns, es = (
        float(x) for x in (C[:, 0].sum(), C[:, 1].sum(), S[:, 0].sum(), S[:, 1].sum())
    )
    part = canary.alpha / SHARES
    wc, ws = iv.window_canary, iv.window_stable
    window = {
        "canary_requests": float(wc[0]),
        "canary_errors": float(wc[1]),
        "stable_requests": float(ws[0]),
        "stable_errors": float(ws[1]),
        "canary_error_rate": float(wc[1] / wc[0]) if wc[0] > 0 else None,
        "stable_error_rate": float(ws[1] / ws[0]) if ws[0] > 0 else None,
        "canary_p95_ms": quantile_ms(QUANTILE, iv.bounds_s, wc[2:], float(wc[0])),
        "stable_p95_ms": quantile_ms(QUANTILE, iv.bounds_s, ws[2:], float(ws[0])),
    }

    # ---- errors
    guard_e = float(log_e_share(C[:, 1], S[:, 1], C[:, 0], S[:, 0])) if len(C) else 0.0
    et = error_test(
        nc,
        ec,
        ns,
        es,
        guard_e,
        alpha=canary.alpha,
        slo_rate=slo.max_error_rate,
        margin=canary.max_error_rate_increase,
    )
    c_lo, c_hi = lower_bound(ec, nc, part), upper_bound(ec, nc, part)
    d_lo, d_hi = difference_cs(ec, nc, es, ns, canary.alpha)
    rate_c = ec / nc if nc > 0 else None
    rate_s = es / ns if ns > 0 else None
    limit = float(et.limit)
    by_slo = bool(et.from_slo)
    source = "slo.maxErrorRate" if by_slo else "stable + maxErrorRateIncrease"
    slo_e, rel_e, guard = (_e(x) for x in (et.slo_log_e, et.relative_log_e, guard_e))
    err_fail = bool(et.fail)
    if bool(et.fail_slo):
        how, e_val = f"surely over the SLO {slo.max_error_rate:.2%}", slo_e
    elif err_fail:
        how, e_val = f"surely more than {canary.max_error_rate_increase:.2%} over stable", rel_e
    else:
        how, e_val = f"not surely over the limit {limit:.2%} ({source})", slo_e if by_slo else rel_e
    err_detail = (
        f"canary error rate {_pct(rate_c)} ({ec:.0f}/{nc:.0f} this release) {how}: canary "
        f"{c_lo:.2%}..{c_hi:.2%}, canary - stable {d_lo:+.2%}..{d_hi:+.2%}; e-values: SLO "
        f"{_num(slo_e)}, margin {_num(rel_e)}, error share {_num(guard)} ({_num(et.level)} "
        f"needed); stable {_pct(rate_s)} ({es:.0f}/{ns:.0f})"
    )
    errors = Check(
        "error_rate",
        "FAIL" if err_fail else "PASS",
        rate_c,
        limit,
        rate_s,
        q.get("errors", ""),
        err_detail,
        evalue=e_val,
        needed=et.level,
        cs=(d_lo, d_hi),
    )

    # ---- latency
    if bounds_ms.size == 0 or nc <= 0:
        latency = Check(
            "p95_latency",
            "INSUFFICIENT_DATA",
            None,
            None,
            window["stable_p95_ms"],
            q.get("latency", ""),
            "no canary latency histogram in the release yet",
        )
        lat_stats: dict[str, Any] = {}
    else:
        le_c, le_s = C[:, 2:].sum(axis=0), S[:, 2:].sum(axis=0)
        guard_l = float(latency_share_log_e(C[:, 0], C[:, 2:], S[:, 0], S[:, 2:]))
        lt = latency_test(
            le_c,
            nc,
            le_s,
            ns,
            bounds_ms,
            guard_l,
            alpha=canary.alpha,
            slo_ms=slo.max_p95_ms,
            canary=canary,
        )
        above = float(lt.canary_above_ms)
        # the top of the canary's p95 sequence: the first bound it is surely at most
        under = np.asarray(log_e_below(1 - QUANTILE, nc - le_c, nc)) >= math.log(1 / part)
        c_hi_ms = float(np.min(np.where(under, bounds_ms, np.inf), initial=np.inf))
        p95_c = quantile_ms(QUANTILE, iv.bounds_s, le_c, nc)
        p95_s = quantile_ms(QUANTILE, iv.bounds_s, le_s, ns)
        lat_limit = float(lt.limit_ms)
        if bool(lt.from_slo):
            lat_source = "slo.maxP95Ms"
        else:
            lat_source = (
                f"stable's p95 at most {float(lt.stable_at_most_ms):.0f} ms "
                "x maxP95Ratio, + minP95IncreaseMs"
            )
        slow = bool(lt.fail)
        lat_e = _e(lt.canary_log_e)
        sure = f"surely above {above:.0f} ms" if above > 0 else "nothing sure yet"
        latency = Check(
            "p95_latency",
            "FAIL" if slow else "PASS",
            p95_c,
            lat_limit,
            p95_s,
            q.get("latency", ""),
            f"canary p95 {_ms(p95_c)} ({sure}) {'over' if slow else 'not surely over'} the "
            f"limit {lat_limit:.0f} ms ({lat_source}); e-value {_num(lat_e)} of "
            f"{_num(lt.level)} needed, slow-request share {_num(_e(guard_l))}; stable p95 "
            f"{_ms(p95_s)}",
            evalue=lat_e,
            needed=lt.level,
            cs=(above, None if math.isinf(c_hi_ms) else c_hi_ms),
        )
        lat_stats = {
            "estimate": p95_c,
            "stable": p95_s,
            "cs": [above, None if math.isinf(c_hi_ms) else c_hi_ms],
            "limit": lat_limit,
            "evalue": lat_e,
            "share": _e(guard_l),
        }
    stats: dict[str, Any] = {
        "level": et.level,
        "error_rate": {
            "estimate": rate_c,
            "stable": rate_s,
            "difference": None if rate_c is None or rate_s is None else rate_c - rate_s,
            "cs": [d_lo, d_hi],
            "canary_cs": [float(c_lo), float(c_hi)],
            "limit": limit,
            "slo": slo.max_error_rate,
            "margin": canary.max_error_rate_increase,
            "evalue": {"slo": slo_e, "margin": rel_e, "share": guard},
        },
        "p95_latency": lat_stats,
    }
    checks = (errors, latency)
    failing = next((c for c in checks if c.verdict == "FAIL"), None)
    if failing is not None:
        return GateResult("metrics", "FAIL", checks, failing.detail), window, stats
    n_window = float(wc[0])
    if n_window < canary.min_requests:
        check = Check(
            "requests",
            "INSUFFICIENT_DATA",
            n_window,
            float(canary.min_requests),
            None,
            q.get("latency", ""),
            f"{n_window:.0f} canary requests in this step, fewer than minRequests "
            f"{canary.min_requests} (no regression evidence so far)",
        )
        return (
            GateResult("metrics", "INSUFFICIENT_DATA", (check, *checks), check.detail),
            window,
            stats,
        )
    return GateResult("metrics", "PASS", checks, "; ".join(c.detail for c in checks)), window, stats


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _e(log_e: Any) -> float:
    """An e-value from its logarithm, capped where a float would overflow."""
    return math.exp(min(float(log_e), 700.0))


def _num(value: float) -> str:
    """An e-value for people: 0.42, 3.1, 1,250, 2.4e+07."""
    if value >= 1e6:
        return f"{value:.2g}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2g}" if value < 10 else f"{value:.1f}"


def judge_health(
    probes: Sequence[HealthProbe],
    consecutive_failures: Mapping[str, int],
    canary: CanaryConfig,
) -> GateResult:
    """FAIL when no canary instance exists or one failed ``health_failures`` probes in a row.

    ``consecutive_failures`` is the caller's count per instance including this round.
    """
    if not probes:
        check = Check("health", "FAIL", 0, None, None, "", "no canary instance is running")
        return GateResult("health", "FAIL", (check,), check.detail)
    checks = []
    for p in probes:
        streak = consecutive_failures.get(p.instance, 0)
        failed = not p.ok and streak >= canary.health_failures
        detail = f"{p.instance}: {p.detail}"
        if not p.ok:
            detail += f" ({streak} in a row, fails at {canary.health_failures})"
        checks.append(
            Check(
                f"health:{p.instance}",
                "FAIL" if failed else "PASS",
                float(streak),
                float(canary.health_failures),
                None,
                "GET /api/health/advanced",
                detail,
            )
        )
    failing = next((c for c in checks if c.verdict == "FAIL"), None)
    if failing is not None:
        return GateResult("health", "FAIL", tuple(checks), failing.detail)
    return GateResult(
        "health",
        "PASS",
        tuple(checks),
        f"{sum(p.ok for p in probes)}/{len(probes)} canary instances healthy",
    )
