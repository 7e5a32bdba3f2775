"""What the metrics gate reads: both tracks' cumulative Prometheus counters, as taken at each
check and as stored in the ledger. No I/O here.

Every ``interval`` the engine reads, per track, the cumulative counters summed over the track's
instances: requests, 5xx errors and the latency histogram's buckets (instant queries, no
``rate``/``increase`` extrapolation, so the counts are whole requests). At the first check of a
step it also reads them as they were when the step's window opened (after ``settle``).
Consecutive readings within a step give per-interval increments (``intervals``); an interval in
which a counter went backwards (an instance restarted or went away) carries no evidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from contract.promql import track_selector

Array = NDArray[np.float64]


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
