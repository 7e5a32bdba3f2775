"""The release ledger: one JSON document per stack, written before anything is acted on.

The document holds the lease (one release per stack at a time), the stable version and its
history, every release with its transitions (``intent`` then ``done``), verdicts, samples and
incident, and the contract migrations applied. It lives in a ``LedgerStore`` with
compare-and-swap writes: a ConfigMap on Kubernetes, a file on the local target.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rollout.target import ConflictError, LedgerStore

T = TypeVar("T")
DOC_VERSION = 1
ACTIVE = ("PENDING", "PROGRESSING", "PAUSED", "HELD")
"""Statuses of a release that is not finished."""


class LedgerError(RuntimeError):
    """The ledger cannot be read or written (the message says where)."""


class ReleaseInProgress(ConflictError):
    """Another ``portalctl`` holds this stack's lease."""


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def empty_doc(stack: str, target: str) -> dict[str, Any]:
    return {
        "version": DOC_VERSION,
        "stack": stack,
        "target": target,
        "lease": None,
        "stable": None,
        "stable_history": [],
        "releases": [],
        "contract_migrations": [],
    }


class FileLedgerStore:
    """The ledger as a JSON file. The token is a revision counter stored in the file; a save
    happens under an exclusive lock on ``<file>.lock`` and replaces the file atomically (write a
    temporary file, fsync, rename), so a crash leaves the old or the new document, never half."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None, None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise LedgerError(f"ledger {self.path} is not valid JSON: {exc}") from exc
        return doc, str(doc.get("_revision", 0))

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        with self._locked():
            return self._read()

    def save(self, doc: dict[str, Any], token: str | None) -> str:
        with self._locked():
            _, current = self._read()
            if current != token:
                raise ConflictError(f"ledger {self.path} changed since it was read")
            revision = int(token or 0) + 1
            body = json.dumps({**doc, "_revision": revision}, indent=1, sort_keys=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "w") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path)
            return str(revision)


class Ledger:
    """Typed access to the document with a compare-and-swap retry loop."""

    def __init__(self, store: LedgerStore, stack: str = "", target: str = "") -> None:
        self.store = store
        self.stack = stack
        self.target = target

    def read(self) -> dict[str, Any]:
        doc, _ = self.store.load()
        return doc if doc is not None else empty_doc(self.stack, self.target)

    def update(self, fn: Callable[[dict[str, Any]], T], attempts: int = 20) -> T:
        """Apply ``fn`` to a fresh copy of the document and save it; retried on conflict.
        ``fn`` may raise to refuse the change (nothing is written then)."""
        for attempt in range(attempts):
            doc, token = self.store.load()
            if doc is None:
                doc = empty_doc(self.stack, self.target)
            doc.pop("_revision", None)
            result = fn(doc)
            try:
                self.store.save(doc, token)
            except ConflictError:
                time.sleep(min(0.05 * (attempt + 1), 0.5))
                continue
            return result
        raise LedgerError(f"ledger kept changing under {attempts} attempts to write it")

    # ---------------------------------------------------------------------------- lookups

    def latest(self) -> dict[str, Any] | None:
        releases = self.read().get("releases") or []
        return releases[-1] if releases else None

    def find(self, release_id: str) -> dict[str, Any] | None:
        return find_release(self.read(), release_id)

    def add_incident_action(self, release_id: str, action: str, detail: str, by: str) -> None:
        """Record what an operator (or a runbook) did about a release's incident."""

        def add(doc: dict[str, Any]) -> None:
            release = find_release(doc, release_id)
            if release is None:
                raise LedgerError(f"no release {release_id!r} in the ledger")
            incident = release.get("incident")
            if incident is None:
                incident = release["incident"] = {
                    "release_id": release_id,
                    "version": release.get("version"),
                    "opened_at": time.time(),
                    "gate": None,
                    "check": None,
                    "query": None,
                    "values": {},
                    "reason": "opened by an operator",
                    "runbook": None,
                    "actions": [],
                }
            incident.setdefault("actions", []).append(
                {"at": time.time(), "action": action, "detail": detail, "by": by}
            )

        self.update(add)


def find_release(doc: dict[str, Any], release_id: str) -> dict[str, Any] | None:
    for release in doc.get("releases") or []:
        if release.get("id") == release_id:
            found: dict[str, Any] = release
            return found
    return None


def lease_live(doc: dict[str, Any], now: float) -> bool:
    lease = doc.get("lease")
    return lease is not None and float(lease.get("expires_at", 0)) > now


def active_release(doc: dict[str, Any]) -> dict[str, Any] | None:
    for release in reversed(doc.get("releases") or []):
        if release.get("status") in ACTIVE:
            found: dict[str, Any] = release
            return found
    return None
