"""The release engine: canary steps gated by health and metrics, rollback, promotion, resume.

Every transition is written to the ledger as an ``intent`` before the target is touched and
marked ``done`` after; a ``portalctl`` killed at any point is resumed by performing the last
unfinished transition again (target methods are idempotent) and continuing from the step the
release was on, never repeating a finished step or skipping one. A lease in the ledger keeps
one release per stack at a time, for every command that acts (``start``, ``resume``,
``promote``, ``abort``, ``rollback``, ``contract``); it is renewed in the background while a run
waits, and a holder that lost it stops acting (``rollout.engine.context``).

The target not answering (``TargetUnreachable``: the API server down, a timeout, credentials
being refreshed) is a provider error wherever it happens: the call is retried within
``onProviderError``, then the release holds or rolls back by its policy. The ledger out of reach
is one too; a run that cannot write it at all ends HELD with what the ledger last recorded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from contract.config import StackConfig
from rollout.engine import stable
from rollout.engine.context import Context, LeaseKeeper, ProviderGaveUp
from rollout.engine.endings import Endings
from rollout.engine.notices import Notices
from rollout.engine.outcome import Outcome, OutcomeStatus, ReleaseError, Stop, StopKind
from rollout.engine.records import done, failure, intent
from rollout.engine.silences import Silences
from rollout.engine.stable import release_id_for
from rollout.engine.status import LedgerStatus, pending_of
from rollout.engine.steps import StepRunner
from rollout.events import EventSink, ignore
from rollout.ledger import (
    Action,
    Ledger,
    LedgerDoc,
    LedgerError,
    Release,
    ReleaseInProgress,
    ReleaseStatus,
    Request,
    SilenceRecord,
    Stable,
    require,
)
from rollout.ledger.model import RequestRecord, TransitionArgs
from rollout.ports import ReleaseSpec, Target, TargetError, TargetState, TargetUnreachable

KEEP_RELEASES = 50
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

Reporter = Callable[[Release], str]
"""Writes a release's report and says where (a path or a URL)."""

__all__ = ["LedgerStatus", "ReleaseEngine"]


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
        reporter: Reporter | None = None,
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
        self.notices = Notices(self.ctx)
        self.silences = Silences(self.ctx)
        self.endings = Endings(self.ctx, stackfile, self.notices, self.silences, reporter)
        self.steps = StepRunner(self.ctx, self._transition)

    @property
    def holder(self) -> str:
        return self.ctx.lease.holder

    # =========================================================================== public

    def start(self, spec: ReleaseSpec, silence: Sequence[str] | None = None) -> Outcome:
        """Release ``spec``; ``silence``: alerts muted for the stack while it runs (default
        ``portal:alerts.silence``)."""
        if not VERSION_RE.match(spec.version):
            raise ReleaseError(
                f"version {spec.version!r} is not a valid label (1-64 of A-Za-z0-9._+-)"
            )
        self._check_stack_file()
        state = self.target.workloads.state()
        now = self.ctx.clock()
        spec = replace(spec, release_id=spec.release_id or release_id_for(spec.version, now))
        muted = tuple(self.cfg.alerts.silence if silence is None else silence)

        def begin(doc: LedgerDoc) -> None:
            active = doc.active()
            if active is not None:
                raise ReleaseInProgress(
                    f"release {active.id} ({active.version}) is {active.status}: "
                    "resume, promote or abort it first"
                )
            stable.refuse_pending_rollback(doc)
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
                    silence=SilenceRecord(alerts=list(muted)) if muted else None,
                )
            )
            del doc.releases[:-KEEP_RELEASES]

        self.ctx.take(begin, spec.release_id, "start")
        steps = ", ".join(s.describe() for s in self.canary.steps)
        self.ctx.emit(
            "started",
            spec.release_id,
            f"release {spec.release_id}: {spec.version} on {self.target.name}, steps {steps}",
        )
        self.endings.publish(spec.release_id, spec.version, 0)
        self.notices.started(self._release(spec.release_id))
        return self._run(spec.release_id)

    def resume(self) -> Outcome:
        """Continue the release in flight whose ``portalctl`` died (or that was held), or finish
        an interrupted scripted rollback."""
        self._check_stack_file()
        doc = self.ledger.read()
        if doc.active() is None and stable.pending_rollback(doc) is not None:
            return stable.finish_rollback(self.ctx, self.endings)
        release_id = ""

        def take(doc: LedgerDoc) -> None:
            nonlocal release_id
            active = doc.active()
            if active is None:
                raise ReleaseError("no release in flight to resume")
            if active.status is ReleaseStatus.PAUSED and active.pending_transition() is None:
                raise ReleaseError(
                    f"release {active.id} is paused for approval: "
                    "`portalctl release promote` or `portalctl release abort`"
                )
            release_id = active.id
            active.status = ReleaseStatus.PROGRESSING
            active.holder = self.holder

        self.ctx.take(take, self._active_id(), "resume")
        self._announce_takeover(release_id)
        self.ctx.emit("info", release_id, f"resuming release {release_id}")
        return self._run(release_id)

    def request(self, action: Request | str, by: str) -> Outcome | None:
        """Record a promote or abort. A live ``portalctl`` running the release acts on it within
        one check interval (returns ``None``); with none, this call takes the lease and acts."""
        try:
            action = Request(action)
        except ValueError:
            raise ReleaseError(f"unknown request {action!r} (promote | abort)") from None
        self._check_stack_file()
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
                self.ctx.lease.take(doc, release_id, str(action))

        self.ledger.update(record)
        self.ctx.emit("request", release_id, f"{action} requested by {by}")
        if not acting:
            return None
        self.ctx.lease.held_until = self.ctx.clock() + self.ctx.lease.ttl_s
        self._announce_takeover(release_id)
        if action is Request.ABORT:
            stop = Stop(StopKind.ROLL_BACK, f"aborted by {by}")
            return self._under_lease(release_id, lambda: self.endings.rollback(release_id, stop))
        reason = f"promoted by {by}"
        return self._under_lease(release_id, lambda: self.endings.promote(release_id, reason))

    def status(self) -> LedgerStatus:
        """The ledger, what the target runs now (when it answers), and what an interrupted
        transition leaves open."""
        doc = self.ledger.read()
        running: TargetState | None = None
        running_error = None
        try:
            running = self.target.workloads.state()
        except TargetError as exc:
            running_error = str(exc)
        return LedgerStatus(
            stack=doc.stack,
            target=doc.target,
            stable=doc.stable,
            lease=doc.lease,
            lease_live=doc.lease_live(self.ctx.clock()),
            active=doc.active(),
            releases=doc.releases,
            contract_migrations=doc.contract_migrations,
            pending=pending_of(doc, running),
            running=running,
            running_error=running_error,
            takeovers=doc.takeovers,
        )

    def rollback(self, to: str | None = None, force: bool = False) -> Outcome:
        """Scripted rollback of stable to the last known-good release, or ``to`` (a release id
        or version). Refused where a contract migration ran since, unless ``force``."""
        self._check_stack_file()
        return stable.rollback(self.ctx, self.endings, to, force)

    def contract(self, by: str) -> list[str]:
        """Run the contract migrations of the stable version and record them."""
        return stable.contract(self.ctx, by)

    # ========================================================================= the run

    def _under_lease(self, release_id: str, fn: Callable[[], Outcome]) -> Outcome:
        """``fn`` with the lease renewed in the background, dropped at the end. A ledger that
        cannot be written ends the run HELD, as the ledger last recorded it."""
        try:
            with self.ctx.holding():
                return fn()
        except (ProviderGaveUp, TargetUnreachable, LedgerError) as exc:
            reason = (
                f"the ledger could not be written ({exc}); the release stays as the ledger last "
                "recorded it: `portalctl release status`, then `resume` once it can be"
            )
            self.ctx.emit("held", release_id, reason)
            return Outcome(OutcomeStatus.HELD, release_id, reason)
        finally:
            self.ctx.lease.drop(self.ledger)
            self.notices.flush()

    def _run(self, release_id: str) -> Outcome:
        return self._under_lease(release_id, lambda: self._drive(release_id))

    def _release(self, release_id: str) -> Release:
        return require(self.ledger.read(), release_id)

    def _active_id(self) -> str:
        active = self.ledger.read().active()
        return active.id if active is not None else ""

    def _announce_takeover(self, release_id: str) -> None:
        doc = self.ledger.read()
        last = doc.takeovers[-1] if doc.takeovers else None
        if last is not None and last.holder == self.holder and last.release_id == release_id:
            self.ctx.emit(
                "lease",
                release_id,
                f"took over the lease of {last.previous}, which expired "
                f"{max(0.0, last.at - last.expired_at):.0f}s ago (recorded in the ledger)",
            )

    def _check_stack_file(self) -> None:
        """A stack file a promotion could not update is refused before anything changes."""
        if self.stackfile is None:
            return
        from rollout.stackfile import StackFileError, check_stack_file

        try:
            check_stack_file(self.stackfile)
        except StackFileError as exc:
            raise ReleaseError(str(exc)) from None

    def _drive(self, release_id: str) -> Outcome:
        release = self._release(release_id)
        spec = ReleaseSpec(release.id, release.version, release.image)
        pending = release.pending_transition()
        if pending is not None:
            self.ctx.emit("info", release_id, f"redoing unfinished transition {pending.action}")
            if pending.action is Action.ROLLBACK:
                reason = release.reason or "rollback interrupted; finished now"
                return self.endings.rollback(release_id, Stop(StopKind.ROLL_BACK, reason))
            if pending.action is Action.PROMOTE:
                return self.endings.promote(release_id, "promotion interrupted; finished now")
        try:
            self.silences.hold(release_id, release.step)
            self._prepare(release, spec)
            steps = self.canary.steps
            for index in range(release.step, len(steps)):
                self.silences.hold(release_id, index)
                self.steps.run(release_id, spec, index, steps[index])
                self._passed(release_id, index)
        except Stop as stop:
            if stop.kind is StopKind.PROMOTE_NOW:
                return self.endings.promote(release_id, stop.reason)
            if stop.kind in (StopKind.HOLD, StopKind.PAUSE):
                return self.endings.hold(release_id, stop)
            return self.endings.rollback(release_id, stop)
        return self.endings.promote(release_id, "every step passed")

    def _passed(self, release_id: str, index: int) -> None:
        def write(doc: LedgerDoc) -> None:
            require(doc, release_id).step = index + 1

        self.ctx.record(release_id, write)
        self.notices.step_passed(self._release(release_id), index)

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
        """Write ``action`` ahead, perform it (retried while the target does not answer), mark
        it done. A refusal rolls back; a target that stays silent applies onProviderError."""
        now = self.ctx.clock()
        self.ctx.record(release_id, lambda doc: intent(require(doc, release_id), action, args, now))
        try:
            self.ctx.act(release_id, str(action), act)
        except ProviderGaveUp as exc:
            kind = StopKind.HOLD if exc.then == "hold" else StopKind.ROLL_BACK
            raise Stop(kind, str(exc), failure("target", action, str(exc.error))) from exc
        except TargetError as exc:
            raise Stop(
                StopKind.ROLL_BACK, f"{action} failed: {exc}", failure("target", action, str(exc))
            ) from exc

        def finish(doc: LedgerDoc) -> None:
            release = require(doc, release_id)
            done(release, self.ctx.clock())
            if action is Action.SET_WEIGHT and args.weight is not None:
                release.weight = args.weight

        self.ctx.record(release_id, finish)
