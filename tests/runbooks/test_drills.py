"""Runbooks against the real local stack with a real fault induced: the findings name the
cause, the actions change what they say and are recorded in the ledger, and a Prometheus that
is down is reported in one clear line instead of a crash."""

from __future__ import annotations

import json
import urllib.request

import pytest
import redis

from rollout import health
from rollout.engine import ReleaseEngine
from rollout.ledger import Ledger
from rollout.local.processes import Process, wait_until
from rollout.local.stack import local_config
from rollout.local.target import LocalDiagnostics
from rollout.ports import ReleaseSpec, Unavailable
from rollout.prometheus import Prometheus, PrometheusError
from tests.conftest import local_config_with
from tests.local_controls import app_instances, start_redis, stop_redis

from .conftest import run_runbook

pytestmark = pytest.mark.slow


def canary(target, stack, version, **env):
    stack.set_version_env(version, env)
    target.workloads.deploy_canary(ReleaseSpec(f"r-{version}", version), 1)
    target.router.set_weight(50)


def wait_for(prom: Prometheus, promql: str, ok, what: str, timeout: float = 40) -> None:
    def check() -> bool:
        try:
            v = prom.value(promql)
        except PrometheusError:
            return False
        return v is not None and ok(v)

    wait_until(check, timeout, what)


def all_healthy(stack) -> bool:
    return all(health.probe(n, u).ok for n, _t, u in app_instances(stack))


def incidents(target):
    return Ledger(target.ledger).read().incidents


def test_high_error_rate_names_the_canary_and_its_error_rate_and_rollback_removes_it(target, stack):
    prom = target.telemetry.prometheus
    canary(target, stack, "9.9.9", PORTAL_FAULT_ERROR_RATE="0.5")
    wait_for(
        prom,
        'sum(rate(http_requests_total{track="canary",status=~"5.."}[30s]))'
        ' / sum(rate(http_requests_total{track="canary"}[30s]))',
        lambda v: v > 0.2,
        "the canary's errors in Prometheus",
    )
    diag = run_runbook(stack.root, "high-error-rate")  # no --yes, no terminal: declined
    assert diag.returncode == 1, diag.stdout + diag.stderr  # a critical finding
    line = next(
        (ln for ln in diag.stdout.splitlines() if "CRIT" in ln and "track=canary" in ln), ""
    )
    assert "version=9.9.9" in line and "beyond > 2%" in line, diag.stdout
    assert "Traceback" not in diag.stderr
    assert target.workloads.state().weight == 50, "an action ran without confirmation"
    assert "Not done (declined): Roll the canary back" in diag.stdout

    done = run_runbook(stack.root, "high-error-rate", "--yes")
    assert "done Roll the canary back: canary 9.9.9 removed, weight 50% -> 0%" in done.stdout
    state = target.workloads.state()
    assert (state.weight, state.canary_version, state.canary_replicas) == (0, None, 0)
    assert [t for _n, t, _u in app_instances(stack)] == ["stable", "stable"]
    assert "done Switch Sentry error reporting off" in done.stdout
    record = incidents(target)[-1]
    assert record.runbook == "high-error-rate" and record.alert == "PortalHighErrorRate"
    assert [a.action for a in record.actions] == ["rollback", "disable_sentry"]
    assert record.actions[0].by == "runbook high-error-rate: oncall"
    assert any("track=canary" in f.text for f in record.findings)


def test_sentry_disable_switches_reporting_off_where_it_was_on(target, stack):
    canary(
        target, stack, "9.9.8", PORTAL_FAULT_ERROR_RATE="0.5", SENTRY_DSN="http://k@127.0.0.1:9/1"
    )
    (url,) = [u for _n, track, u in app_instances(stack) if track == "canary"]
    req = urllib.request.Request(
        f"{url}/api/admin/sentry",
        data=b'{"enabled": true}',
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {stack.credentials().admin}",
        },
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read()) == {"configured": True, "enabled": True}
    res = run_runbook(stack.root, "high-error-rate", "--yes", "--action", "disable_sentry")
    assert "canary-1: enabled false" in res.stdout, res.stdout
    assert "canary-1: enabled false (no SENTRY_DSN)" not in res.stdout
    assert "skipped Roll the canary back: not selected (--action)" in res.stdout
    assert target.workloads.state().weight == 50  # only the chosen action ran
    assert [a.action for a in incidents(target)[-1].actions] == ["disable_sentry"]


def test_slow_query_on_the_canary_is_named_by_the_slow_queries_runbook(target, stack):
    prom = target.telemetry.prometheus
    canary(target, stack, "9.9.7", PORTAL_FAULT_DB_SLEEP_MS="300")
    wait_for(
        prom,
        "max(histogram_quantile(0.95, sum by (operation, le) "
        '(rate(db_query_duration_seconds_bucket{track="canary"}[30s]))))',
        lambda v: v > 0.25,
        "the canary's slow queries in Prometheus",
    )
    res = run_runbook(stack.root, "slow-queries")
    assert res.returncode == 0, res.stdout + res.stderr  # warnings only
    slow = [
        ln
        for ln in res.stdout.splitlines()
        if "WARN" in ln and "track=canary" in ln and "version=9.9.7" in ln
    ]
    assert slow and all("beyond > 250 ms" in ln for ln in slow), res.stdout
    assert "operation=" in slow[0]
    assert "Database analysis" in res.stdout  # the analysis ran against the real database


def test_redis_down_is_reported_with_the_app_degraded_and_nothing_is_restarted(target, stack):
    prom = target.telemetry.prometheus
    stop_redis(stack)
    try:
        wait_for(prom, "min(redis_up)", lambda v: v == 0, "redis_up 0 in Prometheus")
        res = run_runbook(stack.root, "redis-down", "--yes")
    finally:
        start_redis(stack)
        wait_until(lambda: all_healthy(stack), 30, "every instance back on Redis")
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert any(
        "CRIT Redis answers its exporter: Redis is down: 0 on instance=" in ln for ln in lines
    ), res.stdout
    degraded = [
        ln for ln in lines if "CRIT" in ln and "is degraded" in ln and "the cache check fails" in ln
    ]
    assert len(degraded) == 2, res.stdout  # both stable instances serve without Redis
    assert "Restart Redis" in res.stdout  # left for a person
    assert "`portalctl local up --dir" in res.stdout  # the local stack's own way
    assert incidents(target)[-1].runbook == "redis-down"


def test_cache_flush_deletes_the_matching_keys_in_redis(target, stack):
    wait_until(lambda: all_healthy(stack), 30, "every instance on Redis")
    client = redis.Redis.from_url(stack.load()["redis_url"])
    planted = [f"users:list:9999:{n}" for n in range(5)]
    for key in planted:
        client.set(key, b"x", ex=600)
    client.set("user:keep-me", b"x", ex=600)
    res = run_runbook(stack.root, "redis-memory", "--yes", "--pattern", "users:list:9999:*")
    assert "done Flush cache keys matching `users:list:9999:*`: deleted 5 keys" in res.stdout, (
        res.stdout
    )
    assert "in-memory fallback" not in res.stdout
    # As the service's ACL user: GET, never EXISTS, is among its commands.
    assert [client.get(k) for k in planted] == [None] * len(planted)
    assert client.get("user:keep-me") == b"x"
    assert incidents(target)[-1].actions[0].action == "flush_cache"


def test_release_aborted_starts_from_the_incident_and_records_its_actions_there(target, stack):
    cfg = local_config_with(
        steps=[{"weight": 50, "analysis": "6s"}],
        interval="1s",
        settle="1s",
        minRequests=10,
        leaseTtl="4s",
    )
    stack.set_version_env("6.6.6", {"PORTAL_FAULT_ERROR_RATE": "0.5"})
    outcome = ReleaseEngine(cfg, target).start(ReleaseSpec("", "6.6.6"))
    assert outcome.status == "ABORTED", outcome.reason
    # the canary came back (a crashed rollback, a manual deploy): the runbook removes it
    canary(target, stack, "6.6.6", PORTAL_FAULT_ERROR_RATE="0.5")
    res = run_runbook(stack.root, "release-aborted", "--yes")
    out = res.stdout
    assert f"release {outcome.release_id} (6.6.6) ABORTED" in out, out
    assert "gate metrics, check error_rate (canary 0." in out
    assert "the gate's query now:" in out
    assert "Follow the high-error-rate runbook" in out
    assert "done Roll the canary back: canary 6.6.6 removed" in out
    actions = Ledger(target.ledger).find(outcome.release_id).incident.actions
    assert [(a.action, a.by) for a in actions] == [("rollback", "runbook release-aborted: oncall")]


def test_prometheus_down_is_one_clear_finding_and_the_other_steps_still_run(target, stack):
    state = stack.load()
    Process("prometheus", stack.root / "prometheus", []).stop()
    try:
        res = run_runbook(stack.root, "high-error-rate")
    finally:
        stack.prometheus(state).start()
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"Prometheus at {state['prometheus_url']} is unreachable" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    assert "all 2 instances healthy" in res.stdout  # the probe still ran
    assert "stable-1 (stable 1.0.0) running" in res.stdout  # and the process read
    diagnosis = res.stdout.split("Summary")[0].splitlines()
    assert len([ln for ln in diagnosis if "WARN" in ln and "is unreachable" in ln]) == 1
    assert len([ln for ln in diagnosis if "skipped: Prometheus at" in ln]) == 1  # 2nd query


class WithoutDatabase(LocalDiagnostics):
    """The local stack's reads with no database reachable from here (as on a cluster without
    PORTAL_DATABASE_URL)."""

    def database_url(self):
        return Unavailable("set PORTAL_DATABASE_URL to the database to run it")


def test_reads_a_target_cannot_offer_are_reported_as_not_available(target, stack):
    from dataclasses import replace

    from rich.console import Console

    from runbooks.definitions import by_slug
    from runbooks.runner import Runner

    out = Console(record=True, width=200)
    without_db = replace(target, diagnostics=WithoutDatabase(stack))
    result = Runner(local_config(), without_db, console=out, window="30s").run(
        by_slug(local_config())["migration-failed"]
    )
    texts = [f.text for f in result.findings]
    assert "not available: the local stack runs migrations as processes, not Jobs" in texts
    assert "not available: the local stack has no Kubernetes events" in texts
    assert any(t.startswith("not available: set PORTAL_DATABASE_URL") for t in texts)
    assert any("no data over the last 30s" in t for t in texts)  # no kube-state-metrics here
    assert result.exit_code == 0
    assert "Traceback" not in out.export_text()


def test_a_stack_whose_cluster_cannot_be_reached_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rollout.cli import main; main()",
            "runbook",
            "run",
            "redis-down",
            "--stack",
            "staging",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(tmp_path / "no-kubeconfig")},
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("portalctl runbook: ")
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_rollback_during_a_release_goes_through_the_engine_and_lands_in_its_incident(target, stack):
    import threading

    cfg = local_config_with(
        steps=[{"weight": 50, "analysis": "60s"}],
        interval="1s",
        settle="1s",
        minRequests=10,
        leaseTtl="4s",
    )
    outcomes = []
    runner = threading.Thread(
        target=lambda: outcomes.append(ReleaseEngine(cfg, target).start(ReleaseSpec("", "7.7.7"))),
        daemon=True,
    )
    runner.start()
    ledger = Ledger(target.ledger)

    def at_50() -> bool:
        latest = ledger.latest()
        return bool(latest and latest.version == "7.7.7" and latest.weight == 50)

    wait_until(at_50, 60, "the release at 50%")
    res = run_runbook(stack.root, "high-error-rate", "--yes", "--action", "rollback")
    runner.join(30)
    assert outcomes and outcomes[0].status == "ABORTED", res.stdout
    assert "aborted by oncall" in outcomes[0].reason
    release_id = outcomes[0].release_id
    assert f"abort of release {release_id} recorded" in res.stdout, res.stdout
    assert target.workloads.state().canary_version is None
    actions = ledger.find(release_id).incident.actions
    assert [(a.action, a.by) for a in actions] == [("rollback", "runbook high-error-rate: oncall")]


def test_scaling_stable_up_starts_an_instance_behind_nginx_and_down_stops_it(target, stack):
    res = run_runbook(stack.root, "high-latency", "--yes", "--action", "scale")
    try:
        assert "portal-stable scaled 2 -> 3" in res.stdout, res.stdout
        assert sorted(t for _n, t, _u in app_instances(stack)) == ["stable"] * 3
        wait_until(lambda: all_healthy(stack), 30, "three healthy stable instances")
        nginx = (stack.root / "nginx" / "nginx.conf").read_text()
        assert nginx.count("server 127.0.0.1:") == 3
        record = incidents(target)[-1]
        assert [a.action for a in record.actions] == ["scale"]
    finally:
        target.workloads.scale("stable", 2)
    assert sorted(t for _n, t, _u in app_instances(stack)) == ["stable"] * 2
    assert target.workloads.replicas("stable") == 2
