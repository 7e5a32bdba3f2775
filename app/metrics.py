"""Prometheus series of the service, in a registry of its own (one per app instance).

Exactly the series the release gates, alert rules and dashboards query, every one carrying the
``version`` and ``track`` labels so one PromQL query separates canary from stable.

Recording is the hot path of every request, so it is kept to a few dictionary and list
operations: values live in plain dicts (the service records from its one event-loop thread)
and a collector turns them into Prometheus families at scrape time, rendered by
``prometheus_client``. This costs about a tenth of the client library's locked
``Counter``/``Histogram`` children.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

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

CACHE_CLASSES = ("short", "medium", "long")
CONNECTION_TYPES = ("http", "db_pool", "redis")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_COMMON = ("version", "track")


class _Histogram:
    """Per label set: counts per bucket (the last one is +Inf), then the sum."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.series: dict[tuple[str, ...], list[float]] = {}

    def row(self, key: tuple[str, ...]) -> list[float]:
        """The row of ``key``, made on first use (the hot paths keep it and update it in place)."""
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0.0] * (len(self.buckets) + 2)
        return row

    def observe(self, key: tuple[str, ...], value: float) -> None:
        row = self.row(key)
        row[bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def family(
        self, name: str, doc: str, labels: Sequence[str], common: tuple[str, str]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=(*_COMMON, *labels))
        edges = [_le(b) for b in self.buckets] + ["+Inf"]
        for key, row in sorted(self.series.items()):
            running = 0.0
            cumulative = []
            for edge, count in zip(edges, row[:-1], strict=True):
                running += count
                cumulative.append((edge, running))
            family.add_metric([*common, *key], cumulative, row[-1])
        return family


class _Counted:
    """A counter per label set beside a histogram keyed by the first ``prefix`` of its labels:
    per counter key, [count, the histogram's row], updated in place on the hot path."""

    def __init__(self, histogram: _Histogram, prefix: int) -> None:
        self.histogram = histogram
        self.prefix = prefix
        self.cells: dict[tuple[Any, ...], list[Any]] = {}

    def cell(self, key: tuple[Any, ...]) -> list[Any]:
        """[count, the histogram's row] of ``key``, made on first use."""
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0.0, self.histogram.row(key[: self.prefix])]
        return cell

    def observe(self, key: tuple[Any, ...], seconds: float) -> None:
        observe(self.cell(key), self.histogram.buckets, seconds)


def observe(cell: list[Any], buckets: tuple[float, ...], seconds: float) -> None:
    """One observation into a ``_Counted`` cell: its count, its bucket and its sum. The hot paths
    keep their cells (``request_cell``, ``redis_cell``) rather than look them up each time;
    ``app.serving`` repeats these lines inline."""
    cell[0] += 1
    row = cell[1]
    row[bisect_left(buckets, seconds)] += 1
    row[-1] += seconds


def _le(bound: float) -> str:
    return repr(float(bound))


class Metrics(Collector):
    def __init__(self, version: str, track: str, enabled: bool = True) -> None:
        self.enabled = enabled
        """False only to measure the cost of instrumentation: every observation is skipped."""
        self.version = version
        self.track = track
        self.common = (version, track)
        self.http_duration = _Histogram(HTTP_BUCKETS)
        self.http_requests = _Counted(self.http_duration, 2)
        """Per (method, route, status), beside the (method, route) duration histogram."""
        self.db_queries: dict[tuple[str, str], float] = {}
        self.db_duration = _Histogram(HTTP_BUCKETS)
        self.redis_duration = _Histogram(REDIS_BUCKETS)
        self.redis_ops = _Counted(self.redis_duration, 1)
        """Per (operation, ok), beside the operation's duration histogram."""
        self.cache_hits = dict.fromkeys(CACHE_CLASSES, 0.0)
        self.cache_misses = dict.fromkeys(CACHE_CLASSES, 0.0)
        self.connections = dict.fromkeys(CONNECTION_TYPES, 0.0)
        self.inflight = 0
        """HTTP requests in flight (maintained by ``app.serving``)."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------------------ recording

    def request_cell(self, method: str, route: str, status: int) -> list[Any]:
        """The cell of one (method, route, status) series, made on first use: the request
        observer keeps it and updates it in place with ``observe``."""
        if method not in _METHODS:
            method = "OTHER"
        return self.http_requests.cell((method, route, status))

    def redis_cell(self, operation: str, ok: bool) -> list[Any] | None:
        """The cell of one Redis (operation, outcome) series for ``observe``; None while
        instrumentation is off (the cache then skips even its clock reads)."""
        return self.redis_ops.cell((operation, ok)) if self.enabled else None

    def observe_query(self, operation: str, table: str, seconds: float) -> None:
        if not self.enabled:
            return
        counts = self.db_queries
        counts[operation, table] = counts.get((operation, table), 0.0) + 1
        self.db_duration.observe((operation,), seconds)

    def observe_redis(self, operation: str, ok: bool, seconds: float) -> None:
        if not self.enabled:
            return
        self.redis_ops.observe((operation, ok), seconds)

    def cache_lookup(self, cache_class: str, hit: bool) -> None:
        if not self.enabled:
            return
        (self.cache_hits if hit else self.cache_misses)[cache_class] += 1

    def set_connections(self, kind: str, value: float) -> None:
        self.connections[kind] = value

    # ------------------------------------------------------------------------ export

    def collect(self) -> Iterator[Metric]:
        common = (self.version, self.track)
        yield _counter(
            "http_requests_total",
            "HTTP requests answered, by route template and status.",
            ("method", "route", "status"),
            {(m, r, str(code)): cell[0] for (m, r, code), cell in self.http_requests.cells.items()},
            common,
        )
        yield self.http_duration.family(
            "http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ("method", "route"),
            common,
        )
        yield _counter(
            "db_queries_total",
            "SQL statements run, by operation and main table.",
            ("operation", "table"),
            self.db_queries,
            common,
        )
        yield self.db_duration.family(
            "db_query_duration_seconds",
            "Time to run a SQL statement and fetch its result.",
            ("operation",),
            common,
        )
        yield _counter(
            "redis_operations_total",
            "Redis round trips, by operation and outcome.",
            ("operation", "status"),
            {
                (op, "ok" if ok else "error"): cell[0]
                for (op, ok), cell in self.redis_ops.cells.items()
            },
            common,
        )
        yield self.redis_duration.family(
            "redis_operation_duration_seconds",
            "Time of a Redis round trip.",
            ("operation",),
            common,
        )
        yield _counter(
            "cache_hits_total",
            "Cache lookups answered from the cache, by TTL class.",
            ("cache_class",),
            {(c,): v for c, v in self.cache_hits.items()},
            common,
        )
        yield _counter(
            "cache_misses_total",
            "Cache lookups that had to compute the value, by TTL class.",
            ("cache_class",),
            {(c,): v for c, v in self.cache_misses.items()},
            common,
        )
        gauge = GaugeMetricFamily(
            "active_connections",
            "Connections in use: http (requests in flight), db_pool (checked out), redis.",
            labels=(*_COMMON, "type"),
        )
        self.connections["http"] = self.inflight
        for kind, value in self.connections.items():
            gauge.add_metric([*common, kind], value)
        yield gauge

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _counter(
    name: str,
    doc: str,
    labels: Sequence[str],
    values: Mapping[Any, float],
    common: tuple[str, str],
) -> CounterMetricFamily:
    family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=(*_COMMON, *labels))
    for key, value in sorted(values.items()):
        family.add_metric([*common, *key], value)
    return family
