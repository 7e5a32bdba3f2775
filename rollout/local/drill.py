"""The drill (``make demo``): three releases on the local stack under steady load.

v2.0.0 is healthy and goes through every step to 100%; v3.0.0 has the fault switch on (20% of
requests fail) and the error gate rolls it back; v4.0.0 only adds 300 ms of latency and the
latency gate rolls it back. Each release gets an HTML report; the figures (seconds from v3's
first canary traffic to weight 0, false rollbacks) are printed at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from rollout.engine import Outcome, ReleaseEngine
from rollout.ledger import active_release
from rollout.local.load import LoadGenerator
from rollout.local.stack import STABLE_VERSION, LocalStack
from rollout.local.target import LocalTarget
from rollout.progress import Progress
from rollout.report import write_report
from rollout.target import ReleaseSpec

RELEASES: tuple[tuple[str, dict[str, str], str, str], ...] = (
    ("2.0.0", {}, "PROMOTED", "healthy"),
    ("3.0.0", {"PORTAL_FAULT_ERROR_RATE": "0.2"}, "ABORTED", "20% of requests fail"),
    ("4.0.0", {"PORTAL_FAULT_LATENCY_MS": "300"}, "ABORTED", "+300 ms on every request"),
)


@dataclass
class DrillRelease:
    version: str
    fault: str
    expected: str
    outcome: Outcome
    report: Path
    detect_s: float | None
    """Seconds from the first canary traffic to weight 0 (rolled-back releases)."""

    @property
    def ok(self) -> bool:
        return self.outcome.status == self.expected


@dataclass
class DrillResult:
    releases: list[DrillRelease] = field(default_factory=list)
    requests: int = 0
    failed_requests: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.releases) and all(r.ok for r in self.releases)

    @property
    def false_rollbacks(self) -> int:
        return sum(
            1 for r in self.releases if r.expected == "PROMOTED" and r.outcome.status == "ABORTED"
        )


def time_to_weight_zero(release: dict[str, Any]) -> float | None:
    """From the first ``set_weight`` to a non-zero weight being done, to the rollback done."""
    first = next(
        (
            t
            for t in release.get("transitions", [])
            if t["action"] == "set_weight"
            and t["args"].get("weight", 0) > 0
            and t["state"] == "done"
        ),
        None,
    )
    back = next(
        (
            t
            for t in release.get("transitions", [])
            if t["action"] == "rollback" and t["state"] == "done"
        ),
        None,
    )
    if first is None or back is None:
        return None
    return float(back.get("done_at", back["at"])) - float(first.get("done_at", first["at"]))


def run_drill(
    root: Path,
    *,
    console: Console,
    rate_per_s: float = 40.0,
    releases: tuple[tuple[str, dict[str, str], str, str], ...] = RELEASES,
) -> DrillResult:
    stack = LocalStack(root)
    console.rule("[bold]portal drill: local stack")
    state = stack.up(lambda m: console.print(f"• {m}"))
    target = LocalTarget(stack)
    cfg = stack.config()
    engine = ReleaseEngine(
        cfg,
        target,
        events=Progress(console, quiet_passes=True),
        pushgateway_url=state["pushgateway_url"],
    )
    doc = engine.ledger.read()
    if active_release(doc) is not None:
        console.print("• aborting a release left in flight by an earlier run")
        engine.request("abort", "drill")
    if target.state().stable_version != STABLE_VERSION:
        console.print(f"• returning stable to {STABLE_VERSION} for a fresh drill")
        target.set_stable(STABLE_VERSION, None)
        engine.ledger.update(
            lambda d: d.update(
                stable={"version": STABLE_VERSION, "image": None, "release_id": None, "at": 0.0}
            )
        )

    result = DrillResult()
    reports = root / "reports"
    load = LoadGenerator(state["nginx_url"], rate_per_s=rate_per_s).start()
    try:
        for version, env, expected, fault in releases:
            console.rule(f"[bold]release {version}: {fault} (expect {expected})")
            outcome = engine.start(ReleaseSpec("", version, None, env))
            record = engine.ledger.find(outcome.release_id) or {}
            report = write_report(record, reports / f"{outcome.release_id}.html")
            detect = time_to_weight_zero(record) if outcome.status == "ABORTED" else None
            result.releases.append(DrillRelease(version, fault, expected, outcome, report, detect))
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
    return result
