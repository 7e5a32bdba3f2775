"""Health: the request statistics kept in process and the checks behind /api/health/advanced."""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from app.cache import Cache
from app.db import Database

DB_CHECK_TIMEOUT_S = 1.5
MEMORY_DEGRADED_PERCENT = 90.0


class RequestStats:
    """Request count, 5xx count and the latency of the last ``window`` requests.

    Only business requests are recorded: probes and scrapes would otherwise dominate.
    """

    def __init__(self, window: int = 1024) -> None:
        self.count = 0
        self.errors = 0
        self.total_ms = 0.0
        self.recent: deque[float] = deque(maxlen=window)

    def record(self, ms: float, status: int) -> None:
        self.count += 1
        self.total_ms += ms
        if status >= 500:
            self.errors += 1
        self.recent.append(ms)

    def snapshot(self) -> dict[str, Any]:
        recent = sorted(self.recent)
        p95 = recent[min(len(recent) - 1, int(0.95 * len(recent)))] if recent else 0.0
        return {
            "requestCount": self.count,
            "errorCount": self.errors,
            "avgResponseTimeMs": round(self.total_ms / self.count, 2) if self.count else 0.0,
            "p95ResponseTimeMs": round(p95, 2),
        }


def memory_check() -> dict[str, Any]:
    rss = _rss_bytes()
    limit = _memory_limit()
    percent = round(100.0 * rss / limit, 2) if limit else 0.0
    return {
        "status": "degraded" if percent >= MEMORY_DEGRADED_PERCENT else "healthy",
        "rssBytes": rss,
        "percent": percent,
    }


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _memory_limit() -> int:
    """The container's memory limit (cgroup v2 or v1) or, without one, the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


async def advanced(
    db: Database, cache: Cache, stats: RequestStats, version: str, track: str
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of /api/health/advanced; the checks run concurrently."""
    (db_status, db_ms, db_error), cache_check = await asyncio.gather(
        db.ping(DB_CHECK_TIMEOUT_S), cache.check()
    )
    database: dict[str, Any] = {"status": db_status, "responseTimeMs": round(db_ms, 3)}
    if db_error:
        database["error"] = db_error
    cache_body: dict[str, Any] = {
        "status": cache_check.status,
        "backend": cache_check.backend,
        "responseTimeMs": cache_check.response_time_ms,
        "hitRate": cache_check.hit_rate,
    }
    if cache_check.error:
        cache_body["error"] = cache_check.error
    memory = memory_check()
    checks = {"database": database, "cache": cache_body, "memory": memory}
    if db_status == "unhealthy":
        status = "unhealthy"
    elif any(c["status"] != "healthy" for c in checks.values()):
        status = "degraded"
    else:
        status = "healthy"
    body = {
        "status": status,
        "version": version,
        "track": track,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checks": checks,
        "metrics": stats.snapshot(),
    }
    return (503 if status == "unhealthy" else 200), body
