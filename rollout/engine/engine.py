"""The release engine: canary steps gated by health and metrics, rollback, promotion, resume.

Every transition is written to the ledger as an ``intent`` before the target is touched and
marked ``done`` after; a ``portalctl`` killed at any point is resumed by performing the last
unfinished transition again (target methods are idempotent) and continuing from the step the
release was on, never repeating a finished step or skipping one. A lease in the ledger keeps
one release per stack at a time; a holder that stops renewing it loses it after
``canary.leaseTtl`` (every write a run makes renews it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel

from contract.config import StackConfig
from rollout.engine import stable
from rollout.engine.context import Context, LeaseKeeper
from rollout.engine.outcome import Outcome, OutcomeStatus, ReleaseError, Stop, StopKind
from rollout.engine.records import done, failure, incident_for, intent
from rollout.engine.stable import release_id_for
from rollout.engine.steps import StepRunner
from rollout.events import EventSink, ignore
from rollout.ledger import (
    Action,
    Lease,
    Ledger,
    LedgerDoc,
    Release,
    ReleaseInProgress,
    ReleaseStatus,
    Request,
    Stable,
    require,
)
from rollout.ledger.model import ContractMigration, RequestRecord, TransitionArgs
from rollout.ports import ReleaseEvent, ReleaseSpec, Target, TargetError, TelemetryError

KEEP_RELEASES = 50
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class LedgerStatus(BaseModel):
    """What ``portalctl release status`` shows."""

    stack: str
    target: str
    stable: Stable | None
    lease: Lease | None
    lease_live: bool
    active: Release | None
    releases: list[Release]
    contract_migrations: list[ContractMigration]


class ReleaseEngine:
    def __init__(
        self,
        cfg: StackConfig,
        target: Target,
        *,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        holder: str | None = None,
        stackfile: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.canary = cfg.canary
        self.target = target
        self.ledger = Ledger(target.ledger, cfg.stack, target.name)
        lease = LeaseKeeper(cfg.stack, cfg.canary.lease_ttl_s, clock)
        if holder is not None:
            lease.holder = holder
        self.ctx = Context(cfg, target, self.ledger, lease, clock, sleep, events or ignore)
        self.stackfile = stackfile
        self.steps = StepRunner(self.ctx, self._transition)

    @property
    def holder(self) -> str:
        return self.ctx.lease.holder

    # =========================================================================== public

    def start(self, spec: ReleaseSpec) -> Outcome:
        if not VERSION_RE.match(spec.version):
            raise ReleaseError(
                f"version {spec.version!r} is not a valid label (1-64 of A-Za-z0-9._+-)"
            )
        state = self.target.workloads.state()
        now = self.ctx.clock()
        spec = replace(spec, release_id=spec.release_id or release_id_for(spec.version, now))

        def begin(doc: LedgerDoc) -> None:
            self.ctx.lease.take(doc, spec.release_id)
            active = doc.active()
            if active is not None:
                raise ReleaseInProgress(
                    f"release {active.id} ({active.version}) is {active.status}: "
                    "resume, promote or abort it first"
                )
            if doc.stable is None:
                doc.stable = Stable(version=state.stable_version, image=state.stable_image, at=now)
                doc.stable_history = [doc.stable.model_copy()]
            if spec.version == doc.stable.version and spec.image == doc.stable.image:
                raise ReleaseError(f"{spec.version} is already the stable version")
            doc.releases.append(
                Release(
                    id=spec.release_id,
                    version=spec.version,
                    image=spec.image,
                    status=ReleaseStatus.PROGRESSING,
                    created_at=now,
                    steps=[s.describe() for s in self.canary.steps],
                    previous_stable=doc.stable.model_copy(),
                    holder=self.holder,
                )
            )
            del doc.releases[:-KEEP_RELEASES]

        self.ledger.update(begin)
        steps = ", ".join(s.describe() for s in self.canary.steps)
        self.ctx.emit(
            "started",
            spec.release_id,
            f"release {spec.release_id}: {spec.version} on {self.target.name}, steps {steps}",
        )
        self._publish(spec.release_id, spec.version, 0)
        return self._run(spec.release_id)

    def resume(self) -> Outcome:
        """Continue the release in flight whose ``portalctl`` died (or that was held)."""
        release_id = ""

        def take(doc: LedgerDoc) -> None:
            nonlocal release_id
            active = doc.active()
            if active is None:
                raise ReleaseError("no release in flight to resume")
            if active.status is ReleaseStatus.PAUSED:
                raise ReleaseError(
                    f"release {active.id} is paused for approval: "
                    "`portalctl release promote` or `portalctl release abort`"
                )
            release_id = active.id
            self.ctx.lease.take(doc, release_id)
            active.status = ReleaseStatus.PROGRESSING
            active.holder = self.holder

        self.ledger.update(take)
        self.ctx.emit("info", release_id, f"resuming release {release_id}")
        return self._run(release_id)

    def request(self, action: Request | str, by: str) -> Outcome | None:
        """Record a promote or abort. A live ``portalctl`` running the release acts on it within
        one check interval (returns ``None``); with none, this call acts itself."""
        try:
            action = Request(action)
        except ValueError:
            raise ReleaseError(f"unknown request {action!r} (promote | abort)") from None
        now = self.ctx.clock()
        acting = False
        release_id = ""

        def record(doc: LedgerDoc) -> None:
            nonlocal acting, release_id
            active = doc.active()
            if active is None:
                raise ReleaseError("no release in flight")
            release_id = active.id
            live_other = (
                doc.lease_live(now) and doc.lease is not None and doc.lease.holder != self.holder
            )
            acting = not live_other
            active.requests.append(RequestRecord(action=action, by=by, at=now, handled=acting))
            if acting:
                self.ctx.lease.take(doc, release_id)

        self.ledger.update(record)
        self.ctx.emit("request", release_id, f"{action} requested by {by}")
        if not acting:
            return None
        try:
            if action is Request.ABORT:
                return self._rollback(release_id, Stop(StopKind.ROLL_BACK, f"aborted by {by}"))
            return self._promote(release_id, f"promoted by {by}")
        finally:
            self.ctx.lease.drop(self.ledger)

    def status(self) -> LedgerStatus:
        doc = self.ledger.read()
        return LedgerStatus(
            stack=doc.stack,
            target=doc.target,
            stable=doc.stable,
            lease=doc.lease,
            lease_live=doc.lease_live(self.ctx.clock()),
            active=doc.active(),
            releases=doc.releases,
            contract_migrations=doc.contract_migrations,
        )

    def rollback(self, to: str | None = None, force: bool = False) -> Outcome:
        """Scripted rollback of stable to the last known-good release, or ``to`` (a release id
        or version). Refused where a contract migration ran since, unless ``force``."""
        return stable.rollback(self.ctx, self._record_version, to, force)

    def contract(self, by: str) -> list[str]:
        """Run the contract migrations of the stable version and record them."""
        return stable.contract(self.ctx, by)

    # ========================================================================= the run

    def _run(self, release_id: str) -> Outcome:
        try:
            return self._drive(release_id)
        finally:
            self.ctx.lease.drop(self.ledger)

    def _release(self, release_id: str) -> Release:
        return require(self.ledger.read(), release_id)

    def _drive(self, release_id: str) -> Outcome:
        release = self._release(release_id)
        spec = ReleaseSpec(release.id, release.version, release.image)
        pending = release.pending_transition()
        if pending is not None:
            self.ctx.emit("info", release_id, f"redoing unfinished transition {pending.action}")
            if pending.action is Action.ROLLBACK:
                reason = release.reason or "rollback interrupted; finished now"
                return self._rollback(release_id, Stop(StopKind.ROLL_BACK, reason))
            if pending.action is Action.PROMOTE:
                return self._promote(release_id, "promotion interrupted; finished now")
        try:
            self._prepare(release, spec)
            steps = self.canary.steps
            for index in range(release.step, len(steps)):
                self.steps.run(release_id, spec, index, steps[index])
                self._passed(release_id, index)
        except Stop as stop:
            if stop.kind is StopKind.PROMOTE_NOW:
                return self._promote(release_id, stop.reason)
            if stop.kind in (StopKind.HOLD, StopKind.PAUSE):
                return self._hold(release_id, stop)
            return self._rollback(release_id, stop)
        return self._promote(release_id, "every step passed")

    def _passed(self, release_id: str, index: int) -> None:
        def write(doc: LedgerDoc) -> None:
            require(doc, release_id).step = index + 1

        self.ledger.update(write)

    def _prepare(self, release: Release, spec: ReleaseSpec) -> None:
        """The expand migrations, then the canary with no traffic (each once)."""
        if not release.done(Action.MIGRATE_EXPAND):
            self._transition(
                release.id, Action.MIGRATE_EXPAND, TransitionArgs(), lambda: self._migrate(spec)
            )
        if not release.done(Action.DEPLOY_CANARY):
            replicas = self.cfg.app.canary_replicas
            self._transition(
                release.id,
                Action.DEPLOY_CANARY,
                TransitionArgs(replicas=replicas),
                lambda: self.target.workloads.deploy_canary(spec, replicas),
            )
            self.ctx.emit(
                "canary_deployed",
                release.id,
                f"canary {spec.version} running ({replicas} instance(s)), no traffic",
            )

    def _migrate(self, spec: ReleaseSpec) -> None:
        result = self.target.migrator.run(spec, "expand")
        if not result.ok:
            raise Stop(
                StopKind.ROLL_BACK,
                f"expand migration failed: {result.detail}",
                failure("migration", "migration", result.detail),
            )
        applied = ", ".join(result.applied) or "nothing new"
        self.ctx.emit("migration", spec.release_id, f"expand migrations: {applied}")

    def _transition(
        self, release_id: str, action: Action, args: TransitionArgs, act: Callable[[], None]
    ) -> None:
        now = self.ctx.clock()

        def write_intent(doc: LedgerDoc) -> None:
            self.ctx.lease.renew(doc, now)
            intent(require(doc, release_id), action, args, now)

        self.ledger.update(write_intent)
        try:
            act()
        except TargetError as exc:
            raise Stop(
                StopKind.ROLL_BACK, f"{action} failed: {exc}", failure("target", action, str(exc))
            ) from exc

        def finish(doc: LedgerDoc) -> None:
            at = self.ctx.clock()
            self.ctx.lease.renew(doc, at)
            release = require(doc, release_id)
            done(release, at)
            if action is Action.SET_WEIGHT and args.weight is not None:
                release.weight = args.weight

        self.ledger.update(finish)

    # ------------------------------------------------------------------ endings

    def _rollback(self, release_id: str, stop: Stop) -> Outcome:
        now = self.ctx.clock()
        incident = incident_for(self._release(release_id), stop, now)

        def write_intent(doc: LedgerDoc) -> None:
            release = require(doc, release_id)
            release.reason = stop.reason
            intent(release, Action.ROLLBACK, TransitionArgs(), now, redo_last=True)
            if release.incident is None:
                release.incident = incident

        self.ledger.update(write_intent)
        self.target.workloads.rollback()

        def finish(doc: LedgerDoc) -> None:
            release = require(doc, release_id)
            done(release, self.ctx.clock())
            release.status = ReleaseStatus.ABORTED
            release.weight = 0
            release.ended_at = self.ctx.clock()

        self.ledger.update(finish)
        release = self._release(release_id)
        self._publish(release_id, release.version, 2, aborted_at=now)
        data = {"incident": release.incident.model_dump(mode="json") if release.incident else None}
        self.ctx.emit("rolled_back", release_id, f"rolled back: {stop.reason}", data=data)
        return Outcome(OutcomeStatus.ABORTED, release_id, stop.reason, release.incident)

    def _promote(self, release_id: str, reason: str) -> Outcome:
        release = self._release(release_id)
        spec = ReleaseSpec(release.id, release.version, release.image)
        now = self.ctx.clock()
        self.ledger.update(
            lambda d: intent(require(d, release_id), Action.PROMOTE, TransitionArgs(), now, True)
        )
        try:
            self.target.workloads.promote(spec)
        except TargetError as exc:
            return self._rollback(release_id, Stop(StopKind.ROLL_BACK, f"promotion failed: {exc}"))

        def finish(doc: LedgerDoc) -> None:
            at = self.ctx.clock()
            r = require(doc, release_id)
            done(r, at)
            r.status, r.weight, r.ended_at, r.reason = ReleaseStatus.PROMOTED, 0, at, reason
            doc.stable = Stable(
                version=spec.version, image=spec.image, release_id=release_id, at=at
            )
            doc.stable_history.append(doc.stable.model_copy())

        self.ledger.update(finish)
        self._record_version(spec.version, spec.image)
        self._publish(release_id, spec.version, 1)
        self.ctx.emit("promoted", release_id, f"{spec.version} promoted: {reason}")
        return Outcome(OutcomeStatus.PROMOTED, release_id, reason)

    def _hold(self, release_id: str, stop: Stop) -> Outcome:
        status = ReleaseStatus.PAUSED if stop.kind is StopKind.PAUSE else ReleaseStatus.HELD

        def write(doc: LedgerDoc) -> None:
            release = require(doc, release_id)
            release.status, release.reason = status, stop.reason

        self.ledger.update(write)
        if status is ReleaseStatus.HELD:
            self.ctx.emit(
                "held",
                release_id,
                f"held: {stop.reason} - `portalctl release resume`, `promote` or `abort`",
            )
        return Outcome(OutcomeStatus.HELD, release_id, stop.reason)

    # --------------------------------------------------------------------- plumbing

    def _record_version(self, version: str, image: str | None) -> None:
        """The promoted (or rolled-back-to) version into ``Pulumi.<stack>.yaml``."""
        if self.stackfile is None:
            return
        from rollout.stackfile import set_app_version

        set_app_version(self.stackfile, version, image)

    def _publish(
        self, release_id: str, version: str, status: int, aborted_at: float | None = None
    ) -> None:
        """The release's state to the Pushgateway (best effort: never fails a release)."""
        event = ReleaseEvent(self.cfg.stack, release_id, version, status, aborted_at)
        try:
            self.target.telemetry.publish(event)
        except TelemetryError as exc:
            self.ctx.emit("info", release_id, str(exc))
