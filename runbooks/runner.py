"""Run a runbook against a target: diagnosis steps print findings, actions run after a
confirmation and are recorded in the incident.

Nothing here raises on a broken dependency: Prometheus down, Redis down, a read the target
cannot offer or a failing analysis each become a finding, and the other steps still run.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from contract.config import StackConfig
from rollout.ledger import Incident, IncidentAction, Ledger, Release, ReleaseStatus
from rollout.ledger.model import Finding as FindingRecord
from rollout.ports import Target, Unavailable
from rollout.prometheus import PrometheusError
from runbooks.act import ActionResult, Actor
from runbooks.definitions import by_slug
from runbooks.diagnose import Diagnoser, Finding
from runbooks.model import Action, Diagnosis, FlushCache, Query, Runbook, action_name, action_title

PROJECT_DIR = Path(__file__).resolve().parent.parent
RELATED = {
    "error_rate": "high-error-rate",
    "p95_latency": "high-latency",
    "health": "instances-not-ready",
}
"""A failed gate check -> the runbook whose diagnosis explains it."""

STYLE = {"ok": "green", "info": "cyan", "warning": "yellow", "critical": "bold red"}
RESTARTABLE = ("redis-down", "instances-not-ready")
"""Runbooks whose cause a target's own restart can fix."""

__all__ = ["ActionResult", "Finding", "RunResult", "Runner"]


@dataclass
class RunResult:
    runbook: Runbook
    findings: list[Finding] = field(default_factory=list)
    actions: list[ActionResult] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    recorded_in: str = ""

    @property
    def critical(self) -> bool:
        return any(f.level == "critical" for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 1 if self.critical else 0


class Runner:
    def __init__(
        self,
        cfg: StackConfig,
        target: Target,
        *,
        console: Console | None = None,
        confirm: Callable[[str], bool] = lambda _q: False,
        window: str | None = None,
        by: str = "operator",
        release_id: str | None = None,
        flush_pattern: str | None = None,
        only: frozenset[str] | None = None,
        project_dir: Path = PROJECT_DIR,
    ) -> None:
        self.cfg = cfg
        self.target = target
        self.out = console or Console()
        self.confirm = confirm
        self.window = window or target.telemetry.rate_window
        self.by = by
        self.release_id = release_id
        self.flush_pattern = flush_pattern
        self.only = only
        self.ledger = Ledger(target.ledger, cfg.stack, target.name)
        self.diagnoser = Diagnoser(cfg, target, self.ledger, self.window, project_dir)
        self.actor = Actor(cfg, target, self.ledger, by)

    def run(self, rb: Runbook) -> RunResult:
        result = RunResult(rb)
        self.out.rule(
            f"[bold]{escape(rb.title)}[/] ({rb.alert}, {rb.severity}) on {self.target.name}"
        )
        attach = self.release_id
        steps: list[Diagnosis] = list(rb.diagnosis)
        if rb.slug == "release-aborted":
            attach, related = self._from_incident(result)
            if related is not None:
                titles = {s.title for s in steps}
                steps += [s for s in related.diagnosis if s.title not in titles]
                result.left.append(f"Follow the {related.slug} runbook for the failed check.")
        elif attach is None:
            active = self.ledger.read().active()
            attach = active.id if active else None

        self.out.print("[bold]Diagnosis[/]")
        for step in steps:
            for finding in self.diagnoser.run(step):
                self._add(result, finding)
        self._act(rb, result, attach)
        if attach is None:
            result.recorded_in = self._record_run(result)
        result.left += list(rb.human)
        hint = self.target.diagnostics.restart_hint()
        if hint and rb.slug in RESTARTABLE:
            result.left.append(hint)
        result.left += [f"Escalate: {e}" for e in rb.escalation[:1]]
        result.links = self._links(rb)
        self._summary(result)
        return result

    def _add(self, result: RunResult, finding: Finding) -> None:
        result.findings.append(finding)
        mark = {"ok": "ok", "info": "info", "warning": "WARN", "critical": "CRIT"}[finding.level]
        self.out.print(
            f"  [{STYLE[finding.level]}]{mark:>4}[/] [dim]{escape(finding.step)}:[/] "
            f"{escape(finding.text)}"
        )

    # ================================================================== release-aborted

    def _aborted(self) -> Release | None:
        doc = self.ledger.read()
        if self.release_id:
            return doc.find(self.release_id)
        return next((r for r in reversed(doc.releases) if r.status is ReleaseStatus.ABORTED), None)

    def _from_incident(self, result: RunResult) -> tuple[str | None, Runbook | None]:
        step = "incident record"
        release = self._aborted()
        if release is None:
            self._add(result, Finding(step, "info", "no aborted release in the ledger"))
            return None, None
        inc = release.incident or Incident(id=release.id, opened_at=0.0, reason="")
        vals = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in inc.values.items()
            if v is not None
        )
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(inc.opened_at))
        text = (
            f"release {release.id} ({release.version}) {release.status} at {when}: gate "
            f"{inc.gate}, check {inc.check}" + (f" ({vals})" if vals else "")
        )
        self._add(result, Finding(step, "warning", f"{text}: {inc.reason or 'no reason recorded'}"))
        for act in inc.actions:
            done = f"already done: {act.action} by {act.by}: {act.detail}"
            self._add(result, Finding(step, "info", done))
        if inc.query:
            try:
                samples = self.target.telemetry.prometheus.query(inc.query)
                now = ", ".join(f"{s.value:.4g}" for s in samples) or "no data"
                text = f"the gate's query now: {now} (`{inc.query}`)"
                self._add(result, Finding(step, "info", text))
            except PrometheusError as exc:
                self._add(result, self.diagnoser.prom_error(exc, step))
        related = by_slug(self.cfg).get(RELATED.get(str(inc.check), ""))
        return release.id, related

    # ================================================================== actions

    def _act(self, rb: Runbook, result: RunResult, attach: str | None) -> None:
        if rb.actions:
            self.out.print("[bold]Actions[/]")
        colour = {"done": "green", "failed": "red", "skipped": "dim", "declined": "yellow"}
        for action in rb.actions:
            res = self._one(action)
            result.actions.append(res)
            self.out.print(
                f"  [{colour[res.outcome]}]{res.outcome:>8}[/] {escape(res.title)}: "
                f"{escape(res.detail)}"
            )
            if res.outcome in ("done", "failed") and attach is not None:
                result.recorded_in = self._record(attach, res, result)
            elif res.outcome == "declined":
                result.left.append(f"Not done (declined): {res.title}.")

    def _one(self, action: Action) -> ActionResult:
        name, title = action_name(action), action_title(action)
        if isinstance(action, FlushCache) and self.flush_pattern:
            action = FlushCache(self.flush_pattern)
            title = action_title(action)
        if self.only is not None and name not in self.only:
            return ActionResult(name, title, "skipped", "not selected (--action)")
        skip = self.actor.not_applicable(action)
        if skip:
            return ActionResult(name, title, "skipped", skip)
        if not self.confirm(f"{title}?"):
            return ActionResult(name, title, "declined", "not confirmed")
        try:
            detail = self.actor.do(action)
        except Exception as exc:  # reported and recorded, never a traceback
            return ActionResult(name, title, "failed", f"{type(exc).__name__}: {exc}")
        return ActionResult(name, title, "done", detail)

    # ================================================================== records

    def _by(self, result: RunResult) -> str:
        return f"runbook {result.runbook.slug}: {self.by}"

    def _record(self, release_id: str, res: ActionResult, result: RunResult) -> str:
        detail = res.detail if res.outcome == "done" else f"FAILED: {res.detail}"
        self.ledger.add_incident_action(release_id, res.action, detail, self._by(result))
        return f"the incident of release {release_id}"

    def _record_run(self, result: RunResult) -> str:
        now = time.time()
        rb = result.runbook
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{rb.slug}"
        self.ledger.add_incident(
            Incident(
                id=run_id,
                opened_at=now,
                reason=f"runbook {rb.slug} run by {self.by}",
                runbook=rb.slug,
                alert=rb.alert,
                opened_by=self.by,
                findings=[
                    FindingRecord(step=f.step, level=f.level, text=f.text)
                    for f in result.findings
                    if f.level != "ok"
                ],
                actions=[
                    IncidentAction(
                        at=now,
                        action=a.action,
                        by=self._by(result),
                        detail=a.detail if a.outcome == "done" else f"FAILED: {a.detail}",
                    )
                    for a in result.actions
                    if a.outcome in ("done", "failed")
                ],
            )
        )
        return f"runbook run {run_id} (ledger incidents)"

    # ================================================================== summary

    def _links(self, rb: Runbook) -> list[str]:
        link = f"Grafana: {rb.panel.path} ({rb.panel.title})"
        reach = self.target.telemetry.dashboard(rb.panel.path)
        links = [link if isinstance(reach, Unavailable) else f"{link}; {reach}"]
        first = next((s for s in rb.diagnosis if isinstance(s, Query)), None)
        if first is not None:
            expr = urllib.parse.quote(first.expr(self.window))
            base = self.target.telemetry.prometheus.base_url
            links.append(f"Prometheus: {base}/graph?g0.expr={expr}&g0.tab=0")
        return links

    def _summary(self, result: RunResult) -> None:
        out = self.out
        out.rule("[bold]Summary[/]")
        notable = [f for f in result.findings if f.level in ("warning", "critical")]
        out.print(f"[bold]Findings[/] ({len(notable)} of {len(result.findings)} need attention)")
        for f in notable or [Finding("", "ok", "nothing beyond a threshold")]:
            step = f"{f.step}: " if f.step else ""
            out.print(f"  [{STYLE[f.level]}]-[/] {escape(step + f.text)}")
        done = [a for a in result.actions if a.outcome in ("done", "failed")]
        out.print("[bold]Done[/]")
        for a in done or [ActionResult("", "nothing", "skipped", "")]:
            out.print(f"  - {escape(a.title)}" + (f": {escape(a.detail)}" if a.detail else ""))
        if result.recorded_in:
            out.print(f"  recorded in {escape(result.recorded_in)}")
        out.print("[bold]Left for a person[/]")
        for text in result.left:
            out.print(f"  - {escape(text)}")
        out.print("[bold]Dashboard[/]")
        for link in result.links:
            out.print(f"  {escape(link)}", soft_wrap=True)
