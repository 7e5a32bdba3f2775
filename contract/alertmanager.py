"""The Alertmanager configuration of a stack, generated from the config model.

A pure function of the config (no Pulumi import): the observability component puts its output in
a Secret (the receivers carry credentials), the local stack and the tests render the same
configuration, and ``amtool check-config`` / ``amtool config routes test`` check it.

Routing: ``critical`` alerts go to the ``paging`` receiver (PagerDuty, email; Slack when neither
is set), ``warning`` to ``chat`` (Slack; email when Slack is not set), the release events
``portalctl`` posts to ``releases`` (chat's integrations, never a "resolved" message); the
webhook gets all three. Alerts are grouped by alert name and namespace; each release event is
a group of its own and goes out at once. Inhibition: ``RedisDown`` mutes
``PortalLowCacheHitRate`` (the cache falls back to memory: the hit rate follows from the outage),
``PortalReleaseAborted`` mutes the canary error and latency alerts of the version it rolled back,
and portalctl's own ``aborted`` event (which carries the gate, values and report) mutes
``PortalReleaseAborted`` of the same release.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from contract.config import StackConfig
from contract.config.receivers import Receivers

CONFIG_FILE = "alertmanager.yml"
TEMPLATE_FILE = "portal.tmpl"
"""The notification texts, next to the config (Alertmanager resolves it relative to it)."""

PAGING = "paging"
CHAT = "chat"
RELEASES = "releases"
RECEIVERS = (PAGING, CHAT, RELEASES)

RELEASE_EVENT = "PortalReleaseEvent"
"""``alertname`` of the release events ``portalctl`` posts (label ``event`` says which)."""
EVENTS = ("started", "step_passed", "promoted", "aborted", "held")

GROUP_BY = ("alertname", "namespace")
RELEASE_GROUP_BY = ("alertname", "namespace", "release", "event", "step")

TEMPLATES = """\
{{ define "portal.title" -}}
[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] \
{{ .CommonLabels.alertname }}{{ if .CommonLabels.event }} {{ .CommonLabels.event }}{{ end }} \
({{ .CommonLabels.namespace }}){{ if .CommonLabels.release }} release \
{{ .CommonLabels.release }}{{ end }}
{{- end }}

{{ define "portal.alert" -}}
{{ .Annotations.summary }}
{{ if .Annotations.description }}{{ .Annotations.description }}
{{ end }}{{ if .Annotations.value }}Value: {{ .Annotations.value }}
{{ end }}{{ if .Labels.release }}Release: {{ .Labels.release }}\
{{ if .Labels.version }} ({{ .Labels.version }}){{ end }}
{{ end }}{{ if .Annotations.gate }}Gate: {{ .Annotations.gate }}
{{ end }}{{ if .Annotations.report }}Report: {{ .Annotations.report }}
{{ end }}{{ if .Annotations.runbook_url }}Runbook: {{ .Annotations.runbook_url }}
{{ end }}{{ if .Annotations.dashboard_url }}Dashboard: {{ .Annotations.dashboard_url }}
{{ end }}
{{- end }}

{{ define "portal.text" -}}
{{ range .Alerts.Firing }}{{ template "portal.alert" . }}
{{ end }}{{ if .Alerts.Resolved }}Resolved:
{{ range .Alerts.Resolved }}{{ .Annotations.summary }}
{{ end }}{{ end }}
{{- end }}
"""
"""``portal.title`` and ``portal.text``: what Slack, PagerDuty and email show. The webhook's JSON
carries every label and annotation as they are."""


def _webhook(r: Receivers, resolved: bool) -> list[dict[str, Any]]:
    if r.webhook is None:
        return []
    hook: dict[str, Any] = {"url": r.webhook.url, "send_resolved": resolved, "max_alerts": 0}
    if r.webhook.bearer_token is not None:
        token = r.webhook.bearer_token.reveal("portal:alerts.receivers.webhook.bearerToken")
        hook["http_config"] = {"authorization": {"type": "Bearer", "credentials": token}}
    return [hook]


def _slack(r: Receivers, resolved: bool) -> list[dict[str, Any]]:
    if r.slack is None:
        return []
    slack: dict[str, Any] = {
        "api_url": r.slack.api_url.reveal("portal:alerts.receivers.slack.apiUrl"),
        "send_resolved": resolved,
        "title": '{{ template "portal.title" . }}',
        "title_link": "{{ .CommonAnnotations.dashboard_url }}",
        "text": '{{ template "portal.text" . }}',
    }
    if r.slack.channel is not None:
        slack["channel"] = r.slack.channel
    return [slack]


PAGERDUTY_SEVERITY = (
    '{{ if eq .CommonLabels.severity "critical" }}critical{{ else }}warning{{ end }}'
)


def _pagerduty(r: Receivers) -> list[dict[str, Any]]:
    if r.pagerduty is None:
        return []
    pd: dict[str, Any] = {
        "routing_key": r.pagerduty.routing_key.reveal(
            "portal:alerts.receivers.pagerduty.routingKey"
        ),
        "send_resolved": True,
        "severity": PAGERDUTY_SEVERITY,
        "description": '{{ template "portal.title" . }}',
        "details": {
            "summary": "{{ .CommonAnnotations.summary }}",
            "value": "{{ .CommonAnnotations.value }}",
            "runbook_url": "{{ .CommonAnnotations.runbook_url }}",
            "dashboard_url": "{{ .CommonAnnotations.dashboard_url }}",
            "release": "{{ .CommonLabels.release }}",
            "alerts": '{{ template "portal.text" . }}',
        },
        "links": [
            {"href": "{{ .CommonAnnotations.runbook_url }}", "text": "Runbook"},
            {"href": "{{ .CommonAnnotations.dashboard_url }}", "text": "Grafana panel"},
        ],
    }
    if r.pagerduty.url is not None:
        pd["url"] = r.pagerduty.url
    return [pd]


def _email(r: Receivers, resolved: bool) -> list[dict[str, Any]]:
    if r.email is None:
        return []
    e = r.email
    mail: dict[str, Any] = {
        "to": e.to,
        "from": e.from_,
        "smarthost": e.smarthost,
        "require_tls": e.require_tls,
        "send_resolved": resolved,
        "headers": {"Subject": '{{ template "portal.title" . }}'},
        "text": '{{ template "portal.text" . }}',
    }
    if e.auth_username is not None:
        mail["auth_username"] = e.auth_username
    if e.auth_password is not None:
        mail["auth_password"] = e.auth_password.reveal("portal:alerts.receivers.email.authPassword")
    return [mail]


def receivers(r: Receivers, extra_webhooks: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``paging``, ``chat`` and ``releases`` from the integrations that are set (a receiver with
    none is valid: its alerts stay in Alertmanager). ``extra_webhooks`` get everything too (the
    local stack's own receiver)."""

    def hooks(resolved: bool) -> list[dict[str, Any]]:
        extra = [{"url": u, "send_resolved": resolved, "max_alerts": 0} for u in extra_webhooks]
        return [*_webhook(r, resolved), *extra]

    pager = r.pagerduty is not None or r.email is not None
    paging: dict[str, Any] = {
        "pagerduty_configs": _pagerduty(r),
        "email_configs": _email(r, True),
        "slack_configs": [] if pager else _slack(r, True),
        "webhook_configs": hooks(True),
    }

    def chat(resolved: bool) -> dict[str, Any]:
        return {
            "slack_configs": _slack(r, resolved),
            "email_configs": _email(r, resolved) if r.slack is None else [],
            "webhook_configs": hooks(resolved),
        }

    built = {PAGING: paging, CHAT: chat(True), RELEASES: chat(False)}
    return [
        {"name": name, **{k: v for k, v in configs.items() if v}} for name, configs in built.items()
    ]


def route(cfg: StackConfig) -> dict[str, Any]:
    a = cfg.alerts
    return {
        "receiver": CHAT,
        "group_by": list(GROUP_BY),
        "group_wait": a.group_wait,
        "group_interval": a.group_interval,
        "repeat_interval": a.repeat_interval,
        "routes": [
            {
                "receiver": RELEASES,
                "matchers": [f'alertname="{RELEASE_EVENT}"'],
                "group_by": list(RELEASE_GROUP_BY),
                "group_wait": "0s",
            },
            {"receiver": PAGING, "matchers": ['severity="critical"']},
            {"receiver": CHAT, "matchers": ['severity="warning"']},
        ],
    }


def inhibit_rules() -> list[dict[str, Any]]:
    return [
        {
            "source_matchers": ['alertname="RedisDown"'],
            "target_matchers": ['alertname="PortalLowCacheHitRate"'],
            "equal": ["stack"],
        },
        {
            "source_matchers": ['alertname="PortalReleaseAborted"'],
            "target_matchers": [
                'alertname=~"PortalHighErrorRate|PortalHighLatency"',
                'track="canary"',
            ],
            "equal": ["stack", "version"],
        },
        {
            "source_matchers": [f'alertname="{RELEASE_EVENT}"', 'event="aborted"'],
            "target_matchers": ['alertname="PortalReleaseAborted"'],
            "equal": ["stack", "release"],
        },
    ]


def build(cfg: StackConfig, extra_webhooks: Sequence[str] = ()) -> dict[str, Any]:
    """The configuration as a mapping (``alertmanager.yml``). Credentials are written as they
    are: the caller keeps the text in a Secret."""
    return {
        "global": {"resolve_timeout": "5m"},
        "templates": [TEMPLATE_FILE],
        "route": route(cfg),
        "inhibit_rules": inhibit_rules(),
        "receivers": receivers(cfg.alerts.receivers, extra_webhooks),
    }


def render(cfg: StackConfig, extra_webhooks: Sequence[str] = ()) -> str:
    """``alertmanager.yml`` as text."""
    return yaml.safe_dump(build(cfg, extra_webhooks), sort_keys=False, width=1000)


def files(cfg: StackConfig, extra_webhooks: Sequence[str] = ()) -> dict[str, str]:
    """File name -> text: the config and its templates, written side by side."""
    return {CONFIG_FILE: render(cfg, extra_webhooks), TEMPLATE_FILE: TEMPLATES}
