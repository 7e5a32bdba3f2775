"""The release's evidence with its oldest readings folded: what keeps the ledger bounded without
changing a single e-value. No I/O here.

The metrics gate judges the whole release's readings (``rollout.readings``): sums of the
per-interval increments (requests, errors, requests at or below each bucket bound, per track)
and the share tests, which are products over intervals of a likelihood ratio for each ratio of
a grid, mixed at the end. Sums of disjoint sets of intervals add up, and so do the share tests'
per-ratio log terms (``share_terms``), so the readings of a release's earliest rounds can be
replaced by ``Folded``: those sums and terms, the step window so far and the last reading folded
(the next interval starts at it). Judging the remaining readings after ``Folded`` gives the same
numbers as judging all of them: a resumed release continues its e-processes exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rollout.evidence import latency_share_terms, mix_latency_share
from rollout.readings import Array, Intervals, Snapshot, intervals
from rollout.sequential import THETAS, mix_share, share_terms


@dataclass(frozen=True)
class Folded:
    """The evidence of readings no longer stored (see the module)."""

    intervals: int
    """How many intervals it holds."""
    bounds_s: tuple[float, ...]
    """Finite histogram bounds (seconds) of the columns below."""
    canary: tuple[float, ...]
    """Sums over its intervals: requests, errors, then requests at or below each bound."""
    stable: tuple[float, ...]
    error_share: tuple[float, ...]
    """The error share test's log terms, one per ratio of ``THETAS``."""
    latency_share: tuple[tuple[float, ...], ...]
    """The slow-request share test's log terms: per bound, per ratio."""
    window_canary: tuple[float, ...]
    """The step window up to ``last`` (same columns), while that step goes on."""
    window_stable: tuple[float, ...]
    window_s: float
    last: Snapshot
    """The last reading folded: the first interval after it starts there."""

    def to_dict(self) -> dict[str, Any]:
        """For the ledger: floats as they are (JSON keeps them exactly)."""
        return {
            "intervals": self.intervals,
            "bounds_s": list(self.bounds_s),
            "canary": list(self.canary),
            "stable": list(self.stable),
            "error_share": list(self.error_share),
            "latency_share": [list(row) for row in self.latency_share],
            "window_canary": list(self.window_canary),
            "window_stable": list(self.window_stable),
            "window_s": self.window_s,
            "last": self.last.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Folded:
        return cls(
            intervals=int(d["intervals"]),
            bounds_s=tuple(float(x) for x in d["bounds_s"]),
            canary=tuple(float(x) for x in d["canary"]),
            stable=tuple(float(x) for x in d["stable"]),
            error_share=tuple(float(x) for x in d["error_share"]),
            latency_share=tuple(tuple(float(x) for x in row) for row in d["latency_share"]),
            window_canary=tuple(float(x) for x in d["window_canary"]),
            window_stable=tuple(float(x) for x in d["window_stable"]),
            window_s=float(d["window_s"]),
            last=Snapshot.from_dict(d["last"]),
        )


@dataclass(frozen=True)
class ReleaseEvidence:
    """Everything the metrics gate needs of the release so far."""

    bounds_s: Array
    canary: Array
    """Requests, errors, requests at or below each bound: the release's sums."""
    stable: Array
    error_share_log_e: float
    latency_share_log_e: float
    window_canary: Array
    """The current step's window so far (same columns)."""
    window_stable: Array
    window_s: float


def release_evidence(history: Sequence[Snapshot], folded: Folded | None = None) -> ReleaseEvidence:
    """The evidence of ``folded`` (if any) and the readings after it."""
    sums = _Sums.of(history, folded)
    return ReleaseEvidence(
        bounds_s=sums.iv.bounds_s,
        canary=sums.canary,
        stable=sums.stable,
        error_share_log_e=float(mix_share(sums.error_terms)),
        latency_share_log_e=mix_latency_share(sums.latency_terms),
        window_canary=sums.window_canary,
        window_stable=sums.window_stable,
        window_s=sums.window_s,
    )


def fold(history: Sequence[Snapshot], folded: Folded | None = None) -> Folded:
    """``folded`` (if any) and the readings after it, as one ``Folded``."""
    if not history and folded is not None:
        return folded
    sums = _Sums.of(history, folded)
    rows = len(sums.iv.canary) + (folded.intervals if folded else 0)
    last = history[-1] if history else None
    if last is None:
        raise ValueError("nothing to fold")
    return Folded(
        intervals=rows,
        bounds_s=tuple(float(b) for b in sums.iv.bounds_s),
        canary=tuple(float(x) for x in sums.canary),
        stable=tuple(float(x) for x in sums.stable),
        error_share=tuple(float(x) for x in sums.error_terms),
        latency_share=tuple(tuple(float(x) for x in row) for row in sums.latency_terms),
        window_canary=tuple(float(x) for x in sums.window_canary),
        window_stable=tuple(float(x) for x in sums.window_stable),
        window_s=sums.window_s,
        last=last,
    )


@dataclass(frozen=True)
class _Sums:
    iv: Intervals
    canary: Array
    stable: Array
    error_terms: Array
    latency_terms: Array
    window_canary: Array
    window_stable: Array
    window_s: float

    @classmethod
    def of(cls, history: Sequence[Snapshot], folded: Folded | None) -> _Sums:
        readings = [folded.last, *history] if folded is not None else list(history)
        iv = intervals(readings)
        C, S = iv.canary, iv.stable
        width = 2 + len(iv.bounds_s)
        canary = C.sum(axis=0) if len(C) else np.zeros(width)
        stable = S.sum(axis=0) if len(S) else np.zeros(width)
        error_terms = np.asarray(
            share_terms(C[:, 1], S[:, 1], C[:, 0], S[:, 0]) if len(C) else np.zeros(len(THETAS))
        )
        latency_terms = np.asarray(latency_share_terms(C[:, 0], C[:, 2:], S[:, 0], S[:, 2:]))
        win_c, win_s, win_t = iv.window_canary, iv.window_stable, iv.window_s
        if folded is not None:
            canary = canary + _columns(folded.canary, folded.bounds_s, iv.bounds_s)
            stable = stable + _columns(folded.stable, folded.bounds_s, iv.bounds_s)
            error_terms = error_terms + np.asarray(folded.error_share)
            latency_terms = latency_terms + _per_bound(
                folded.latency_share, folded.bounds_s, iv.bounds_s
            )
            if not _window_restarted(readings):  # the folded part of this step's window
                win_c = win_c + _columns(folded.window_canary, folded.bounds_s, iv.bounds_s)
                win_s = win_s + _columns(folded.window_stable, folded.bounds_s, iv.bounds_s)
                win_t = win_t + folded.window_s
        return cls(iv, canary, stable, error_terms, latency_terms, win_c, win_s, win_t)


def _window_restarted(readings: Sequence[Snapshot]) -> bool:
    """Whether a step window opens after the first reading (``intervals`` restarts there)."""
    return any(s.opens or s.step != prev.step for prev, s in itertools.pairwise(readings))


def _columns(values: Sequence[float], bounds: Sequence[float], to: Array) -> Array:
    """``[requests, errors, at or below each of bounds]`` on the bounds ``to``: a cumulative
    count at a bound it lacks is the one at the nearest bound below (as ``intervals`` reads)."""
    if list(bounds) == list(to):
        return np.asarray(values, dtype=np.float64)
    out = [float(values[0]), float(values[1])]
    for b in to.tolist():
        below = [i for i, x in enumerate(bounds) if x <= b]
        out.append(float(values[2 + below[-1]]) if below else 0.0)
    return np.asarray(out, dtype=np.float64)


def _per_bound(terms: Sequence[Sequence[float]], bounds: Sequence[float], to: Array) -> Array:
    """Per-bound share terms on the bounds ``to`` (a bound it lacks carries none)."""
    by_bound = {b: row for b, row in zip(bounds, terms, strict=True)}
    zero = [0.0] * len(THETAS)
    rows = [by_bound.get(b, zero) for b in to.tolist()]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(THETAS))
