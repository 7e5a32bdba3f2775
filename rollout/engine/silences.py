"""The silence of a release's expected noise (``portalctl release start --silence ALERT...``, or
``portal:alerts.silence``): an Alertmanager silence of those alerts for the stack, recorded in
the release's ledger record.

It is kept like a lease: created before the release's first transition with an end at the
expected end of the remaining steps plus a margin, and moved at every step; so a ``portalctl``
that dies leaves a silence that ends by itself soon after, and a resumed one finds it in the
ledger and keeps it. It is expired when the release is promoted, rolled back, paused or held:
once nobody is driving the release, alerts must reach people again (a resume silences anew).
Alertmanager being unreachable never stops a release: the failure is shown and recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rollout.engine.context import Context
from rollout.ledger import LedgerDoc, SilenceRecord, require
from rollout.ports import AlertingError, SilenceSpec

MARGIN_S = 60.0
"""Beyond the expected end of the remaining steps (at least ``canary.leaseTtl``)."""


class Silences:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _remaining_s(self, index: int) -> float:
        """The expected time of the steps from ``index`` up to the next pause (or the end)."""
        c = self.ctx.cfg.canary
        total = 0.0
        for step in c.steps[index:]:
            if step.pause:
                break
            total += c.settle_s + step.analysis_s
        return total + max(MARGIN_S, c.lease_ttl_s)

    def _record(self, release_id: str) -> SilenceRecord | None:
        return require(self.ctx.ledger.read(), release_id).silence

    def _note(self, release_id: str, detail: str) -> None:
        def write(doc: LedgerDoc) -> None:
            record = require(doc, release_id).silence
            if record is not None:
                record.detail = detail

        self.ctx.ledger.update(write)
        self.ctx.emit("info", release_id, detail)

    def hold(self, release_id: str, index: int) -> None:
        """The silence is on until the expected end of the steps from ``index`` on."""
        record = self._record(release_id)
        if record is None or not record.alerts:
            return
        now = self.ctx.clock()
        ends_at = now + self._remaining_s(index)
        live = record.id if record.ended_at is None else None
        spec = SilenceSpec(
            alerts=tuple(record.alerts),
            stack=self.ctx.cfg.stack,
            starts_at=now,
            ends_at=ends_at,
            created_by=f"portalctl ({self.ctx.lease.holder})",
            comment=f"release {release_id} of {self.ctx.cfg.stack}: expected noise while it runs",
            silence_id=live,
        )
        try:
            silence_id = self.ctx.target.alerting.silence(spec)
        except AlertingError as exc:
            self._note(release_id, f"silence of {', '.join(record.alerts)} not set: {exc}")
            return

        def write(doc: LedgerDoc) -> None:
            rec = require(doc, release_id).silence
            assert rec is not None
            if rec.id != silence_id:
                rec.created_at = now
            rec.id, rec.ends_at, rec.ended_at, rec.detail = silence_id, ends_at, None, None

        self.ctx.ledger.update(write)
        if silence_id != live:
            until = datetime.fromtimestamp(ends_at, UTC).strftime("%H:%M:%SZ")
            self.ctx.emit(
                "info",
                release_id,
                f"silence {silence_id}: {', '.join(record.alerts)} muted for stack "
                f"{self.ctx.cfg.stack} until {until} (moved at every step)",
            )

    def end(self, release_id: str, why: str) -> None:
        """Expire the silence (the release ended, paused or was held)."""
        record = self._record(release_id)
        if record is None or record.id is None or record.ended_at is not None:
            return
        try:
            self.ctx.target.alerting.expire(record.id)
        except AlertingError as exc:
            self._note(release_id, f"silence {record.id} not expired (it ends by itself): {exc}")
            return
        now = self.ctx.clock()

        def write(doc: LedgerDoc) -> None:
            rec = require(doc, release_id).silence
            assert rec is not None
            rec.ended_at = now

        self.ctx.ledger.update(write)
        self.ctx.emit("info", release_id, f"silence {record.id} expired: {why}")
