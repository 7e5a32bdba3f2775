"""The PromQL both sides build on: which series are user traffic, one track's selector, the
service expressions of the alert rules and runbooks, and the release events ``portalctl`` pushes.
"""

from __future__ import annotations

EXCLUDED_ROUTES = "/api/health.*|/metrics"
"""Routes that are not user traffic (probes and scrapes): kept out of every gate, alert and
runbook expression."""

WINDOW = "5m"
"""Rate window of the service expressions of the alert rules."""

RELEASE_JOB = "portal_release"
"""Pushgateway job under which ``portalctl`` publishes release events."""
RELEASE_STATUS = "portal_release_status"
"""Gauge pushed per release: 0 in progress, 1 promoted, 2 aborted."""
RELEASE_ABORTED = "portal_release_aborted_timestamp_seconds"
"""Gauge pushed when a release is aborted (the PortalReleaseAborted alert)."""


def user_traffic(*matchers: str) -> str:
    """A selector of user requests with these extra label matchers (``status=~"5.."``)."""
    return "{" + ",".join([*matchers, f'route!~"{EXCLUDED_ROUTES}"']) + "}"


def track_selector(track: str, version: str | None = None, extra: str = "") -> str:
    """One track's user traffic (of one version), with ``extra`` matchers."""
    matchers = [f'track="{track}"']
    if version:
        matchers.append(f'version="{version}"')
    if extra:
        matchers.append(extra)
    return user_traffic(*matchers)


def error_ratio_expr(by: str = "track", window: str = WINDOW) -> str:
    """Fraction of user requests answered 5xx, per ``by``."""
    errors = user_traffic('status=~"5.."')
    return (
        f"sum by ({by}) (rate(http_requests_total{errors}[{window}]))"
        f" / sum by ({by}) (rate(http_requests_total{user_traffic()}[{window}]))"
    )


def number(value: float) -> str:
    """A threshold as PromQL and people read it (0.02, 0.5, 100)."""
    return format(value, ".10g")


def latency_quantile_expr(quantile: float, by: str = "track", window: str = WINDOW) -> str:
    """Request latency quantile in seconds, per ``by``."""
    return (
        f"histogram_quantile({number(quantile)}, sum by ({by}, le) "
        f"(rate(http_request_duration_seconds_bucket{user_traffic()}[{window}])))"
    )
