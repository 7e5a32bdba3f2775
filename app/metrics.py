"""Prometheus series of the service, in a registry of its own (one per app instance).

Exactly the series the release gates, alert rules and dashboards query, every one carrying the
``version`` and ``track`` labels so one PromQL query separates canary from stable. Label
children are cached so the per-request cost is a dictionary lookup and two observations.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The gates and alert rules rely on these boundaries (seconds).
HTTP_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

SERIES = (
    "http_requests_total",
    "http_request_duration_seconds",
    "db_queries_total",
    "db_query_duration_seconds",
    "redis_operations_total",
    "redis_operation_duration_seconds",
    "cache_hits_total",
    "cache_misses_total",
    "active_connections",
)
"""Every metric family exported at /metrics (histograms add _bucket, _sum and _count)."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# No *_created series: they double the output and nothing queries them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self, version: str, track: str) -> None:
        self.version = version
        self.track = track
        self.registry = CollectorRegistry(auto_describe=True)
        common = ("version", "track")
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by route template and status.",
            (*common, "method", "route", "status"),
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request.",
            (*common, "method", "route"),
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.db_queries = Counter(
            "db_queries_total",
            "SQL statements run, by operation and main table.",
            (*common, "operation", "table"),
            registry=r,
        )
        self.db_duration = Histogram(
            "db_query_duration_seconds",
            "Time to run a SQL statement and fetch its result.",
            (*common, "operation"),
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.redis_ops = Counter(
            "redis_operations_total",
            "Redis round trips, by operation and outcome.",
            (*common, "operation", "status"),
            registry=r,
        )
        self.redis_duration = Histogram(
            "redis_operation_duration_seconds",
            "Time of a Redis round trip.",
            (*common, "operation"),
            buckets=REDIS_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "cache_hits_total",
            "Cache lookups answered from the cache, by TTL class.",
            (*common, "cache_class"),
            registry=r,
        )
        self.cache_misses = Counter(
            "cache_misses_total",
            "Cache lookups that had to compute the value, by TTL class.",
            (*common, "cache_class"),
            registry=r,
        )
        self.active_connections = Gauge(
            "active_connections",
            "Connections in use: http (requests in flight), db_pool (checked out), redis.",
            (*common, "type"),
            registry=r,
        )
        self._http: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._db: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._redis: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._hits = {
            c: self.cache_hits.labels(version, track, c) for c in ("short", "medium", "long")
        }
        self._misses = {
            c: self.cache_misses.labels(version, track, c) for c in ("short", "medium", "long")
        }
        self.inflight = self.active_connections.labels(version, track, "http")
        self.db_pool_in_use = self.active_connections.labels(version, track, "db_pool")
        self.redis_in_use = self.active_connections.labels(version, track, "redis")

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in _METHODS:
            method = "OTHER"
        key = (method, route, status)
        children = self._http.get(key)
        if children is None:
            children = (
                self.http_requests.labels(self.version, self.track, method, route, str(status)),
                self.http_duration.labels(self.version, self.track, method, route),
            )
            self._http[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_query(self, operation: str, table: str, seconds: float) -> None:
        key = (operation, table)
        children = self._db.get(key)
        if children is None:
            children = (
                self.db_queries.labels(self.version, self.track, operation, table),
                self.db_duration.labels(self.version, self.track, operation),
            )
            self._db[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_redis(self, operation: str, ok: bool, seconds: float) -> None:
        key = (operation, "ok" if ok else "error")
        children = self._redis.get(key)
        if children is None:
            children = (
                self.redis_ops.labels(self.version, self.track, operation, key[1]),
                self.redis_duration.labels(self.version, self.track, operation),
            )
            self._redis[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def cache_lookup(self, cache_class: str, hit: bool) -> None:
        (self._hits if hit else self._misses)[cache_class].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
