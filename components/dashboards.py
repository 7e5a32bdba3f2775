"""Grafana provisioning: the two dashboards (JSON files in ``components/dashboards/``), the
datasources and the dashboard provider, as pure data (no Pulumi import) so tests can parse every
panel and evaluate its PromQL against a real Prometheus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).with_name("dashboards")
DASHBOARD_FILES = ("api-performance.json", "database-redis.json")
DASHBOARD_MOUNT = "/etc/grafana/dashboards"
"""Where Grafana reads the dashboard files (the provider's path)."""
PROMETHEUS_UID = "prometheus"
JAEGER_UID = "jaeger"

GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}
"""Grafana's built-in variables and a value each, for evaluating a query outside Grafana."""


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str


def load_dashboards() -> dict[str, dict[str, Any]]:
    """File name -> parsed dashboard."""
    return {name: json.loads((DASHBOARD_DIR / name).read_text()) for name in DASHBOARD_FILES}


def dashboard_texts() -> dict[str, str]:
    """File name -> the file's text (what the dashboards ConfigMap holds)."""
    return {name: (DASHBOARD_DIR / name).read_text() for name in DASHBOARD_FILES}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold their panels


def panel_queries(name: str, dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every PromQL query of every panel of ``dashboard``."""
    return [
        PanelQuery(
            name, str(panel.get("title", "")), str(target.get("refId", "")), str(target["expr"])
        )
        for panel in _panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def template_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """``$name`` -> a value matching every option (``.*``) for each of the dashboard's variables."""
    return {f"${var['name']}": ".*" for var in dashboard.get("templating", {}).get("list", [])}


def expand(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana variables replaced (longest names first)."""
    values = {**GRAFANA_VARIABLES, **variables}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def datasources(prometheus_url: str, jaeger_url: str, scrape_interval: str) -> dict[str, Any]:
    """Grafana's datasource provisioning file."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": PROMETHEUS_UID,
                "type": "prometheus",
                "access": "proxy",
                "url": prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {"timeInterval": scrape_interval},
            },
            {
                "name": "Jaeger",
                "uid": JAEGER_UID,
                "type": "jaeger",
                "access": "proxy",
                "url": jaeger_url,
                "editable": False,
            },
        ],
    }


def dashboard_provider() -> dict[str, Any]:
    """Grafana's dashboard provisioning file: the dashboards come from files, read-only."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "portal",
                "folder": "Portal",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": DASHBOARD_MOUNT},
            }
        ],
    }
