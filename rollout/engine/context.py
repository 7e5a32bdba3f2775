"""What every part of a run shares: the config, the target's ports, the ledger, the lease, the
clock and the event sink."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contract.config import StackConfig
from rollout.events import Event, EventKind, EventSink, ignore
from rollout.ledger import Lease, Ledger, LedgerDoc, LedgerError, ReleaseInProgress, new_holder
from rollout.ports import Target


@dataclass
class LeaseKeeper:
    """One release per stack: the lease in the ledger, taken, renewed and dropped by a holder.
    A holder that stops renewing it loses it after ``ttl_s``."""

    stack: str
    ttl_s: float
    clock: Callable[[], float]
    holder: str = field(default_factory=new_holder)

    def take(self, doc: LedgerDoc, release_id: str) -> None:
        now = self.clock()
        lease = doc.lease
        if lease is not None and doc.lease_live(now) and lease.holder != self.holder:
            left = lease.expires_at - now
            raise ReleaseInProgress(
                f"stack {self.stack} is held by {lease.holder} for release "
                f"{lease.release_id} (lease expires in {left:.0f}s if that portalctl died)"
            )
        doc.lease = Lease(holder=self.holder, release_id=release_id, expires_at=now + self.ttl_s)

    def check(self, doc: LedgerDoc) -> Lease:
        lease = doc.lease
        if lease is None or lease.holder != self.holder:
            holder = lease.holder if lease else "nobody"
            raise ReleaseInProgress(f"this portalctl lost the lease (now held by {holder})")
        return lease

    def renew(self, doc: LedgerDoc, now: float) -> None:
        self.check(doc).expires_at = now + self.ttl_s

    def drop(self, ledger: Ledger) -> None:
        def drop(doc: LedgerDoc) -> None:
            if doc.lease is not None and doc.lease.holder == self.holder:
                doc.lease = None

        with contextlib.suppress(LedgerError, OSError):  # it expires on its own
            ledger.update(drop)


@dataclass
class Context:
    cfg: StackConfig
    target: Target
    ledger: Ledger
    lease: LeaseKeeper
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    sink: EventSink = ignore

    def emit(
        self,
        kind: EventKind,
        release_id: str,
        message: str,
        *,
        step: int | None = None,
        weight: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.sink(Event(kind, release_id, message, step, weight, data or {}))
