"""What every part of a run shares: the config, the target's ports, the ledger, the lease, the
clock and the event sink; and the three ways a run touches the world, each under the lease:
``write`` (a ledger change that renews it), ``act`` (a target call, retried within
``onProviderError`` while the target does not answer) and ``holding`` (a background renewal for
as long as an action waits).

The lease. One holder per stack: ``take`` refuses while another holder's lease is live and
records a takeover (both holders) when it had expired. While a run holds it, a renewer thread
extends it every third of ``leaseTtl``, so a migration or a rollout that waits for minutes
keeps it; every ledger write of the run extends it too. A holder that finds the lease in other
hands (it froze, or lost its way to the ledger for longer than ``leaseTtl`` and another
``portalctl`` took over) stops acting: its next target call or ledger write raises
``LeaseLost``. And it acts only on a lease it knows to be live: when its last successful renewal
is about to run out, the next action renews first (and waits, as a provider error, while the
ledger cannot be reached).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from contract.config import StackConfig
from rollout.events import Event, EventKind, EventSink, ignore
from rollout.ledger import Lease, Ledger, LedgerDoc, LedgerError, ReleaseInProgress, new_holder
from rollout.ledger.model import Takeover
from rollout.ports import Target, TargetError, TargetUnreachable

T = TypeVar("T")
KEEP_TAKEOVERS = 50


class LeaseLost(ReleaseInProgress):
    """This ``portalctl`` no longer holds the lease (another took it over): it stopped acting."""


class ProviderGaveUp(Exception):
    """The target did not answer for ``onProviderError.limit``: the policy decides."""

    def __init__(self, what: str, error: TargetError, lasted_s: float, then: str) -> None:
        super().__init__(
            f"{what}: the target did not answer for {lasted_s:.0f}s "
            f"(onProviderError: {then}): {error}"
        )
        self.then = then
        self.error = error


@dataclass
class LeaseKeeper:
    """One release per stack: the lease in the ledger, taken, renewed and dropped by a holder.
    A holder that stops renewing it loses it after ``ttl_s``."""

    stack: str
    ttl_s: float
    clock: Callable[[], float]
    holder: str = field(default_factory=new_holder)
    held_until: float = 0.0
    """When the lease this holder last wrote runs out (by ``clock``)."""
    lost: str | None = None
    """Why this holder no longer holds it, once it found out."""

    def take(self, doc: LedgerDoc, release_id: str, action: str) -> None:
        now = self.clock()
        lease = doc.lease
        if lease is not None and doc.lease_live(now) and lease.holder != self.holder:
            left = lease.expires_at - now
            raise ReleaseInProgress(
                f"stack {self.stack} is held by {lease.holder} for {lease.release_id} "
                f"(lease expires in {left:.0f}s if that portalctl died)"
            )
        if lease is not None and lease.holder != self.holder:
            doc.takeovers.append(
                Takeover(
                    at=now,
                    previous=lease.holder,
                    expired_at=lease.expires_at,
                    release_id=lease.release_id,
                    holder=self.holder,
                    action=action,
                )
            )
            del doc.takeovers[:-KEEP_TAKEOVERS]
        doc.lease = Lease(holder=self.holder, release_id=release_id, expires_at=now + self.ttl_s)
        self.lost = None

    def check(self, doc: LedgerDoc) -> Lease:
        lease = doc.lease
        if lease is None or lease.holder != self.holder:
            holder = lease.holder if lease else "nobody"
            self.lost = (
                f"this portalctl ({self.holder}) lost the lease of stack {self.stack} to "
                f"{holder}, which acts on it now; it stopped acting (see `portalctl release "
                "status`)"
            )
        if self.lost is not None:
            raise LeaseLost(self.lost)
        assert lease is not None
        return lease

    def renew(self, doc: LedgerDoc, now: float) -> float:
        """Extend the lease in ``doc``; the new expiry (``held_until`` once it is written)."""
        lease = self.check(doc)
        lease.expires_at = max(lease.expires_at, now + self.ttl_s)
        return lease.expires_at

    def drop(self, ledger: Ledger) -> None:
        def drop(doc: LedgerDoc) -> None:
            if doc.lease is not None and doc.lease.holder == self.holder:
                doc.lease = None

        with contextlib.suppress(LedgerError, TargetError, OSError):  # it expires on its own
            ledger.update(drop)
        self.held_until = 0.0


@dataclass
class Context:
    cfg: StackConfig
    target: Target
    ledger: Ledger
    lease: LeaseKeeper
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    sink: EventSink = ignore
    unreachable_at: float | None = None
    """When the target last did not answer (``coming_back``)."""

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

    # ------------------------------------------------------------------ under the lease

    def take(self, fn: Callable[[LedgerDoc], T], release_id: str, action: str) -> T:
        """Take the lease for ``release_id`` and apply ``fn`` in the same write."""

        def write(doc: LedgerDoc) -> T:
            self.lease.take(doc, release_id, action)
            return fn(doc)

        result = self.ledger.update(write)
        self.lease.held_until = self.clock() + self.lease.ttl_s
        return result

    def write(self, fn: Callable[[LedgerDoc], T]) -> T:
        """Apply ``fn`` to the ledger as the lease's holder (renewing it): ``LeaseLost`` when
        another holder has it."""
        expiry = 0.0

        def write(doc: LedgerDoc) -> T:
            nonlocal expiry
            expiry = self.lease.renew(doc, self.clock())
            return fn(doc)

        result = self.ledger.update(write)
        self.lease.held_until = max(self.lease.held_until, expiry)
        return result

    def record(self, release_id: str, fn: Callable[[LedgerDoc], T]) -> T:
        """``write``, tried again while the ledger does not answer (``act``'s policy)."""
        return self.act(release_id, "writing the ledger", lambda: self.write(fn))

    def coming_back(self, exc: TargetError) -> bool:
        """Whether ``exc`` is the target not answering (noted), or a refusal within
        ``onProviderError.limit`` of it last not answering: an API server that comes back
        refuses requests (403) until its authorizer has caught up, so such a refusal is
        retried like the silence before it, not taken for a missing permission."""
        now = self.clock()
        if isinstance(exc, TargetUnreachable):
            self.unreachable_at = now
            return True
        at = self.unreachable_at
        return at is not None and now - at < self.cfg.canary.on_provider_error.limit_s

    def ensure_lease(self) -> None:
        """Before acting: ``LeaseLost`` if it is gone; renewed first when it runs low."""
        if self.lease.lost is not None:
            raise LeaseLost(self.lease.lost)
        margin = min(self.lease.ttl_s / 3, 10.0)
        if self.clock() + margin >= self.lease.held_until:
            self.write(lambda doc: None)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Renew the lease in the background (every third of its TTL) while the block runs:
        a migration or a rollout that waits for minutes keeps it."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease.ttl_s / 3):
                try:
                    self.write(lambda doc: None)
                except LeaseLost:
                    return  # the run finds out at its next action
                except (LedgerError, TargetError, OSError):
                    continue  # the ledger is out of reach: actions wait until it is back

        thread = threading.Thread(target=renew, name="lease-renewer", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def act(self, release_id: str, what: str, fn: Callable[[], T]) -> T:
        """Call the target under a live lease. While the target does not answer
        (``TargetUnreachable``, the ledger out of reach included) the call is tried again every
        ``interval`` for up to ``onProviderError.limit``; then ``ProviderGaveUp``. A refusal
        (a plain ``TargetError``) is raised at once, unless the target is coming back
        (``coming_back``)."""
        policy = self.cfg.canary.on_provider_error
        first: float | None = None
        while True:
            try:
                self.ensure_lease()
                return fn()
            except TargetError as exc:
                if not self.coming_back(exc):
                    raise
                now = self.clock()
                first = now if first is None else first
                lasted = now - first
                if lasted >= policy.limit_s:
                    raise ProviderGaveUp(what, exc, lasted, policy.then) from exc
                left = policy.limit_s - lasted
                self.emit(
                    "provider_error",
                    release_id,
                    f"{what}: {exc} - trying again for up to {left:.0f}s (onProviderError)",
                )
                self.sleep(min(self.cfg.canary.interval_s, left))
