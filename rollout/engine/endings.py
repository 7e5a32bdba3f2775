"""How a release ends: rolled back, promoted or held, each written ahead to the ledger.

Promotion is atomic from the ledger's point of view. ``stable`` in the ledger changes only once
the target runs the new version everywhere (and the stack file records it); until then the
release carries a ``promote`` intent, which ``status`` shows and ``resume`` finishes. A promotion
that fails (the rollout is refused or stuck, or the target does not answer within
``onProviderError`` with ``then: abort``) is rolled back *with* stable: stable's previous version
and image are set again before the canary goes, and the release ends ABORTED with the reason.
A rollback that cannot finish (the target still does not answer) leaves the release HELD with its
``rollback`` intent: ``resume`` or ``abort`` finishes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rollout.engine.context import Context, ProviderGaveUp
from rollout.engine.notices import Notices
from rollout.engine.outcome import Outcome, OutcomeStatus, Stop, StopKind
from rollout.engine.records import done, failure, incident_for, intent
from rollout.engine.silences import Silences
from rollout.ledger import Action, LedgerDoc, Release, ReleaseStatus, Stable, require
from rollout.ledger.model import TransitionArgs
from rollout.ports import ReleaseEvent, ReleaseSpec, TargetError, TelemetryError

UNFINISHED = "; the rollback did not finish"


class Endings:
    def __init__(
        self,
        ctx: Context,
        stackfile: Path | None,
        notices: Notices,
        silences: Silences,
        reporter: Callable[[Release], str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.stackfile = stackfile
        self.notices = notices
        self.silences = silences
        self.reporter = reporter

    def _release(self, release_id: str) -> Release:
        return require(self.ctx.ledger.read(), release_id)

    # ------------------------------------------------------------------ rollback

    def rollback(self, release_id: str, stop: Stop) -> Outcome:
        """Weight 0 and the canary gone; stable back to the previous version when a promotion
        had started to change it."""
        ctx = self.ctx
        now = ctx.clock()
        release = self._release(release_id)
        restore = release.previous_stable if _started(release, Action.PROMOTE) else None
        incident = incident_for(release, stop, now)
        why = stop.reason.split(UNFINISHED, 1)[0]  # a rollback redone: its first reason

        def write_intent(doc: LedgerDoc) -> None:
            r = require(doc, release_id)
            r.reason = why
            intent(r, Action.ROLLBACK, TransitionArgs(), now, redo_last=True)
            if r.incident is None:
                r.incident = incident

        ctx.record(release_id, write_intent)

        def act() -> None:
            if restore is not None:
                ctx.target.workloads.set_stable(restore.version, restore.image)
            ctx.target.workloads.rollback()

        try:
            ctx.act(release_id, "the rollback", act)
        except (ProviderGaveUp, TargetError) as exc:
            return self.hold(release_id, Stop(StopKind.HOLD, f"{why}{UNFINISHED} ({exc})"))
        reason = why
        if restore is not None:
            reason += f"; stable restored to {restore.version}"
            reason += self.record_version(release_id, restore.version, restore.image)

        def finish(doc: LedgerDoc) -> None:
            r = require(doc, release_id)
            done(r, ctx.clock())
            r.status, r.weight, r.ended_at, r.reason = (
                ReleaseStatus.ABORTED,
                0,
                ctx.clock(),
                reason,
            )

        ctx.record(release_id, finish)
        release = self._ended(release_id, "rolled back")
        self.publish(release_id, release.version, 2, aborted_at=now)
        self.notices.aborted(release)
        data = {"incident": release.incident.model_dump(mode="json") if release.incident else None}
        ctx.emit("rolled_back", release_id, f"rolled back: {reason}", data=data)
        return Outcome(OutcomeStatus.ABORTED, release_id, reason, release.incident)

    # ------------------------------------------------------------------ promotion

    def promote(self, release_id: str, reason: str) -> Outcome:
        ctx = self.ctx
        release = self._release(release_id)
        spec = ReleaseSpec(release.id, release.version, release.image)
        now = ctx.clock()
        ctx.record(
            release_id,
            lambda d: intent(require(d, release_id), Action.PROMOTE, TransitionArgs(), now, True),
        )
        try:
            ctx.act(release_id, "the promotion", lambda: ctx.target.workloads.promote(spec))
        except ProviderGaveUp as exc:
            if exc.then == "hold":
                return self.hold(release_id, Stop(StopKind.HOLD, f"promotion interrupted: {exc}"))
            why = f"promotion failed: {exc}"
            return self.rollback(
                release_id, Stop(StopKind.ROLL_BACK, why, failure("target", "promote", str(exc)))
            )
        except TargetError as exc:
            why = f"promotion failed: {exc}"
            return self.rollback(
                release_id, Stop(StopKind.ROLL_BACK, why, failure("target", "promote", str(exc)))
            )
        reason += self.record_version(release_id, spec.version, spec.image)

        def finish(doc: LedgerDoc) -> None:
            at = ctx.clock()
            r = require(doc, release_id)
            done(r, at)
            r.status, r.weight, r.ended_at, r.reason = ReleaseStatus.PROMOTED, 0, at, reason
            doc.stable = Stable(
                version=spec.version, image=spec.image, release_id=release_id, at=at
            )
            doc.stable_history.append(doc.stable.model_copy())

        ctx.record(release_id, finish)
        self.publish(release_id, spec.version, 1)
        self.notices.promoted(self._ended(release_id, "promoted"))
        ctx.emit("promoted", release_id, f"{spec.version} promoted: {reason}")
        return Outcome(OutcomeStatus.PROMOTED, release_id, reason)

    # ------------------------------------------------------------------ hold

    def hold(self, release_id: str, stop: Stop) -> Outcome:
        status = ReleaseStatus.PAUSED if stop.kind is StopKind.PAUSE else ReleaseStatus.HELD

        def write(doc: LedgerDoc) -> None:
            release = require(doc, release_id)
            release.status, release.reason = status, stop.reason

        self.ctx.record(release_id, write)
        self.notices.held(self._ended(release_id, f"{status.value.lower()}: a human decides now"))
        if status is ReleaseStatus.HELD:
            self.ctx.emit(
                "held",
                release_id,
                f"held: {stop.reason} - `portalctl release resume`, `promote` or `abort`",
            )
        return Outcome(OutcomeStatus.HELD, release_id, stop.reason)

    # ------------------------------------------------------------------ plumbing

    def _ended(self, release_id: str, why: str) -> Release:
        """Nobody drives the release any more: its silence ends, its report is written."""
        self.silences.end(release_id, why)
        if self.reporter is not None:
            try:
                where = self.reporter(self._release(release_id))
            except Exception as exc:  # a report is a convenience: it never fails a release
                self.ctx.emit("info", release_id, f"report not written: {exc}")
            else:

                def note(doc: LedgerDoc) -> None:
                    require(doc, release_id).report = where

                self.ctx.record(release_id, note)
        return self._release(release_id)

    def record_version(self, release_id: str, version: str, image: str | None) -> str:
        """The version stable runs now into ``Pulumi.<stack>.yaml``, before the ledger says so
        (a crash in between is redone by ``resume``). A stack file that cannot be written does
        not undo what runs: the returned note says so, for the release's reason."""
        if self.stackfile is None:
            return ""
        from rollout.stackfile import StackFileError, set_app_version

        try:
            set_app_version(self.stackfile, version, image)
        except StackFileError as exc:
            note = f"; the stack file was not updated ({exc}): set portal:app.version {version}"
            self.ctx.emit("info", release_id, note.removeprefix("; "))
            return note
        return ""

    def publish(
        self, release_id: str, version: str, status: int, aborted_at: float | None = None
    ) -> None:
        """The release's state to the Pushgateway (best effort: never fails a release)."""
        event = ReleaseEvent(self.ctx.cfg.stack, release_id, version, status, aborted_at)
        try:
            self.ctx.target.telemetry.publish(event)
        except TelemetryError as exc:
            self.ctx.emit("info", release_id, str(exc))


def _started(release: Release, action: Action) -> bool:
    return any(t.action is action for t in release.transitions)
