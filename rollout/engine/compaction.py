"""A release's record kept to a size that fits a ConfigMap, however long it runs.

Every check round adds a sample (about 1.2 KB: the readings, the step window, the statistics the
report draws, the verdicts). Once a release has more than ``KEEP_READINGS + FOLD`` samples with
readings, the readings of the oldest ``FOLD`` are folded into ``Release.folded``
(``rollout.folded``: exact, the gates' e-values do not change) and those samples keep only what
the report draws (time, weight, step, verdicts, statistics). Those report points are thinned
beyond ``KEEP_POINTS`` (every other one of the oldest half, never one with a verdict other than
PASS nor a step's first), and verdict records beyond ``KEEP_VERDICTS`` (never a FAIL).
"""

from __future__ import annotations

from collections.abc import Sequence

from rollout.folded import Folded, fold
from rollout.ledger import Release
from rollout.ledger.model import Sample, VerdictRecord
from rollout.readings import snapshots_of

KEEP_READINGS = 60
"""The newest samples that keep their readings (a resumed step rebuilds its window from them)."""
FOLD = 30
"""How many samples' readings are folded at once (so a fold is not needed every round)."""
KEEP_POINTS = 120
"""Report points (samples whose readings were folded) kept, thinned beyond."""
KEEP_VERDICTS = 80
"""Verdict records kept per release (every FAIL is kept)."""
POINT_FIELDS = ("at", "weight", "step", "verdicts", "stats")


def add_rounds(release: Release, rounds: Sequence[tuple[Sample, Sequence[VerdictRecord]]]) -> None:
    """Check rounds (a sample and the verdict records kept of it) added to ``release``, which
    is then compacted as needed: what every round's ledger write does."""
    for sample, verdicts in rounds:
        release.samples.append(sample)
        release.verdicts.extend(verdicts)
        compact(release)


def compact(release: Release) -> None:
    """Fold, thin and trim ``release`` in place when it has outgrown its bounds."""
    _fold_readings(release)
    _thin_points(release)
    _trim_verdicts(release)


def _has_readings(sample: Sample) -> bool:
    return bool((sample.model_extra or {}).get("snapshots"))


def _fold_readings(release: Release) -> None:
    with_readings = [i for i, s in enumerate(release.samples) if _has_readings(s)]
    if len(with_readings) <= KEEP_READINGS + FOLD:
        return
    cut = with_readings[FOLD]  # the first sample that keeps its readings
    folding = [s.model_dump(mode="json") for s in release.samples[:cut] if _has_readings(s)]
    previous = Folded.from_dict(release.folded) if release.folded else None
    release.folded = fold(snapshots_of(folding), previous).to_dict()
    release.samples[:cut] = [_point(s) for s in release.samples[:cut]]


def _point(sample: Sample) -> Sample:
    """A sample as the report draws it, its readings gone (they are in ``Release.folded``)."""
    data = sample.model_dump(mode="json")
    return Sample.model_validate({k: data[k] for k in POINT_FIELDS if k in data})


def _thin_points(release: Release) -> None:
    points = [i for i, s in enumerate(release.samples) if not _has_readings(s)]
    if len(points) <= KEEP_POINTS:
        return
    drop: set[int] = set()
    oldest = points[: len(points) // 2]
    for n, i in enumerate(oldest):
        sample = release.samples[i]
        first_of_step = i == 0 or release.samples[i - 1].step != sample.step
        notable = any(v != "PASS" for v in sample.verdicts.values())
        if n % 2 == 1 and not first_of_step and not notable:
            drop.add(i)
    release.samples = [s for i, s in enumerate(release.samples) if i not in drop]


def _trim_verdicts(release: Release) -> None:
    verdicts = release.verdicts
    if len(verdicts) <= KEEP_VERDICTS:
        return
    fails = [i for i, v in enumerate(verdicts) if v.verdict == "FAIL"]
    room = max(0, KEEP_VERDICTS - len(fails))
    others = [i for i, v in enumerate(verdicts) if v.verdict != "FAIL"]
    keep = set(fails) | set(others[len(others) - room :] if room else [])
    release.verdicts = [v for i, v in enumerate(verdicts) if i in keep]
