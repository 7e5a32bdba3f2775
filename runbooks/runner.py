"""Run a runbook against a target: diagnosis steps print findings, actions run after a
confirmation and are recorded in the incident.

Nothing here raises on a broken dependency: Prometheus down, Redis down, a missing Kubernetes
read or a failing analysis each become a finding, and the other steps still run.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from contract.config import StackConfig
from rollout import health
from rollout.ledger import Ledger, active_release, find_release
from rollout.prometheus import Prometheus, PrometheusError
from rollout.target import Target
from runbooks.definitions import by_slug
from runbooks.model import (
    Action,
    DbCheck,
    Diagnosis,
    DisableSentry,
    FlushCache,
    KubeRead,
    Probe,
    Query,
    Rollback,
    Runbook,
    Scale,
    action_name,
    action_title,
)
from runbooks.render import fmt_value

Level = Literal["ok", "info", "warning", "critical"]
PROJECT_DIR = Path(__file__).resolve().parent.parent
LOCAL_WINDOW = "30s"
CLUSTER_WINDOW = "5m"
RELATED = {
    "error_rate": "high-error-rate",
    "p95_latency": "high-latency",
    "health": "instances-not-ready",
}
"""A failed gate check -> the runbook whose diagnosis explains it."""

STYLE = {"ok": "green", "info": "cyan", "warning": "yellow", "critical": "bold red"}


@dataclass(frozen=True)
class Finding:
    step: str
    level: Level
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"step": self.step, "level": self.level, "text": self.text}


@dataclass(frozen=True)
class ActionResult:
    action: str
    title: str
    outcome: Literal["done", "failed", "skipped", "declined"]
    detail: str


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


def _labels(labels: dict[str, str], keep: tuple[str, ...] = ()) -> str:
    shown = {k: v for k, v in labels.items() if k not in ("__name__", "job") or k in keep}
    return " ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(all)"


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
        prometheus: Prometheus | None = None,
        project_dir: Path = PROJECT_DIR,
    ) -> None:
        self.cfg = cfg
        self.target = target
        self.out = console or Console()
        self.confirm = confirm
        self.local = target.name == "local"
        self.window = window or (LOCAL_WINDOW if self.local else CLUSTER_WINDOW)
        self.by = by
        self.release_id = release_id
        self.flush_pattern = flush_pattern
        self.only = only
        own = getattr(
            target, "prometheus", None
        )  # a cluster's carries the kubeconfig's credentials
        self.prom = prometheus or (own() if callable(own) else Prometheus(target.prometheus_url))
        self.project_dir = project_dir
        self.ledger = Ledger(target.ledger(), cfg.stack, target.name)
        self._prom_down: str | None = None

    # ================================================================== the run

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
            active = active_release(self.ledger.read())
            attach = active["id"] if active else None

        self.out.print("[bold]Diagnosis[/]")
        for step in steps:
            for finding in self._diagnose(step):
                self._add(result, finding)

        if rb.actions:
            self.out.print("[bold]Actions[/]")
        for action in rb.actions:
            res = self._act(action, result)
            result.actions.append(res)
            colour = {"done": "green", "failed": "red", "skipped": "dim", "declined": "yellow"}
            self.out.print(
                f"  [{colour[res.outcome]}]{res.outcome:>8}[/] {escape(res.title)}: "
                f"{escape(res.detail)}"
            )
            if res.outcome in ("done", "failed") and attach is not None:
                result.recorded_in = self._record(attach, res, result)
            elif res.outcome == "declined":
                result.left.append(f"Not done (declined): {res.title}.")
        if attach is None:
            result.recorded_in = self._record_run(result)
        result.left += list(rb.human)
        if self.local and rb.slug in ("redis-down", "instances-not-ready"):
            root = getattr(getattr(self.target, "stack", None), "root", ".portal/local")
            result.left.append(
                f"On the local stack, `portalctl local up --dir {root}` restarts what is down."
            )
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

    def _from_incident(self, result: RunResult) -> tuple[str | None, Runbook | None]:
        doc = self.ledger.read()
        release: dict[str, Any] | None = None
        if self.release_id:
            release = find_release(doc, self.release_id)
        else:
            for r in reversed(doc.get("releases") or []):
                if r.get("status") == "ABORTED":
                    release = r
                    break
        step = "incident record"
        if release is None:
            self._add(result, Finding(step, "info", "no aborted release in the ledger"))
            return None, None
        inc = release.get("incident") or {}
        values = inc.get("values") or {}
        vals = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in values.items()
            if v is not None
        )
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(inc.get("opened_at") or 0))
        self._add(
            result,
            Finding(
                step,
                "warning",
                f"release {release['id']} ({release.get('version')}) {release.get('status')} at "
                f"{when}: gate {inc.get('gate')}, check {inc.get('check')}"
                + (f" ({vals})" if vals else "")
                + f": {inc.get('reason') or 'no reason recorded'}",
            ),
        )
        for act in inc.get("actions") or []:
            self._add(
                result,
                Finding(
                    step,
                    "info",
                    f"already done: {act.get('action')} by {act.get('by')}: {act.get('detail')}",
                ),
            )
        query = inc.get("query")
        if query:
            try:
                samples = self.prom.query(query)
                now = ", ".join(f"{s.value:.4g}" for s in samples) or "no data"
                self._add(result, Finding(step, "info", f"the gate's query now: {now} (`{query}`)"))
            except PrometheusError as exc:
                self._add(result, self._prom_error(exc, step))
        related = by_slug(self.cfg).get(RELATED.get(str(inc.get("check")), ""))
        return str(release["id"]), related

    # ================================================================== diagnosis

    def _diagnose(self, step: Diagnosis) -> list[Finding]:
        try:
            if isinstance(step, Query):
                return self._query(step)
            if isinstance(step, Probe):
                return self._probe(step)
            if isinstance(step, KubeRead):
                return self._kube(step)
            return self._db(step)
        except Exception as exc:  # a step must never end the run
            return [Finding(step.title, "warning", f"the step failed: {type(exc).__name__}: {exc}")]

    def _prom_error(self, exc: PrometheusError, step: str) -> Finding:
        text = str(exc)
        if "unreachable" in text:
            self._prom_down = f"Prometheus at {self.prom.base_url} is unreachable"
            why = re.search(r"is unreachable \((.*?)\) for ", text)
            return Finding(
                step,
                "warning",
                f"{self._prom_down}"
                + (f" ({why.group(1)})" if why else "")
                + ": the metric checks cannot run; the other steps still do",
            )
        return Finding(step, "warning", text)

    def _query(self, q: Query) -> list[Finding]:
        if self._prom_down:
            return [Finding(q.title, "info", f"skipped: {self._prom_down}")]
        expr = q.expr(self.window)
        try:
            samples = self.prom.query(expr)
        except PrometheusError as exc:
            return [self._prom_error(exc, q.title)]
        samples = [s for s in samples if not math.isnan(s.value)]
        if not samples:
            return [Finding(q.title, "info", f"no data over the last {self.window}")]
        thr = f"{q.op} {fmt_value(q.threshold, q.unit)}" + (
            f" ({q.config_key})" if q.config_key else ""
        )
        lead = f"{q.breach}: " if q.breach else ""
        bad = [s for s in samples if q.breached(s.value)]
        if not bad:
            worst = max(samples, key=lambda s: s.value if q.op == ">" else -s.value)
            return [
                Finding(
                    q.title,
                    "ok",
                    f"within the threshold; worst {fmt_value(worst.value, q.unit)} on "
                    f"{_labels(worst.labels)}",
                )
            ]
        return [
            Finding(
                q.title,
                q.severity,
                f"{lead}{fmt_value(s.value, q.unit)} on {_labels(s.labels)}, beyond {thr}",
            )
            for s in sorted(bad, key=lambda s: -s.value)
        ]

    def _instances(self) -> list[tuple[str, str, str]] | None:
        listing = getattr(self.target, "app_instances", None)
        if callable(listing):
            return list(listing())
        return None

    def _probe(self, p: Probe) -> list[Finding]:
        instances = self._instances()
        if instances is None:
            probes = [(pr, "canary") for pr in self.target.probe_canary()]
            note = [
                Finding(
                    p.title,
                    "info",
                    "stable instances are probed by their readiness "
                    "(see the pods); canary instances through the API server",
                )
            ]
        else:
            probes = [(health.probe(name, url), track) for name, track, url in instances]
            note = []
        if not probes:
            return [*note, Finding(p.title, p.severity, "no app instance is running")]
        bad = [(pr, track) for pr, track in probes if not pr.ok]
        out = list(note)
        for pr, track in bad:
            text = f"{pr.instance} ({track}) is {pr.status or 'not answering'}: {pr.detail}"
            if p.check and f"{p.check}:" in pr.detail:
                text += f" - the {p.check} check fails"
            out.append(Finding(p.title, p.severity, text))
        if not bad:
            out.append(Finding(p.title, "ok", f"all {len(probes)} instances healthy"))
        return out

    def _kube(self, k: KubeRead) -> list[Finding]:
        stack = getattr(self.target, "stack", None)
        if self.local and stack is not None:
            return self._local_processes(k, stack)
        fn = getattr(self.target, k.what, None)
        if not callable(fn):
            return [
                Finding(
                    k.title,
                    "info",
                    f"not available: the {self.target.name} target has no {k.what}() read",
                )
            ]
        if k.what == "pods":
            pods: list[dict[str, Any]] = list(fn())
            out = []
            for pod in pods:
                ready = pod.get("ready")
                restarts = int(pod.get("restarts") or 0)
                desc = (
                    f"{pod.get('name')} ({pod.get('track') or '?'}): phase "
                    f"{pod.get('phase')}, ready {ready}, restarts {restarts}"
                )
                level: Level = "ok" if ready and restarts < 3 else k.severity
                out.append(Finding(k.title, level, desc))
            return out or [Finding(k.title, k.severity, "no app pods")]
        if k.what == "events":
            events: list[dict[str, Any]] = list(fn(limit=20))
            warn = [e for e in events if str(e.get("type", "")).lower() == "warning"]
            if not warn:
                return [Finding(k.title, "ok", f"no Warning events among the last {len(events)}")]
            return [
                Finding(
                    k.title,
                    k.severity,
                    f"{e.get('reason')}: {e.get('object') or e.get('involvedObject')}: "
                    f"{e.get('message')}",
                )
                for e in warn[:10]
            ]
        latest = self.ledger.latest()
        if latest is None:
            return [Finding(k.title, "info", "no release in the ledger: no migration Job to read")]
        name = self.cfg.names.migration_job(str(latest.get("version")))
        status = fn(name)
        if status is None:
            return [Finding(k.title, "info", f"Job {name} does not exist")]
        failed = (
            bool(status["failed_condition"])
            if "failed_condition" in status
            else bool(status.get("failed")) or status.get("condition") == "Failed"
        )
        return [Finding(k.title, k.severity if failed else "ok", f"Job {name}: {status}")]

    def _local_processes(self, k: KubeRead, stack: Any) -> list[Finding]:
        if k.what != "pods":
            return [
                Finding(
                    k.title,
                    "info",
                    f"not available on the local target ({k.what} are Kubernetes objects)",
                )
            ]
        from rollout.local.servers import pid_alive

        out = []
        for inst in stack.instances(self.target.state_data):  # type: ignore[attr-defined]
            alive = inst.pid is not None and pid_alive(inst.pid)
            desc = f"{inst.name} ({inst.track} {inst.version})"
            if alive:
                out.append(Finding(k.title, "ok", f"{desc} running, pid {inst.pid}"))
            else:
                out.append(Finding(k.title, k.severity, f"{desc} is not running"))
        return out or [Finding(k.title, k.severity, "no app process")]

    def _db(self, d: DbCheck) -> list[Finding]:
        dsn = getattr(self.target, "database_url", None) or os.environ.get("PORTAL_DATABASE_URL")
        if not dsn:
            return [
                Finding(
                    d.title,
                    "info",
                    "not available: set PORTAL_DATABASE_URL to the "
                    "database (e.g. through `kubectl port-forward`) to run it",
                )
            ]
        env = {**os.environ, "PORTAL_DATABASE_URL": str(dsn)}
        proc = subprocess.run(
            [sys.executable, "-m", "app", "analyze", "--json"],
            env=env,
            cwd=self.project_dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return [Finding(d.title, d.severity, f"the analysis failed: {last}")]
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            return [Finding(d.title, "warning", "the analysis did not print JSON")]
        out: list[Finding] = []
        stmts = report.get("slowestStatements") or {}
        if not stmts.get("available"):
            out.append(Finding(d.title, "info", stmts.get("note") or "no statement statistics"))
        for row in stmts.get("rows") or []:
            mean = float(row.get("meanMs") or 0)
            if mean > d.slow_ms:
                out.append(
                    Finding(
                        d.title,
                        d.severity,
                        f"statement mean {mean:.0f} ms over "
                        f"{row.get('calls')} calls: {str(row.get('query'))[:160]}",
                    )
                )
        for idx in report.get("invalidIndexes") or []:
            out.append(
                Finding(
                    d.title,
                    d.severity,
                    f"INVALID index {idx.get('index')} on {idx.get('table')}: drop and rebuild it",
                )
            )
        for rec in (report.get("recommendations") or [])[:5]:
            text = rec if isinstance(rec, str) else rec.get("text") or rec.get("message") or rec
            out.append(Finding(d.title, "info", f"recommendation: {text}"))
        if not any(f.level != "info" for f in out):
            out.append(
                Finding(d.title, "ok", "no statement beyond the threshold, no INVALID index")
            )
        return out

    # ================================================================== actions

    def _act(self, action: Action, result: RunResult) -> ActionResult:
        name, title = action_name(action), action_title(action)
        if isinstance(action, FlushCache) and self.flush_pattern:
            action = FlushCache(self.flush_pattern)
            title = action_title(action)
        if self.only is not None and name not in self.only:
            return ActionResult(name, title, "skipped", "not selected (--action)")
        skip = self._not_applicable(action)
        if skip:
            return ActionResult(name, title, "skipped", skip)
        if not self.confirm(f"{title}?"):
            return ActionResult(name, title, "declined", "not confirmed")
        try:
            detail = self._do(action)
        except Exception as exc:  # reported and recorded, never a traceback
            return ActionResult(name, title, "failed", f"{type(exc).__name__}: {exc}")
        return ActionResult(name, title, "done", detail)

    def _not_applicable(self, action: Action) -> str:
        if isinstance(action, Rollback):
            doc = self.ledger.read()
            state = self.target.state()
            if active_release(doc) is None and not (
                state.canary_version or state.weight or state.canary_replicas
            ):
                return "no canary is deployed and no release is in flight: nothing to roll back"
        if isinstance(action, Scale) and self.local:
            return "scaling is for clusters: the local stack runs a fixed set of instances"
        if isinstance(action, Scale) and not callable(getattr(self.target, "scale", None)):
            return f"not available: the {self.target.name} target cannot scale"
        if isinstance(action, FlushCache | DisableSentry) and self._instances() is None:
            return (
                f"not available: the {self.target.name} target does not list app instances "
                "(call POST /api/admin/... on each pod)"
            )
        return ""

    def _do(self, action: Action) -> str:
        if isinstance(action, Rollback):
            from rollout.engine import ReleaseEngine

            active = active_release(self.ledger.read())
            if active is not None:
                engine = ReleaseEngine(self.cfg, self.target, prometheus=self.prom)
                outcome = engine.request("abort", self.by)
                if outcome is None:
                    return (
                        f"abort of release {active['id']} recorded; the running portalctl "
                        f"acts on it within {self.cfg.canary.interval_s:g}s"
                    )
                return f"release {active['id']} {outcome.status}: {outcome.reason}"
            before = self.target.state()
            self.target.rollback()
            after = self.target.state()
            return (
                f"canary {before.canary_version} removed, weight {before.weight}% -> "
                f"{after.weight}%"
            )
        if isinstance(action, Scale):
            deployment = (
                self.cfg.names.stable if action.track == "stable" else self.cfg.names.canary
            )
            pods = getattr(self.target, "pods", None)
            current = len(list(pods(action.track))) if callable(pods) else self.cfg.app.replicas
            self.target.scale(deployment, current + action.add)  # type: ignore[attr-defined]
            return f"{deployment} scaled {current} -> {current + action.add}"
        if isinstance(action, FlushCache):
            answers = self._admin("/api/admin/cache/flush", {"pattern": action.pattern})
            deleted = sum(int(a.get("deleted") or 0) for _n, a in answers)
            detail = (
                f"deleted {deleted} keys matching {action.pattern!r} "
                f"(Redis and the memory of {len(answers)} instances)"
            )
            no_redis = [n for n, a in answers if a.get("backend") != "redis"]
            if no_redis:
                detail += (
                    f"; {', '.join(no_redis)} had no Redis connection (in-memory fallback), so "
                    "Redis keys may be left: run it again once their cache check is healthy"
                )
            return detail
        assert isinstance(action, DisableSentry)
        answers = self._admin("/api/admin/sentry", {"enabled": False})
        states = ", ".join(
            f"{n}: enabled {str(a.get('enabled')).lower()}"
            + ("" if a.get("configured") else " (no SENTRY_DSN)")
            for n, a in answers
        )
        return f"Sentry switched off ({states})"

    def _admin(self, path: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        token = getattr(self.target, "admin_token", None) or os.environ.get("PORTAL_ADMIN_TOKEN")
        if not token:
            raise RuntimeError("no admin token: set PORTAL_ADMIN_TOKEN")
        answers = []
        for name, _track, url in self._instances() or []:
            req = urllib.request.Request(
                url.rstrip("/") + path,
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    answers.append((name, dict(json.loads(resp.read()))))
            except urllib.error.HTTPError as exc:
                raise RuntimeError(
                    f"{name} answered HTTP {exc.code}: {exc.read().decode(errors='replace')}"
                ) from exc
        return answers

    # ================================================================== records

    def _record(self, release_id: str, res: ActionResult, result: RunResult) -> str:
        detail = res.detail if res.outcome == "done" else f"FAILED: {res.detail}"
        by = f"runbook {result.runbook.slug}: {self.by}"
        self.ledger.add_incident_action(release_id, res.action, detail, by)
        return f"the incident of release {release_id}"

    def _record_run(self, result: RunResult) -> str:
        now = time.time()
        run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{result.runbook.slug}"
        by = f"runbook {result.runbook.slug}: {self.by}"
        record = {
            "id": run_id,
            "runbook": result.runbook.slug,
            "alert": result.runbook.alert,
            "opened_at": now,
            "by": self.by,
            "findings": [f.to_dict() for f in result.findings if f.level != "ok"],
            "actions": [
                {
                    "at": now,
                    "action": a.action,
                    "by": by,
                    "detail": a.detail if a.outcome == "done" else f"FAILED: {a.detail}",
                }
                for a in result.actions
                if a.outcome in ("done", "failed")
            ],
        }

        def add(doc: dict[str, Any]) -> None:
            doc.setdefault("incidents", []).append(record)

        self.ledger.update(add)
        return f"runbook run {run_id} (ledger incidents)"

    # ================================================================== summary

    def _links(self, rb: Runbook) -> list[str]:
        links = [f"Grafana: {rb.panel.path} ({rb.panel.title})"]
        if not self.local:
            links[0] += (
                f"; reach it with `kubectl -n {self.cfg.namespace} port-forward "
                f"svc/{self.cfg.names.grafana} 3000` then http://localhost:3000"
                f"{rb.panel.path}"
            )
        first = next((s for s in rb.diagnosis if isinstance(s, Query)), None)
        if first is not None:
            expr = urllib.parse.quote(first.expr(self.window))
            links.append(f"Prometheus: {self.prom.base_url}/graph?g0.expr={expr}&g0.tab=0")
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
