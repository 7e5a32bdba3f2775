"""The Grafana panels the alerts point at: one definition for the alert rules' ``dashboard_url``,
the notifications and the runbooks (dashboards of ``components/dashboards``)."""

from __future__ import annotations

from dataclasses import dataclass

API = "portal-api-performance"
"""uid of the API performance dashboard."""
DATA = "portal-database-redis"
"""uid of the database and Redis dashboard."""


@dataclass(frozen=True)
class Panel:
    """A Grafana dashboard panel."""

    dashboard_uid: str
    panel_id: int
    title: str

    @property
    def path(self) -> str:
        return f"/d/{self.dashboard_uid}?viewPanel={self.panel_id}"


ALERT_PANELS: dict[str, Panel] = {
    "PortalHighErrorRate": Panel(API, 15, "Error rate by track"),
    "PortalHighLatency": Panel(API, 10, "p95 latency: canary vs stable"),
    "PortalLowCacheHitRate": Panel(API, 18, "Cache hit rate by TTL class"),
    "PortalSlowQueries": Panel(API, 21, "DB query p95 by operation"),
    "PostgresConnectionSaturation": Panel(DATA, 3, "Connection saturation"),
    "RedisDown": Panel(DATA, 13, "Redis up"),
    "RedisMemoryHigh": Panel(DATA, 14, "Memory used of maxmemory"),
    "PortalInstancesNotReady": Panel(API, 14, "Request rate by track and version"),
    "PortalMigrationJobFailed": Panel(API, 21, "DB query p95 by operation"),
    "PortalReleaseAborted": Panel(API, 15, "Error rate by track"),
}
"""Alert name -> the panel its notification and runbook link."""
