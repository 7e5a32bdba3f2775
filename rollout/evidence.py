"""The metrics gate's statistics on the release's counts: which anytime-valid test decides
each FAIL, and how ``canary.alpha`` is spent among them. No I/O here.

The release's evidence is the sum over every step's intervals (``rollout.readings``), so it
keeps growing from step to step instead of starting again, and one error budget covers the
release.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from contract.config import CanaryConfig
from rollout.sequential import (
    THETAS,
    log_e_above,
    log_e_below,
    log_e_difference,
    log_e_share,
    mix_share,
    share_terms,
)

QUANTILE = 0.95
SHARES = 4
"""alpha is spent in this many equal parts: canary and stable bounds, for errors and latency."""


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


def latency_share_terms(
    canary_n: ArrayLike, canary_le: ArrayLike, stable_n: ArrayLike, stable_le: ArrayLike
) -> Any:
    """What ``latency_share_log_e`` mixes, for one release's intervals (``*_n``: intervals;
    ``*_le``: intervals x bounds): per bucket bound (first axis), the share test's terms
    (``rollout.sequential.share_terms``, second axis: ``THETAS``). They add up over disjoint
    sets of intervals."""
    nc, ns = np.asarray(canary_n, dtype=np.float64), np.asarray(stable_n, dtype=np.float64)
    le_c = np.atleast_2d(np.asarray(canary_le, dtype=np.float64))
    le_s = np.atleast_2d(np.asarray(stable_le, dtype=np.float64))
    if le_c.shape[1] == 0 or len(nc) == 0:
        return np.zeros((le_c.shape[1], len(THETAS)))
    slow_c = np.maximum(nc[:, None] - le_c, 0.0).T  # (bounds, intervals)
    slow_s = np.maximum(ns[:, None] - le_s, 0.0).T
    return np.asarray(share_terms(slow_c, slow_s, nc[None, :], ns[None, :])).T


def mix_latency_share(terms: ArrayLike) -> float:
    """``latency_share_log_e`` from its ``latency_share_terms`` (bounds x THETAS)."""
    t = np.asarray(terms, dtype=np.float64)
    if t.size == 0:
        return 0.0
    per_bound = np.asarray(mix_share(t.T))
    return float(special.logsumexp(per_bound) - math.log(t.shape[0]))
