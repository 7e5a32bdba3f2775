"""Anytime-valid statistics on counts: e-processes and confidence sequences. No I/O here.

Everything here works on counts (requests, errors, requests slower than a histogram bucket),
because counts are what Prometheus has. Each function takes numbers or numpy arrays and
broadcasts, so the release gates call it with scalars and the judgement benchmark with
thousands of simulated releases at once.

Two constructions, both from the anytime-valid literature (Howard, Ramdas, McAuliffe & Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 2021;
Lindon & Malek, "Anytime-valid inference for multinomial count data", NeurIPS 2022, the method
behind Netflix's canary analysis of counts):

**One rate against a limit** (``log_e_above``, ``log_e_below``, ``lower_bound``,
``upper_bound``). ``s`` events (errors, or requests slower than a bucket bound) in ``n`` trials
(requests). The e-process against "the rate is at most ``p0``" is the likelihood ratio of the
counts, mixed over a Beta(``PRIOR``) prior restricted to the alternative ``p > p0``::

    E(p0) = integral over p > p0 of (p / p0)^s ((1 - p) / (1 - p0))^(n - s) dPrior(p | p > p0)

For every ``p > p0`` one request's likelihood-ratio factor has expectation at most 1 whenever
that request's own rate is at most ``p0``, so ``E`` is a non-negative supermartingale under the
composite null "every request's rate is at most ``p0``", even when the rate drifts. Ville's
inequality then gives ``P(E ever reaches 1/alpha) <= alpha``: checking at every interval, for as
long as one likes, costs nothing. ``E`` depends on the requests only through the cumulative
counts, so it can be evaluated from Prometheus counters sampled at any times: a check sees a
subsequence of the per-request process, and the supremum over a subsequence is no larger.
``lower_bound`` inverts it: the smallest ``p0`` not rejected, a lower confidence sequence for
the rate (``upper_bound`` mirrors it with the prior on ``p < p0``). The closed form uses the
regularised incomplete beta function of scipy.

**The canary's share of events given the traffic split** (``log_e_share``). In one check
interval the canary served ``nc`` requests and stable ``ns``; ``ec`` and ``es`` of them failed
(or were slow). If errors arrive as Poisson processes whose intensity per request may change
over time in any way - a dependency that fails for ten seconds fails both tracks - but is the
same for both tracks within the interval, then, given the interval's total ``ec + es``, each
error is the canary's with probability ``q0 = nc / (nc + ns)``: its traffic share in that
interval. That is the null of Lindon & Malek's test of time-inhomogeneous Poisson processes,
here with a share per interval, which handles weights that change between steps (and replicas
that scale within one): an interval contributes only its own split. The alternative "canary
intensity is ``theta`` times stable's" gives ``q(theta) = theta nc / (theta nc + ns)``; the
e-process is the product over intervals of the likelihood ratios of the canary's share of
errors, mixed over a grid of ``theta > 1``. For ``theta > 1`` each factor has conditional
expectation at most 1 whenever the true ratio is at most 1, so it is a test supermartingale for
"the canary is no worse than stable", whatever the common background does over time.

This test compares ratios. It cannot carry an additive margin ("stable + 1%"): conditioning on
the total removes the absolute level, and with no background errors at all one canary error is
infinitely many times stable's rate. So the gates use it as a guard beside

**The canary's rate against stable's plus a margin** (``log_e_difference``): both tracks'
counts, the numerator mixing both rates over the prior, the denominator the likelihood
maximised over the null "canary at most stable + d". Dividing by the null's maximum rather
than its true value only shrinks the ratio, so it is an e-process for steady rates whatever
stable's own rate is; ``rollout.evidence`` says how the three combine.

Libraries considered: ``confseq`` (Howard & Waudby-Smith) has the beta-binomial mixture bounds
but its last release is from January 2023 and it ships as C++ source that needs Boost headers
to build; ``expectation`` requires Python 3.12; ``savvi`` installs (pure Python) but its
Poisson-process test is two-sided against fixed assignment probabilities (weights change
between our steps and a canary with fewer errors must not fail), it solves a convex program
per update through cvxpy, and it imports matplotlib without declaring it. The formulas here are
short closed forms over scipy's special functions, which are the well-kept library part.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

PRIOR = (0.5, 10.0)
"""Beta prior of the mixture over rates: most mass on the small rates that errors and slow
requests have (mean 4.8%), heavy enough to the right to catch 20% or 90% quickly."""

THETAS = np.array([1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1000.0])
"""The grid of canary/stable intensity ratios the share test mixes over (equal weights)."""

_BISECT_STEPS = 48
Array = NDArray[np.float64]


def _f(x: ArrayLike) -> Array:
    return np.asarray(x, dtype=np.float64)


def _out(x: Array) -> Any:
    """A plain float for scalar input (the gates), the array otherwise (the benchmark)."""
    return float(x) if x.ndim == 0 else x


def _log_e(p0_: ArrayLike, s_: ArrayLike, n_: ArrayLike, above: bool) -> Array:
    p0, s0, n = np.broadcast_arrays(_f(p0_), _f(s_), _f(n_))
    a, b = PRIOR
    f = np.maximum(n - s0, 0.0)
    s = np.maximum(s0, 0.0)
    p = np.clip(p0, 1e-300, 1 - 1e-16)
    tail = special.betaincc if above else special.betainc
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_e = (
            special.betaln(a + s, b + f)
            + np.log(tail(a + s, b + f, p))
            - special.betaln(a, b)
            - np.log(tail(a, b, p))
            - special.xlogy(s, p)
            - special.xlog1py(f, -p)
        )
    return np.where(n > 0, np.nan_to_num(log_e, nan=0.0, neginf=-np.inf), 0.0)


def log_e_above(p0: ArrayLike, s: ArrayLike, n: ArrayLike) -> Any:
    """Log e-value against "the rate is at most ``p0``" after ``s`` events in ``n`` trials."""
    return _out(_log_e(p0, s, n, above=True))


def log_e_below(p0: ArrayLike, s: ArrayLike, n: ArrayLike) -> Any:
    """Log e-value against "the rate is at least ``p0``" after ``s`` events in ``n`` trials."""
    return _out(_log_e(p0, s, n, above=False))


def lower_bound(s: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> Any:
    """Lower end of the one-sided (1 - ``alpha``) confidence sequence for the rate: the
    smallest rate "at most p0" does not reject (bisection; 0 with no events)."""
    s, n, alpha = np.broadcast_arrays(_f(s), _f(n), _f(alpha))
    level = np.log(1 / alpha)
    hi = np.where(n > 0, np.clip(s / np.where(n > 0, n, 1), 0, 1), 0.0)
    lo = np.zeros_like(hi)
    # E(p0) falls as p0 rises towards the observed rate (at or above it E < 1): bisect on it.
    rejected = _log_e(np.maximum(lo, 1e-12), s, n, True) >= level
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        rej = _log_e(np.maximum(mid, 1e-12), s, n, True) >= level
        lo, hi = np.where(rej, mid, lo), np.where(rej, hi, mid)
    return _out(np.where(rejected, lo, 0.0))


def upper_bound(s: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> Any:
    """Upper end of the one-sided (1 - ``alpha``) confidence sequence for the rate (1 with no
    trials)."""
    s, n, alpha = np.broadcast_arrays(_f(s), _f(n), _f(alpha))
    level = np.log(1 / alpha)
    lo = np.where(n > 0, np.clip(s / np.where(n > 0, n, 1), 0, 1), 1.0)
    hi = np.ones_like(lo)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        rej = _log_e(np.minimum(mid, 1 - 1e-12), s, n, False) >= level
        lo, hi = np.where(rej, lo, mid), np.where(rej, mid, hi)
    return _out(np.where(n > 0, hi, 1.0))


def log_e_share(
    canary_events: ArrayLike,
    stable_events: ArrayLike,
    canary_requests: ArrayLike,
    stable_requests: ArrayLike,
    cumulative: bool = False,
) -> Any:
    """Log e-value against "the canary's events are no more frequent per request than
    stable's", from per-interval counts (last axis: intervals; earlier axes broadcast).
    ``cumulative``: the e-process after each interval instead of after the last.

    Intervals where one track served nothing carry no evidence (their factor is 1)."""
    per_interval = _share_per_interval(
        canary_events, stable_events, canary_requests, stable_requests
    )
    per_theta = np.cumsum(per_interval, axis=-1) if cumulative else per_interval.sum(axis=-1)
    return mix_share(per_theta)


def share_terms(
    canary_events: ArrayLike,
    stable_events: ArrayLike,
    canary_requests: ArrayLike,
    stable_requests: ArrayLike,
) -> Array:
    """What ``log_e_share`` mixes: for each ratio of ``THETAS`` (first axis), the log likelihood
    ratio summed over the intervals (last axis). Terms of disjoint sets of intervals add up, so
    the evidence of intervals no longer stored is carried as these numbers, exactly."""
    out: Array = _share_per_interval(
        canary_events, stable_events, canary_requests, stable_requests
    ).sum(axis=-1)
    return out


def mix_share(terms: ArrayLike) -> Any:
    """The share test's log e-value from its ``share_terms`` (the equal-weight mixture)."""
    mixed = special.logsumexp(_f(terms), axis=0) - np.log(len(THETAS))
    return _out(np.asarray(mixed, dtype=np.float64))


def _share_per_interval(
    canary_events: ArrayLike,
    stable_events: ArrayLike,
    canary_requests: ArrayLike,
    stable_requests: ArrayLike,
) -> Array:
    """(thetas, ..., intervals): each interval's log likelihood ratio of the canary's share."""
    ec, es, nc, ns = np.broadcast_arrays(
        _f(canary_events), _f(stable_events), _f(canary_requests), _f(stable_requests)
    )
    ec, es = np.maximum(ec, 0.0), np.maximum(es, 0.0)
    usable = (nc > 0) & (ns > 0)
    nc = np.where(usable, nc, 1.0)
    ns = np.where(usable, ns, 1.0)
    q0 = nc / (nc + ns)
    theta = THETAS.reshape((-1,) + (1,) * ec.ndim)
    q = theta * nc / (theta * nc + ns)
    out: Array = np.where(
        usable, special.xlogy(ec, q / q0) + special.xlogy(es, (1 - q) / (1 - q0)), 0.0
    )
    return out


def _line_loglik(r: Array, d: Array, ec: Array, fc: Array, es: Array, fs: Array) -> Array:
    rc = r + d
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Array = (
            special.xlogy(ec, rc)
            + special.xlog1py(fc, -rc)
            + special.xlogy(es, r)
            + special.xlog1py(fs, -r)
        )
    return out


def _line_max(d: Array, ec: Array, fc: Array, es: Array, fs: Array) -> Array:
    """The largest log-likelihood of both tracks' counts with the canary's rate exactly
    ``d`` above stable's (concave in stable's rate: bisection on the derivative)."""
    lo = np.maximum(0.0, -d)
    hi = np.minimum(1.0, 1.0 - d)
    a, b = lo.copy(), hi.copy()
    for _ in range(_BISECT_STEPS):
        r = (a + b) / 2
        rc = r + d
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = ec / rc - fc / (1 - rc) + es / r - fs / (1 - r)
        up = slope > 0  # nan (0/0 at an edge) counts as "not up"
        a, b = np.where(up, r, a), np.where(up, b, r)
    r = (a + b) / 2
    best: Array = np.maximum.reduce([_line_loglik(x, d, ec, fc, es, fs) for x in (r, lo, hi)])
    return best


def log_e_difference(
    d: ArrayLike, ec: ArrayLike, nc: ArrayLike, es: ArrayLike, ns: ArrayLike, above: bool = True
) -> Any:
    """Log e-value against "the canary's rate is at most ``d`` above stable's" (``above``;
    otherwise "at least ``d`` above"), from each track's events and trials.

    The numerator mixes both rates over independent Beta(``PRIOR``) priors; the denominator is
    the likelihood maximised over the null (the rates on the line ``canary = stable + d`` when
    the observed rates are on the other side of it). Dividing by the null's maximum instead of
    its true value can only shrink the ratio, so for steady rates this is an e-process for the
    composite null whatever stable's own rate is (no bound on it has to be spent first)."""
    dd, ec0, n_c, es0, n_s = np.broadcast_arrays(_f(d), _f(ec), _f(nc), _f(es), _f(ns))
    a, b = PRIOR
    e_c, e_s = np.maximum(ec0, 0.0), np.maximum(es0, 0.0)
    fc, fs = np.maximum(n_c - e_c, 0.0), np.maximum(n_s - e_s, 0.0)
    mix = special.betaln(a + e_c, b + fc) + special.betaln(a + e_s, b + fs)
    mix = mix - 2 * special.betaln(a, b)
    pc = e_c / np.where(n_c > 0, n_c, 1)
    ps = e_s / np.where(n_s > 0, n_s, 1)
    free = special.xlogy(e_c, pc) + special.xlog1py(fc, -pc) + special.xlogy(e_s, ps)
    free = free + special.xlog1py(fs, -ps)
    inside = (pc - ps <= dd) if above else (pc - ps >= dd)
    null_max = np.where(inside, free, _line_max(dd, e_c, fc, e_s, fs))
    out = np.where((n_c > 0) & (n_s > 0), mix - null_max, 0.0)
    return _out(np.asarray(out, dtype=np.float64))
