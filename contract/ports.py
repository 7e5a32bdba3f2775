"""Network ports and the users images run as: what the components open and ``portalctl``
reaches."""

from __future__ import annotations

POSTGRES = 5432
REDIS = 6379
POSTGRES_EXPORTER = 9187
REDIS_EXPORTER = 9121
KUBE_STATE_METRICS = 8080

APP_UID = 10001
"""The uid the portal image runs as (its Dockerfile's USER)."""
POSTGRES_UID = 70
"""The postgres user of the official alpine image."""
