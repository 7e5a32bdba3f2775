"""Where Alertmanager sends the alerts: a webhook, Slack, PagerDuty (Events v2) and email, each
optional. Credentials are ``Secret`` values (``contract.config.secrets``)."""

from __future__ import annotations

from pydantic import Field

from contract.config.base import Section
from contract.config.secrets import Secret
from contract.config.types import (
    EmailAddress,
    EmailAddresses,
    Flag,
    HostPort,
    HttpUrl,
    SlackChannel,
    Text,
)


class WebhookReceiver(Section):
    """Alertmanager's JSON payload POSTed to a URL (every alert and release event)."""

    url: HttpUrl = Field(description="where to POST; required")
    bearer_token: Secret | None = Field(
        default=None, description="secret; sent as `Authorization: Bearer <token>`"
    )


class SlackReceiver(Section):
    """A Slack incoming webhook: warnings and release events (critical too without a pager)."""

    api_url: Secret = Field(description="secret: the incoming webhook URL; required")
    channel: SlackChannel | None = Field(
        default=None, description="overrides the webhook's channel"
    )


class PagerDutyReceiver(Section):
    """PagerDuty Events API v2: critical alerts page."""

    routing_key: Secret = Field(description="secret: the Events v2 integration key; required")
    url: HttpUrl | None = Field(default=None, description="the Events v2 endpoint (PagerDuty's)")


class EmailReceiver(Section):
    """Email through an SMTP relay: critical alerts (warnings too without Slack)."""

    to: EmailAddresses = Field(description="comma-separated addresses; required")
    from_: EmailAddress = Field(description="the sender address; required")
    smarthost: HostPort = Field(description="the SMTP relay as host:port; required")
    auth_username: Text | None = Field(default=None, description="SMTP user")
    auth_password: Secret | None = Field(default=None, description="secret: SMTP password")
    require_tls: Flag = Field(default=True, description="STARTTLS required")


class Receivers(Section):
    """The integrations Alertmanager notifies; none set: alerts are kept in Alertmanager only."""

    webhook: WebhookReceiver | None = Field(default=None, description="every alert and event")
    slack: SlackReceiver | None = Field(default=None, description="the chat receiver")
    pagerduty: PagerDutyReceiver | None = Field(default=None, description="the paging receiver")
    email: EmailReceiver | None = Field(default=None, description="critical alerts by mail")

    @property
    def configured(self) -> tuple[str, ...]:
        return tuple(
            name
            for name in ("webhook", "slack", "pagerduty", "email")
            if getattr(self, name) is not None
        )
