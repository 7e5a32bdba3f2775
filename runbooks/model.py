"""What a runbook is made of: plain data, rendered as Markdown for people and run by ``portalctl``.

A runbook has diagnosis steps (read-only: a PromQL query with a threshold, a health probe of every
app instance, a Kubernetes read, the database analysis) and actions (which change something and
run only after a confirmation). Every threshold comes from the stack config, the same value the
alert rule and the release gates read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from contract.panels import Panel

Severity = Literal["critical", "warning"]
Op = Literal[">", "<"]
Unit = Literal["ratio", "seconds", "count"]
KubeWhat = Literal["pods", "events", "job_status"]

WINDOW = "$window"
"""Placeholder of the rate window in a ``Query``'s PromQL (``5m`` on a cluster, ``30s`` locally)."""


@dataclass(frozen=True)
class Query:
    """Evaluate ``promql`` through Prometheus; every series beyond ``threshold`` is a finding."""

    title: str
    promql: str
    """PromQL with ``$window`` where the rate window goes."""
    op: Op
    threshold: float
    unit: Unit
    severity: Severity
    """How bad a breach is."""
    config_key: str = ""
    """Where the threshold comes from (``portal:slo.maxErrorRate``...); empty for a fixed one."""
    breach: str = ""
    """What a breach means in words, leading the finding (``Redis is down``)."""

    def expr(self, window: str) -> str:
        return self.promql.replace(WINDOW, window)

    def breached(self, value: float) -> bool:
        return value > self.threshold if self.op == ">" else value < self.threshold


@dataclass(frozen=True)
class Probe:
    """``GET /api/health/advanced`` on every app instance; not healthy is a finding."""

    title: str
    severity: Severity
    check: str | None = None
    """The health check this runbook is about (``cache``, ``database``); its failure is named."""


@dataclass(frozen=True)
class KubeRead:
    """Pods, recent events or a Job's status (on the local target: the app processes)."""

    title: str
    what: KubeWhat
    severity: Severity
    job_prefix: str | None = None


@dataclass(frozen=True)
class DbCheck:
    """``python -m app analyze --json``: slow statements, invalid indexes, sequential scans."""

    title: str
    slow_ms: float
    """A statement with a mean above this is a finding (``portal:alerts.slowQueryMs``)."""
    severity: Severity


Diagnosis = Query | Probe | KubeRead | DbCheck


@dataclass(frozen=True)
class Rollback:
    """Abort the release in flight (through the release engine), else send the canary no
    traffic and remove it."""

    title: str = "Roll the canary back"


@dataclass(frozen=True)
class Scale:
    """Change a Deployment's replica count (clusters only)."""

    track: Literal["stable", "canary"]
    add: int
    """Replicas to add to what runs now."""
    title: str = ""


@dataclass(frozen=True)
class FlushCache:
    """``POST /api/admin/cache/flush {"pattern": P}`` (deletes matching keys in Redis and in
    every instance's memory)."""

    pattern: str
    title: str = ""


@dataclass(frozen=True)
class DisableSentry:
    """``POST /api/admin/sentry {"enabled": false}`` on every instance."""

    title: str = "Switch Sentry error reporting off"


Action = Rollback | Scale | FlushCache | DisableSentry


@dataclass(frozen=True)
class Templates:
    """Incident communication (#incidents), with ``[placeholders]`` to fill in."""

    initial: str
    update: str
    resolved: str


@dataclass(frozen=True)
class Runbook:
    slug: str
    alert: str
    title: str
    severity: Severity
    meaning: str
    impact: str
    diagnosis: tuple[Diagnosis, ...]
    remediation: tuple[str, ...]
    """What to do, in order, in words (the actions below are the runnable part)."""
    actions: tuple[Action, ...]
    escalation: tuple[str, ...]
    templates: Templates
    panel: Panel
    human: tuple[str, ...] = field(default=())
    """What a run cannot do and a person must (shown in the summary)."""


def action_title(action: Action) -> str:
    if isinstance(action, Scale):
        return action.title or f"Scale {action.track} up by {action.add} replica(s)"
    if isinstance(action, FlushCache):
        return action.title or f"Flush cache keys matching `{action.pattern}`"
    return action.title


def action_name(action: Action) -> str:
    """The name recorded in the incident's actions."""
    return {
        Rollback: "rollback",
        Scale: "scale",
        FlushCache: "flush_cache",
        DisableSentry: "disable_sentry",
    }[type(action)]
