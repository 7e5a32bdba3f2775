"""Typed access to the ledger document in a ``LedgerStore`` (compare-and-swap writes).

A write reads the document and its token, applies a change to a fresh copy and saves it only if
the token is unchanged; on a conflict the whole read-change-save is retried (tenacity, with a
growing pause). The local store is a JSON file replaced atomically under a file lock (filelock).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from pydantic import ValidationError
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_incrementing

from rollout.durable import replace_file
from rollout.ledger import retention
from rollout.ledger.model import Incident, IncidentAction, LedgerDoc, Release
from rollout.ports import ConflictError, LedgerStore, TargetError

T = TypeVar("T")
ATTEMPTS = 20


class LedgerError(RuntimeError):
    """The ledger cannot be read or written (the message says where)."""


class ReleaseInProgress(ConflictError):
    """Another ``portalctl`` holds this stack's lease."""


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FileLedgerStore:
    """The ledger as a JSON file. The token is a revision counter stored in the file; a save
    happens under an exclusive lock on ``<file>.lock`` and replaces the file durably (a
    temporary file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
    document, never half, and a save that returned survives a power cut."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = FileLock(self.path.with_name(self.path.name + ".lock"))

    @property
    def where(self) -> str:
        return f"ledger {self.path}"

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None, None
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"{self.where}: cannot be read ({exc})") from exc
        doc = parse_document(raw, self.where)
        revision = doc.pop("_revision", 0)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise LedgerError(
                f"{self.where}: _revision {revision!r} is not a revision number (0, 1, 2...)"
            )
        return doc, str(revision)

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            return self._read()

    def save(self, doc: dict[str, Any], token: str | None) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            _, current = self._read()
            if current != token:
                raise ConflictError(f"{self.where} changed since it was read")
            revision = int(token or 0) + 1
            body = json.dumps({**doc, "_revision": revision}, indent=1, sort_keys=True)
            try:
                replace_file(self.path, body)
            except OSError as exc:
                raise LedgerError(f"{self.where}: cannot be written ({exc})") from exc
            return str(revision)

    # ------------------------------------------------------------------ archive

    @property
    def archive_dir(self) -> Path:
        return self.path.with_name("releases")

    def _archive_path(self, key: str) -> Path:
        return self.archive_dir / f"{ARCHIVE_NAME.sub('-', key)}.json"

    def archive(self, key: str, doc: dict[str, Any]) -> None:
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        try:
            replace_file(self._archive_path(key), json.dumps(doc, indent=1, sort_keys=True))
        except OSError as exc:
            raise LedgerError(f"{self.where}: cannot archive {key} ({exc})") from exc

    def archived(self, key: str) -> dict[str, Any] | None:
        path = self._archive_path(key)
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"ledger archive {path}: cannot be read ({exc})") from exc
        return parse_document(raw, f"ledger archive {path}")

    def prune(self, keep: set[str]) -> None:
        wanted = {self._archive_path(k).name for k in keep}
        for path in self.archive_dir.glob("*.json"):
            if path.name not in wanted:
                path.unlink(missing_ok=True)


ARCHIVE_NAME = re.compile(r"[^A-Za-z0-9._-]")
"""Characters a release id may not keep in an archive's name."""


def parse_document(raw: str, where: str) -> dict[str, Any]:
    """The JSON object of a stored ledger; ``LedgerError`` naming ``where`` otherwise."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise LedgerError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise LedgerError(f"{where}: expected a JSON object, found {_json_type(doc)}")
    return doc


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def describe(exc: ValidationError) -> str:
    """A validation error in one line: where in the document, what is wrong, what was found."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
    ).lstrip(".")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    if not where:
        return f"{message}{more}"
    found = repr(first.get("input"))
    found = found if len(found) <= 60 else found[:57] + "..."
    return f"{where}: {message} (found {found}){more}"


class Ledger:
    """The document of one stack, read and changed as ``LedgerDoc``."""

    def __init__(self, store: LedgerStore, stack: str = "", target: str = "") -> None:
        self.store = store
        self.stack = stack
        self.target = target

    def _load(self) -> tuple[LedgerDoc, str | None]:
        raw, token = self.store.load()
        if raw is None:
            return LedgerDoc(stack=self.stack, target=self.target), None
        try:
            return LedgerDoc.model_validate(raw), token
        except ValidationError as exc:
            raise LedgerError(f"{self.store.where}: {describe(exc)}") from None

    def read(self) -> LedgerDoc:
        return self._load()[0]

    def update(self, fn: Callable[[LedgerDoc], T], attempts: int = ATTEMPTS) -> T:
        """Apply ``fn`` to a fresh copy of the document and save it; retried on conflict.
        ``fn`` may raise to refuse the change (nothing is written then)."""

        def once() -> T:
            doc, token = self._load()
            result = fn(doc)
            archived = self._rotate(doc)
            body = doc.model_dump(mode="json", by_alias=True)
            size = retention.size_of(body)
            if size > retention.BUDGET_BYTES:
                archived |= self._rotate(doc, everything=True)
                body = doc.model_dump(mode="json", by_alias=True)
                size = retention.size_of(body)
            if size > retention.BUDGET_BYTES:
                raise LedgerError(
                    f"{self.store.where}: the document would take {size // 1024} KiB, over the "
                    f"{retention.BUDGET_BYTES // 1024} KiB it may (nothing was written)"
                )
            self.store.save(body, token)
            if archived:
                with contextlib.suppress(LedgerError, TargetError, OSError):
                    self.store.prune(retention.kept_archives(doc))
            return result

        retrying = Retrying(
            retry=retry_if_exception(_lost_a_race),
            stop=stop_after_attempt(attempts),
            wait=wait_incrementing(start=0.05, increment=0.05, max=0.5),
        )
        try:
            return retrying(once)
        except RetryError:
            raise LedgerError(
                f"ledger kept changing under {attempts} attempts to write it"
            ) from None

    def _rotate(self, doc: LedgerDoc, everything: bool = False) -> bool:
        """Archive the releases that leave the document whole (``retention``), then cap its
        lists. A release whose archive cannot be written stays whole until a later write."""
        moved = False
        finished = [r for r in doc.releases if not r.status.active and not r.summarized]
        for release in finished if everything else retention.to_archive(doc):
            try:
                self.store.archive(release.id, release.model_dump(mode="json", by_alias=True))
            except (LedgerError, TargetError, OSError):
                continue
            retention.summarize(release)
            moved = True
        retention.trim(doc)
        return moved

    # ---------------------------------------------------------------------------- lookups

    def latest(self) -> Release | None:
        return self.read().latest()

    def find(self, release_id: str) -> Release | None:
        """The release's whole record: from the document, or from its archive once it is only
        a summary there (the summary when the archive is gone)."""
        release = self.read().find(release_id)
        if release is None or not release.summarized:
            return release
        raw = self.store.archived(release_id)
        if raw is None:
            return release
        try:
            return Release.model_validate(raw)
        except ValidationError as exc:
            raise LedgerError(f"{self.store.where} ({release_id}): {describe(exc)}") from None

    def add_incident_action(self, release_id: str, action: str, detail: str, by: str) -> None:
        """Record what an operator (or a runbook) did about a release's incident."""

        def add(doc: LedgerDoc) -> None:
            release = doc.find(release_id)
            if release is None:
                raise LedgerError(f"no release {release_id!r} in the ledger")
            if release.incident is None:
                release.incident = Incident(
                    id=release_id,
                    release_id=release_id,
                    version=release.version,
                    opened_at=time.time(),
                    reason="opened by an operator",
                    opened_by=by,
                )
            release.incident.actions.append(
                IncidentAction(at=time.time(), action=action, detail=detail, by=by)
            )

        self.update(add)

    def add_incident(self, incident: Incident) -> None:
        """Record an incident that concerns no release (a runbook run)."""
        self.update(lambda doc: doc.incidents.append(incident))


def _lost_a_race(exc: BaseException) -> bool:
    """A concurrent writer won the compare-and-swap (a held lease is a refusal, not a race)."""
    return isinstance(exc, ConflictError) and not isinstance(exc, ReleaseInProgress)


def require(doc: LedgerDoc, release_id: str) -> Release:
    release = doc.find(release_id)
    if release is None:
        raise LedgerError(f"release {release_id} is not in the ledger")
    return release
