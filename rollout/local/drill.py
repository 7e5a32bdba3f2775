"""The drill (``make demo``): three releases on the local stack under steady load.

v2.0.0 is healthy and goes through every step to 100%; v3.0.0 has the fault switch on (20% of
requests fail) and the error gate rolls it back; v4.0.0 only adds 300 ms of latency and the
latency gate rolls it back. Each release gets an HTML report; the figures (seconds from v3's
first canary traffic to weight 0, false rollbacks) are printed at the end, and so are the
notifications the local alert receiver got from Alertmanager meanwhile: the release events and
the alerts, with their runbook links.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from rollout.engine import Outcome, OutcomeStatus, ReleaseEngine
from rollout.ledger import Action, LedgerDoc, Release, Stable, TransitionState
from rollout.local import webhook
from rollout.local.load import LoadGenerator
from rollout.local.stack import STABLE_VERSION, LocalStack
from rollout.local.target import local_target
from rollout.ports import ReleaseSpec
from rollout.progress import Progress
from rollout.report import file_reporter

RELEASES: tuple[tuple[str, dict[str, str], OutcomeStatus, str], ...] = (
    ("2.0.0", {}, OutcomeStatus.PROMOTED, "healthy"),
    ("3.0.0", {"PORTAL_FAULT_ERROR_RATE": "0.2"}, OutcomeStatus.ABORTED, "20% of requests fail"),
    (
        "4.0.0",
        {"PORTAL_FAULT_LATENCY_MS": "300"},
        OutcomeStatus.ABORTED,
        "+300 ms on every request",
    ),
)
"""Version, its environment on the local stack (the app's fault switches), the outcome the
gates must reach, what is wrong with it."""


@dataclass
class DrillRelease:
    version: str
    fault: str
    expected: OutcomeStatus
    outcome: Outcome
    report: Path
    detect_s: float | None
    """Seconds from the first canary traffic to weight 0 (rolled-back releases)."""
    release_id: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome.status == self.expected


@dataclass
class DrillResult:
    releases: list[DrillRelease] = field(default_factory=list)
    requests: int = 0
    failed_requests: int = 0
    notifications: list[dict[str, Any]] = field(default_factory=list)
    """Every alert the local receiver got during the drill (``webhook.alerts``)."""
    notified: bool = False
    """Every rollback's notification arrived, with its runbook link."""

    @property
    def ok(self) -> bool:
        return bool(self.releases) and all(r.ok for r in self.releases) and self.notified

    @property
    def false_rollbacks(self) -> int:
        return sum(
            1
            for r in self.releases
            if r.expected is OutcomeStatus.PROMOTED and r.outcome.status is OutcomeStatus.ABORTED
        )


def time_to_weight_zero(release: Release) -> float | None:
    """From the first ``set_weight`` to a non-zero weight being done, to the rollback done."""

    def done_at(action: Action, nonzero: bool = False) -> float | None:
        for t in release.transitions:
            counts = not nonzero or (t.args.weight or 0) > 0
            if t.action is action and t.state is TransitionState.DONE and counts:
                return t.done_at if t.done_at is not None else t.at
        return None

    first, back = done_at(Action.SET_WEIGHT, nonzero=True), done_at(Action.ROLLBACK)
    if first is None or back is None:
        return None
    return back - first


def run_drill(
    root: Path,
    *,
    console: Console,
    rate_per_s: float = 40.0,
    releases: tuple[tuple[str, dict[str, str], OutcomeStatus, str], ...] = RELEASES,
) -> DrillResult:
    stack = LocalStack(root)
    console.rule("[bold]portal drill: local stack")
    state = stack.up(lambda m: console.print(f"• {m}"))
    target = local_target(stack)
    cfg = stack.config()
    reports = root / "reports"
    engine = ReleaseEngine(
        cfg, target, events=Progress(console, quiet_passes=True), reporter=file_reporter(reports)
    )
    if engine.ledger.read().active() is not None:
        console.print("• aborting a release left in flight by an earlier run")
        engine.request("abort", "drill")
    if target.workloads.state().stable_version != STABLE_VERSION:
        console.print(f"• returning stable to {STABLE_VERSION} for a fresh drill")
        stack.set_version_env(STABLE_VERSION, {})
        target.workloads.set_stable(STABLE_VERSION, None)

        def fresh(doc: LedgerDoc) -> None:
            doc.stable = Stable(version=STABLE_VERSION)

        engine.ledger.update(fresh)

    result = DrillResult()
    since = time.time()
    load = LoadGenerator(state["nginx_url"], stack.credentials(), rate_per_s=rate_per_s).start()
    try:
        for version, env, expected, fault in releases:
            console.rule(f"[bold]release {version}: {fault} (expect {expected})")
            stack.set_version_env(version, env)
            outcome = engine.start(ReleaseSpec("", version))
            record = engine.ledger.find(outcome.release_id)
            assert record is not None and record.report is not None
            report = Path(record.report)
            detect = (
                time_to_weight_zero(record) if outcome.status is OutcomeStatus.ABORTED else None
            )
            result.releases.append(
                DrillRelease(version, fault, expected, outcome, report, detect, outcome.release_id)
            )
            console.print(f"report: {report}")
    finally:
        counts = load.stop()
        result.requests, result.failed_requests = counts.sent, counts.errors

    console.rule("[bold]drill summary")
    for r in result.releases:
        mark = "[green]as expected[/green]" if r.ok else "[red]NOT as expected[/red]"
        extra = f", {r.detect_s:.1f}s from first canary traffic to weight 0" if r.detect_s else ""
        console.print(f"{r.version:7} {r.fault:26} -> {r.outcome.status:8} {mark}{extra}")
    statuses = ", ".join(f"{k or 'no answer'}: {v}" for k, v in sorted(counts.by_status.items()))
    console.print(
        f"load: {result.requests} requests ({statuses}), {result.failed_requests} failed; "
        f"false rollbacks: {result.false_rollbacks}; reports in {reports}"
    )
    aborted = [r.release_id for r in result.releases if r.outcome.status is OutcomeStatus.ABORTED]
    result.notifications = notifications(stack, since, aborted)
    result.notified = _arrived(result.notifications, aborted)
    show_notifications(console, stack, result.notifications, aborted)
    return result


def _arrived(alerts: list[dict[str, Any]], release_ids: list[str]) -> bool:
    got = {
        a["labels"].get("release")
        for a in alerts
        if a["labels"].get("event") == "aborted" and a["annotations"].get("runbook_url")
    }
    return all(r in got for r in release_ids)


def notifications(
    stack: LocalStack, since: float, aborted: list[str], timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """What the receiver got since ``since``, once the rollbacks' notifications are in (or the
    timeout passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alerts = [a for a in webhook.alerts(stack.notifications) if a["received_at"] >= since]
        if _arrived(alerts, aborted) or time.monotonic() > deadline:
            return alerts
        time.sleep(0.5)


def show_notifications(
    console: Console, stack: LocalStack, alerts: list[dict[str, Any]], aborted: list[str]
) -> None:
    console.rule("[bold]notifications (Alertmanager -> the local receiver)")
    for a in alerts:
        labels, notes = a["labels"], a["annotations"]
        name = labels.get("alertname", "?")
        what = f"{name} {labels['event']}" if "event" in labels else name
        when = time.strftime("%H:%M:%S", time.localtime(a["received_at"]))
        status = "resolved" if a.get("status") == "resolved" else a.get("receiver", "")
        console.print(f"{when} {status:9} {what}: {notes.get('summary', '')}", markup=False)
        for key in ("value", "gate", "runbook_url", "report"):
            if notes.get(key):
                console.print(f"{'':19}{key}: {notes[key]}", markup=False)
    arrived = "arrived" if _arrived(alerts, aborted) else "[red]did NOT arrive[/red]"
    console.print(
        f"{len(alerts)} notification(s) in {stack.notifications}; the rollbacks "
        f"({', '.join(aborted) or 'none'}) {arrived} with their runbook links"
    )
