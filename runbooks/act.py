"""A runbook's actions against a target's ports: roll the canary back (through the release
engine when a release is in flight), scale, flush cache keys, switch Sentry off."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contract.config import StackConfig
from rollout.engine import ReleaseEngine
from rollout.ledger import Ledger
from rollout.ports import Target, Unavailable
from runbooks.model import Action, DisableSentry, FlushCache, Rollback, Scale


@dataclass(frozen=True)
class ActionResult:
    action: str
    title: str
    outcome: Literal["done", "failed", "skipped", "declined"]
    detail: str


class Actor:
    def __init__(self, cfg: StackConfig, target: Target, ledger: Ledger, by: str) -> None:
        self.cfg = cfg
        self.target = target
        self.ledger = ledger
        self.by = by

    def not_applicable(self, action: Action) -> str:
        """Why ``action`` would do nothing here (empty when it applies)."""
        if isinstance(action, Rollback):
            state = self.target.workloads.state()
            in_flight = self.ledger.read().active() is not None
            if not in_flight and not (
                state.canary_version or state.weight or state.canary_replicas
            ):
                return "no canary is deployed and no release is in flight: nothing to roll back"
        if isinstance(action, FlushCache | DisableSentry) and isinstance(
            self.target.admin, Unavailable
        ):
            return f"not available: {self.target.admin.reason}"
        return ""

    def do(self, action: Action) -> str:
        if isinstance(action, Rollback):
            return self._rollback()
        if isinstance(action, Scale):
            workloads = self.target.workloads
            deployment = (
                self.cfg.names.stable if action.track == "stable" else self.cfg.names.canary
            )
            current = workloads.replicas(action.track)
            workloads.scale(action.track, current + action.add)
            return f"{deployment} scaled {current} -> {current + action.add}"
        if isinstance(action, FlushCache):
            return self._flush(action.pattern)
        return self._sentry_off()

    def _rollback(self) -> str:
        active = self.ledger.read().active()
        if active is not None:
            outcome = ReleaseEngine(self.cfg, self.target).request("abort", self.by)
            if outcome is None:
                return (
                    f"abort of release {active.id} recorded; the running portalctl "
                    f"acts on it within {self.cfg.canary.interval_s:g}s"
                )
            return f"release {active.id} {outcome.status}: {outcome.reason}"
        workloads = self.target.workloads
        before = workloads.state()
        workloads.rollback()
        after = workloads.state()
        return f"canary {before.canary_version} removed, weight {before.weight}% -> {after.weight}%"

    def _admin(self, path: str, body: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
        admin = self.target.admin
        if isinstance(admin, Unavailable):
            raise RuntimeError(admin.reason)
        return [(a.instance, dict(a.body)) for a in admin.call(path, body)]

    def _flush(self, pattern: str) -> str:
        answers = self._admin("/api/admin/cache/flush", {"pattern": pattern})
        deleted = sum(int(str(a.get("deleted") or 0)) for _n, a in answers)
        detail = (
            f"deleted {deleted} keys matching {pattern!r} "
            f"(Redis and the memory of {len(answers)} instances)"
        )
        no_redis = [n for n, a in answers if a.get("backend") != "redis"]
        if no_redis:
            detail += (
                f"; {', '.join(no_redis)} had no Redis connection (in-memory fallback), so "
                "Redis keys may be left: run it again once their cache check is healthy"
            )
        return detail

    def _sentry_off(self) -> str:
        answers = self._admin("/api/admin/sentry", {"enabled": False})
        states = ", ".join(
            f"{n}: enabled {str(a.get('enabled')).lower()}"
            + ("" if a.get("configured") else " (no SENTRY_DSN)")
            for n, a in answers
        )
        return f"Sentry switched off ({states})"
