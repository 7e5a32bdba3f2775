"""One runbook per alert rule of ``contract.alerts``, with the thresholds of the stack config.

The alert rules, the release gates and these runbooks read the same ``cfg.slo`` and
``cfg.alerts`` values, so "too slow" means one thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from contract.config import StackConfig
from runbooks import datastores, releases, service
from runbooks.model import Runbook

BOOK: tuple[Callable[[StackConfig], Runbook], ...] = (
    service.high_error_rate,
    service.high_latency,
    service.low_cache_hit_rate,
    service.slow_queries,
    datastores.postgres_connections,
    datastores.redis_down,
    datastores.redis_memory,
    service.instances_not_ready,
    releases.migration_failed,
    releases.release_aborted,
)
"""Every runbook, in the order of ``contract.alerts.alerts(cfg)``."""


def runbooks(cfg: StackConfig) -> list[Runbook]:
    """Every runbook with the thresholds of ``cfg``."""
    return [build(cfg) for build in BOOK]


def by_slug(cfg: StackConfig) -> dict[str, Runbook]:
    return {rb.slug: rb for rb in runbooks(cfg)}
