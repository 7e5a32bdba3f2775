"""A runbook's diagnosis steps against a target's ports: PromQL checks, health probes, reads of
instances, events and Jobs, the database analysis. Each step returns findings; none raises on
a broken dependency (Prometheus down is one finding, and the other steps still run)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contract.config import StackConfig
from rollout.ledger import Ledger
from rollout.ports import Target, Unavailable
from rollout.prometheus import Prometheus, PrometheusError
from runbooks.model import DbCheck, Diagnosis, KubeRead, Probe, Query
from runbooks.render import fmt_value

Level = Literal["ok", "info", "warning", "critical"]


@dataclass(frozen=True)
class Finding:
    step: str
    level: Level
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"step": self.step, "level": self.level, "text": self.text}


def _labels(labels: dict[str, str]) -> str:
    shown = {k: v for k, v in labels.items() if k not in ("__name__", "job")}
    return " ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(all)"


def not_available(title: str, what: Unavailable) -> Finding:
    return Finding(title, "info", f"not available: {what.reason}")


class Diagnoser:
    def __init__(
        self, cfg: StackConfig, target: Target, ledger: Ledger, window: str, project_dir: Path
    ) -> None:
        self.cfg = cfg
        self.target = target
        self.ledger = ledger
        self.window = window
        self.project_dir = project_dir
        self.prom: Prometheus = target.telemetry.prometheus
        self.prom_down: str | None = None

    def run(self, step: Diagnosis) -> list[Finding]:
        try:
            if isinstance(step, Query):
                return self._query(step)
            if isinstance(step, Probe):
                return self._probe(step)
            if isinstance(step, KubeRead):
                return self._read(step)
            return self._db(step)
        except Exception as exc:  # a step must never end the run
            return [Finding(step.title, "warning", f"the step failed: {type(exc).__name__}: {exc}")]

    def prom_error(self, exc: PrometheusError, step: str) -> Finding:
        text = str(exc)
        if "unreachable" not in text:
            return Finding(step, "warning", text)
        self.prom_down = f"Prometheus at {self.prom.base_url} is unreachable"
        why = re.search(r"is unreachable \((.*?)\) for ", text)
        return Finding(
            step,
            "warning",
            f"{self.prom_down}"
            + (f" ({why.group(1)})" if why else "")
            + ": the metric checks cannot run; the other steps still do",
        )

    def _query(self, q: Query) -> list[Finding]:
        if self.prom_down:
            return [Finding(q.title, "info", f"skipped: {self.prom_down}")]
        try:
            samples = self.prom.query(q.expr(self.window))
        except PrometheusError as exc:
            return [self.prom_error(exc, q.title)]
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

    def _probe(self, p: Probe) -> list[Finding]:
        probes = self.target.diagnostics.probe()
        if not probes:
            return [Finding(p.title, p.severity, "no app instance is running")]
        out = []
        for pr in probes:
            if pr.ok:
                continue
            text = (
                f"{pr.instance} ({pr.track or '?'}) is {pr.status or 'not answering'}: {pr.detail}"
            )
            if p.check and f"{p.check}:" in pr.detail:
                text += f" - the {p.check} check fails"
            out.append(Finding(p.title, p.severity, text))
        return out or [Finding(p.title, "ok", f"all {len(probes)} instances healthy")]

    def _read(self, k: KubeRead) -> list[Finding]:
        diagnostics = self.target.diagnostics
        if k.what == "pods":
            out = []
            for i in diagnostics.instances():
                level: Level = "ok" if i.ready and i.restarts < 3 else k.severity
                desc = f"{i.name} ({i.track or '?'} {i.version or '?'}) {i.detail}"
                out.append(Finding(k.title, level, desc))
            return out or [Finding(k.title, k.severity, "no app instance")]
        if k.what == "events":
            events = diagnostics.events(20)
            if isinstance(events, Unavailable):
                return [not_available(k.title, events)]
            warn = [e for e in events if e.type.lower() == "warning"]
            if not warn:
                return [Finding(k.title, "ok", f"no Warning events among the last {len(events)}")]
            return [
                Finding(k.title, k.severity, f"{e.reason}: {e.object}: {e.message}")
                for e in warn[:10]
            ]
        latest = self.ledger.latest()
        if latest is None:
            return [Finding(k.title, "info", "no release in the ledger: no migration Job to read")]
        name = self.cfg.names.migration_job(latest.version)
        status = diagnostics.job(name)
        if isinstance(status, Unavailable):
            return [not_available(k.title, status)]
        if status is None:
            return [Finding(k.title, "info", f"Job {name} does not exist")]
        level = k.severity if status.failed_condition else "ok"
        return [Finding(k.title, level, f"Job {name}: {status}")]

    def _db(self, d: DbCheck) -> list[Finding]:
        dsn = self.target.diagnostics.database_url()
        if isinstance(dsn, Unavailable):
            return [not_available(d.title, dsn)]
        proc = subprocess.run(
            [sys.executable, "-m", "app", "analyze", "--json"],
            env={**os.environ, "PORTAL_DATABASE_URL": dsn},
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
        return _analysis_findings(d, report)


def _analysis_findings(d: DbCheck, report: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    stmts = report.get("slowestStatements") or {}
    if not stmts.get("available"):
        out.append(Finding(d.title, "info", stmts.get("note") or "no statement statistics"))
    for row in stmts.get("rows") or []:
        mean = float(row.get("meanMs") or 0)
        if mean > d.slow_ms:
            text = f"statement mean {mean:.0f} ms over {row.get('calls')} calls: "
            out.append(Finding(d.title, d.severity, text + str(row.get("query"))[:160]))
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
        out.append(Finding(d.title, "ok", "no statement beyond the threshold, no INVALID index"))
    return out
