"""The Prometheus config and the alert rules, checked and unit-tested by promtool itself.

Every alert gets a firing case and a quiet case built from the stack's own thresholds, so the
tests move with the config: one definition of "too slow" for gates and alerts alike.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from contract import alerts, prometheus_config, promql
from contract.config import StackConfig

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def test_the_generated_prometheus_config_passes_promtool(tmp_path, configs):
    """Debian's promtool is built without Kubernetes service discovery, so the app job's
    discovery is checked as data below and replaced here by the static form the local stack
    uses, and the scrape token (a file promtool wants to find) is one in a scratch directory;
    every other line is the deployed config, checked by promtool."""
    token = tmp_path / "token"
    token.write_text("t" * 48)
    for cfg in configs.values():
        (tmp_path / prometheus_config.RULES_FILE).write_text(alerts.render_rules(cfg))
        conf = prometheus_config.build(cfg, prometheus_config.kubernetes_targets(cfg))
        for job in conf["scrape_configs"]:
            if "kubernetes_sd_configs" in job:
                job.pop("kubernetes_sd_configs")
                job["static_configs"] = [{"targets": ["portal-stable:8000"]}]
                assert job["authorization"] == {
                    "type": "Bearer",
                    "credentials_file": "/var/run/secrets/prometheus-scrape/token",
                }, "the app's /metrics is not public: Prometheus presents the scrape token"
                job["authorization"]["credentials_file"] = str(token)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
        result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_app_discovery_keeps_only_the_stacks_api_pods(configs):
    for cfg in configs.values():
        conf = prometheus_config.build(cfg, prometheus_config.kubernetes_targets(cfg))
        app = next(j for j in conf["scrape_configs"] if j["job_name"] == "portal")
        sd = app["kubernetes_sd_configs"][0]
        assert sd == {"role": "pod", "namespaces": {"names": [cfg.namespace]}}
        keeps = [r for r in app["relabel_configs"] if r.get("action") == "keep"]
        assert {"regex": f"{cfg.names.app};api"}.items() <= keeps[0].items()
        assert any(r["regex"] == "http" for r in keeps)


def test_the_rules_pass_promtool_check_rules(tmp_path, configs):
    for cfg in configs.values():
        path = tmp_path / f"{cfg.stack}.yml"
        path.write_text(alerts.render_rules(cfg))
        result = promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "10 rules found" in result.stdout


def test_every_rule_has_severity_summary_value_and_its_runbook(configs):
    for cfg in configs.values():
        for group in alerts.rule_groups(cfg)["groups"]:
            for rule in group["rules"]:
                assert rule["labels"]["severity"] in ("critical", "warning")
                ann = rule["annotations"]
                assert ann["summary"]
                assert "$value" in ann["description"], rule["alert"]
                slug = alerts.RUNBOOKS[rule["alert"]]
                assert ann["runbook_url"] == cfg.alerts.runbook_url(slug)


def test_error_and_latency_alerts_use_the_slo_the_gates_read(configs):
    for cfg in configs.values():
        exprs = {a.name: a.expr for a in alerts.alerts(cfg)}
        assert exprs["PortalHighErrorRate"].endswith(f"> {cfg.slo.max_error_rate:g}")
        assert exprs["PortalHighLatency"].endswith(f"> {cfg.slo.max_p95_ms / 1000:g}")


def _counter(series: str, per_min: float) -> dict[str, str]:
    return {"series": series, "values": f"0+{per_min:g}x30"}


def _gauge(series: str, value: float) -> dict[str, str]:
    return {"series": series, "values": f"{value:g}x30"}


def _buckets(metric: str, labels: str, fast_share: float, fast_le: float) -> list[dict]:
    """A histogram whose requests take under ``fast_le`` s (share ``fast_share``) or ~2 s."""
    return [
        _counter(f'{metric}{{{labels},le="{fast_le:g}"}}', 100 * fast_share),
        _counter(f'{metric}{{{labels},le="2.5"}}', 100),
        _counter(f'{metric}{{{labels},le="+Inf"}}', 100),
    ]


def cases(cfg: StackConfig) -> dict[str, tuple[list[dict], list[dict]]]:
    """alert -> (series that must fire it, series that must not)."""
    a, slo, ns = cfg.alerts, cfg.slo, cfg.namespace
    ok = 'route="/api/users",status="200",track="stable"'
    err = 'route="/api/users",status="500",track="stable"'
    bad_errors = 100 * slo.max_error_rate * 3
    good_errors = 100 * slo.max_error_rate / 4
    lat = 'route="/api/users",track="stable"'
    slow_le = slo.max_p95_ms / 1000 / 4
    q_le = a.slow_query_ms / 1000 / 4
    hit_bad, hit_good = a.cache_hit_rate_min / 2, (1 + a.cache_hit_rate_min) / 2
    conn = a.pg_connections_max_ratio
    mem = a.redis_memory_max_ratio
    return {
        "PortalHighErrorRate": (
            [
                _counter(f"http_requests_total{{{ok}}}", 100),
                _counter(f"http_requests_total{{{err}}}", bad_errors),
            ],
            [
                _counter(f"http_requests_total{{{ok}}}", 100),
                _counter(f"http_requests_total{{{err}}}", good_errors),
            ],
        ),
        "PortalHighLatency": (
            _buckets("http_request_duration_seconds_bucket", lat, 0.5, slow_le),
            _buckets("http_request_duration_seconds_bucket", lat, 0.99, slow_le),
        ),
        "PortalLowCacheHitRate": (
            [
                _counter('cache_hits_total{cache_class="medium"}', 100 * hit_bad),
                _counter('cache_misses_total{cache_class="medium"}', 100 * (1 - hit_bad)),
            ],
            [
                _counter('cache_hits_total{cache_class="medium"}', 100 * hit_good),
                _counter('cache_misses_total{cache_class="medium"}', 100 * (1 - hit_good)),
            ],
        ),
        "PortalSlowQueries": (
            _buckets("db_query_duration_seconds_bucket", 'operation="select"', 0.5, q_le),
            _buckets("db_query_duration_seconds_bucket", 'operation="select"', 0.99, q_le),
        ),
        "PostgresConnectionSaturation": (
            [
                _gauge(
                    'pg_stat_activity_count{instance="pg",state="active"}',
                    100 * min(1.0, conn + 0.05),
                ),
                _gauge('pg_settings_max_connections{instance="pg"}', 100),
            ],
            [
                _gauge('pg_stat_activity_count{instance="pg",state="active"}', 100 * conn / 2),
                _gauge('pg_settings_max_connections{instance="pg"}', 100),
            ],
        ),
        "RedisDown": (
            [_gauge('redis_up{instance="redis"}', 0), _gauge('up{job="redis"}', 1)],
            [_gauge('redis_up{instance="redis"}', 1), _gauge('up{job="redis"}', 1)],
        ),
        "RedisMemoryHigh": (
            [
                _gauge('redis_memory_used_bytes{instance="redis"}', 100 * min(1.0, mem + 0.05)),
                _gauge('redis_memory_max_bytes{instance="redis"}', 100),
            ],
            [
                _gauge('redis_memory_used_bytes{instance="redis"}', 100 * mem / 2),
                _gauge('redis_memory_max_bytes{instance="redis"}', 100),
            ],
        ),
        "PortalInstancesNotReady": (
            [
                _gauge(
                    f'kube_deployment_status_replicas_unavailable{{namespace="{ns}",'
                    f'deployment="{cfg.names.canary}"}}',
                    1,
                )
            ],
            [
                _gauge(
                    f'kube_deployment_status_replicas_unavailable{{namespace="{ns}",'
                    f'deployment="{cfg.names.canary}"}}',
                    0,
                ),
                _gauge(
                    'kube_deployment_status_replicas_unavailable{namespace="other",deployment="x"}',
                    3,
                ),
            ],
        ),
        "PortalMigrationJobFailed": (
            [
                _gauge(
                    f'kube_job_failed{{namespace="{ns}",job_name="'
                    f'{cfg.names.migration_job("2.0.0")}",condition="true"}}',
                    1,
                )
            ],
            [
                _gauge(
                    f'kube_job_failed{{namespace="{ns}",job_name="'
                    f'{cfg.names.migration_job("2.0.0")}",condition="true"}}',
                    0,
                ),
                _gauge(
                    f'kube_job_failed{{namespace="{ns}",job_name="backup-x",condition="true"}}', 1
                ),
            ],
        ),
        "PortalReleaseAborted": (
            [
                _gauge(
                    f'portal_release_aborted_timestamp_seconds{{job="{promql.RELEASE_JOB}",'
                    f'stack="{cfg.stack}",release="r1",version="2.0.0"}}',
                    300,
                )
            ],
            [
                _gauge(
                    f'portal_release_aborted_timestamp_seconds{{job="{promql.RELEASE_JOB}",'
                    f'stack="{cfg.stack}",release="r1",version="2.0.0"}}',
                    -7200,
                )
            ],
        ),
    }


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_every_alert_fires_when_it_should_and_stays_quiet_when_it_should_not(
    tmp_path, configs, stack
):
    cfg = configs[stack]
    names = {a.name for a in alerts.alerts(cfg)}
    table = cases(cfg)
    assert set(table) == names, "every alert needs a firing and a quiet case"
    (tmp_path / "rules.yml").write_text(alerts.render_rules(cfg))
    tests = []
    for name, (firing, quiet) in table.items():
        query = f'count(ALERTS{{alertname="{name}",alertstate="firing"}})'
        tests.append(
            {
                "interval": "1m",
                "input_series": firing,
                "promql_expr_test": [
                    {
                        "expr": query,
                        "eval_time": "25m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    },
                ],
            }
        )
        tests.append(
            {
                "interval": "1m",
                "input_series": quiet,
                "promql_expr_test": [
                    {"expr": query, "eval_time": "25m", "exp_samples": []},
                ],
            }
        )
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_alert_with_a_for_duration_is_pending_before_it_fires(tmp_path, configs):
    cfg = configs["prod"]  # for: 5m
    (tmp_path / "rules.yml").write_text(alerts.render_rules(cfg))
    firing, _ = cases(cfg)["PostgresConnectionSaturation"]
    query = 'count(ALERTS{alertname="PostgresConnectionSaturation",alertstate="firing"})'
    test = {
        "interval": "1m",
        "input_series": firing,
        "promql_expr_test": [
            {"expr": query, "eval_time": "3m", "exp_samples": []},
            {"expr": query, "eval_time": "6m", "exp_samples": [{"labels": "{}", "value": 1}]},
        ],
    }
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [test]})
    )
    result = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
