"""Both Grafana dashboards' queries, evaluated against a real Prometheus scraping a real app.

The local stack (real Postgres, Redis, two app instances, nginx, both exporters, Prometheus at
1 s scrapes) gets some traffic, then every panel's PromQL runs: none may fail to parse or
evaluate, and the panels over the app's and exporters' series must show data.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from components.dashboards import expand, load_dashboards, panel_queries, template_variables
from rollout.prometheus import Prometheus, PrometheusError
from tests.conftest import running_local_stack

pytestmark = pytest.mark.slow

MAY_BE_EMPTY = (
    "Error rate",
    "Deadlocks",
    "Evicted",
    "Memory used of maxmemory",
    "Responses by status",
    "expired",
    "5xx",
)
"""Panels that are legitimately empty on a healthy, young stack (no 5xx, no maxmemory set)."""


@pytest.fixture(scope="module")
def prometheus():
    with running_local_stack("portal-dash-") as stack:
        state = stack.load()
        admin = {"Authorization": f"Bearer {stack.credentials().admin}"}
        for i in range(150):
            path = (
                f"/api/users/{1 + i % 20}/dashboard",
                "/api/users?page=1",
                "/api/plans",
                "/api/admin/stats",
            )[i % 4]
            request = urllib.request.Request(state["nginx_url"] + path, headers=admin)
            with urllib.request.urlopen(request, timeout=10) as r:
                r.read()
        time.sleep(4)  # a few scrapes
        yield Prometheus(state["prometheus_url"])


def all_queries():
    for name, dashboard in load_dashboards().items():
        variables = template_variables(dashboard)
        for q in panel_queries(name, dashboard):
            yield q, expand(q.expr, variables)


def test_the_dashboards_have_panels_for_what_the_seeds_ask(prometheus):
    titles = " ".join(q.panel for q, _ in all_queries()).lower()
    for wanted in (
        "p50",
        "p95",
        "p99",
        "request rate",
        "error rate",
        "cache hit rate",
        "db query",
        "redis",
        "connections",
        "transactions",
        "memory",
        "commands",
    ):
        assert wanted in titles, wanted


def test_every_panel_query_evaluates_and_shows_data(prometheus):
    empty, failed = [], []
    for q, expr in all_queries():
        assert "$" not in expr, f"unexpanded variable in {q.panel}: {expr}"
        try:
            samples = prometheus.query(expr)
        except PrometheusError as exc:
            failed.append(f"{q.dashboard} / {q.panel}: {exc}")
            continue
        if not samples and not any(m in q.panel for m in MAY_BE_EMPTY):
            empty.append(f"{q.dashboard} / {q.panel}: {expr}")
    assert not failed, "\n".join(failed)
    assert not empty, "panels without data:\n" + "\n".join(empty)
