"""The ledger document kept under a ConfigMap's size, however many releases a stack has seen.

The document holds in full the release in flight and the newest finished release (each bounded
by ``rollout.engine.compaction``). An older finished release is archived whole (one object per
release: a ConfigMap on Kubernetes, a file beside the local ledger) and stays in the document as
a summary: id, version, image, status, times, reason and incident, without its transitions,
samples, verdicts and requests. ``Ledger.find`` reads the archive back. The newest
``KEEP_ARCHIVED`` archives are kept, the newest ``KEEP_SUMMARIES`` summaries, and the stable
history, scripted rollbacks, runbook incidents and contract migrations are capped too (an
unfinished scripted rollback is never dropped).
"""

from __future__ import annotations

import json
from typing import Any

from rollout.ledger.model import LedgerDoc, Release, TransitionState

KEEP_FULL = 1
"""Finished releases kept whole in the document (the newest), besides the one in flight."""
KEEP_SUMMARIES = 200
KEEP_ARCHIVED = 30
KEEP_STABLE = 100
KEEP_ROLLBACKS = 50
KEEP_INCIDENTS = 50
KEEP_CONTRACTS = 200
BUDGET_BYTES = 850 * 1024
"""The most the document may take as compact JSON: a ConfigMap holds 1 MiB with its metadata."""


def to_archive(doc: LedgerDoc) -> list[Release]:
    """Finished releases, not the newest ``KEEP_FULL``, that are still whole."""
    finished = [r for r in doc.releases if not r.status.active]
    newest = {r.id for r in finished[len(finished) - KEEP_FULL :]} if KEEP_FULL else set()
    return [r for r in finished if r.id not in newest and not r.summarized]


def summarize(release: Release) -> None:
    """``release`` as its summary (its full record is in the archive)."""
    release.transitions, release.samples, release.verdicts, release.requests = [], [], [], []
    release.folded = None
    release.summarized = True


def trim(doc: LedgerDoc) -> None:
    """The capped lists of the document cut to their caps (oldest first)."""
    summaries = [r for r in doc.releases if r.summarized]
    if len(summaries) > KEEP_SUMMARIES:
        gone = {r.id for r in summaries[: len(summaries) - KEEP_SUMMARIES]}
        doc.releases = [r for r in doc.releases if r.id not in gone]
    del doc.stable_history[: max(0, len(doc.stable_history) - KEEP_STABLE)]
    del doc.incidents[: max(0, len(doc.incidents) - KEEP_INCIDENTS)]
    del doc.contract_migrations[: max(0, len(doc.contract_migrations) - KEEP_CONTRACTS)]
    extra = len(doc.rollbacks) - KEEP_ROLLBACKS
    if extra > 0:
        old = [r for r in doc.rollbacks[:extra] if r.state is TransitionState.INTENT]
        doc.rollbacks = old + doc.rollbacks[extra:]


def kept_archives(doc: LedgerDoc) -> set[str]:
    """The release ids whose archives are kept (the newest ``KEEP_ARCHIVED`` summaries)."""
    summaries = [r.id for r in doc.releases if r.summarized]
    return set(summaries[len(summaries) - KEEP_ARCHIVED :])


def size_of(body: dict[str, Any]) -> int:
    """The document's size as the ConfigMap stores it (compact JSON)."""
    return len(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
