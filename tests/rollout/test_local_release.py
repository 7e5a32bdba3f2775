"""Canary releases on the real local stack: every gate, every fault of the issue, resume.

Real Postgres, Redis, app processes, nginx and Prometheus (1 s scrapes); windows of seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rollout.engine import ReleaseEngine, ReleaseError
from rollout.events import Event
from rollout.ledger import Ledger, ReleaseInProgress
from rollout.local.stack import LocalStack
from rollout.ports import ReleaseSpec
from rollout.report import render
from tests.local_controls import app_instances, kill_canary

from .conftest import fast_config, fast_stack_file

pytestmark = pytest.mark.slow
PORTALCTL = [sys.executable, "-c", "from rollout.cli import main; main()"]


def engine_for(target, events=None, **overrides):
    return ReleaseEngine(fast_config(**overrides), target, events=events)


def versions_of_stable(stack):
    out = set()
    for _name, track, url in app_instances(stack):
        if track == "stable":
            with urllib.request.urlopen(f"{url}/api/health", timeout=3) as r:
                out.add(json.loads(r.read())["version"])
    return out


def actions(release):
    return [(t.action, t.args.weight) for t in release.transitions]


def test_a_healthy_release_goes_through_every_step_and_stable_takes_it(target, stack, load):
    engine = engine_for(target)
    outcome = engine.start(ReleaseSpec("", "2.0.0"))
    assert outcome.status == "PROMOTED", outcome.reason
    release = engine.ledger.find(outcome.release_id)
    assert actions(release) == [
        ("migrate_expand", None),
        ("deploy_canary", None),
        ("set_weight", 30),
        ("set_weight", 100),
        ("promote", None),
    ]
    assert all(t.state == "done" for t in release.transitions)
    assert versions_of_stable(stack) == {"2.0.0"}
    state = target.workloads.state()
    assert state.weight == 0 and state.canary_replicas == 0
    assert engine.ledger.read().stable.version == "2.0.0"
    verdicts = {v.verdict for v in release.verdicts}
    assert "FAIL" not in verdicts and "PASS" in verdicts


def test_an_erroring_canary_is_rolled_back_with_an_incident_naming_the_check(
    target, stack, local_state, load
):
    engine = engine_for(target)
    before = versions_of_stable(stack)
    stack.set_version_env("3.0.0", {"PORTAL_FAULT_ERROR_RATE": "0.3"})
    outcome = engine.start(ReleaseSpec("", "3.0.0"))
    assert outcome.status == "ABORTED"
    incident = outcome.incident
    assert incident.gate == "metrics" and incident.check == "error_rate"
    assert 'version="3.0.0"' in incident.query
    assert incident.values["canary"] > incident.values["threshold"]
    assert incident.runbook == "release-aborted"
    state = target.workloads.state()
    assert state.weight == 0 and state.canary_replicas == 0
    assert versions_of_stable(stack) == before
    release = engine.ledger.find(outcome.release_id)
    assert release.status == "ABORTED"
    assert actions(release)[-1] == ("rollback", None)
    assert ("set_weight", 100) not in actions(release)
    page = render(release.model_dump(mode="json"))
    assert "<svg" in page and "error_rate" in page and "release-aborted" in page
    # the abort is published for the PortalReleaseAborted alert
    with urllib.request.urlopen(f"{local_state['pushgateway_url']}/metrics", timeout=5) as r:
        pushed = r.read().decode()
    assert "portal_release_aborted_timestamp_seconds{" in pushed
    assert f'release="{outcome.release_id}"' in pushed and 'stack="local"' in pushed


def test_a_slow_canary_is_rolled_back_by_the_latency_gate(target, stack, load):
    # Being sure that stable's p95 is below a bucket bound takes about 120 stable requests at
    # alpha/4 (with none slower, 0.95^n must fall under alpha/4): a first step long enough for
    # that at 70% of 40 req/s.
    engine = engine_for(
        target, steps=[{"weight": 30, "analysis": "10s"}, {"weight": 100, "analysis": "3s"}]
    )
    stack.set_version_env("4.0.0", {"PORTAL_FAULT_LATENCY_MS": "300"})
    outcome = engine.start(ReleaseSpec("", "4.0.0"))
    assert outcome.status == "ABORTED"
    assert outcome.incident.check == "p95_latency"
    assert outcome.incident.values["canary"] >= 250


def test_a_killed_canary_process_fails_the_health_gate(target, stack, load):
    killed = []

    def on_event(event: Event) -> None:
        if event.kind == "weight_set" and not killed:
            kill_canary(stack)
            killed.append(event)

    engine = engine_for(target, events=on_event)
    outcome = engine.start(ReleaseSpec("", "5.0.0"))
    assert killed
    assert outcome.status == "ABORTED"
    assert outcome.incident.gate == "health"
    assert target.workloads.state().canary_replicas == 0


def test_prometheus_stopped_mid_analysis_holds_then_aborts_with_provider_error(
    target, load, stack_root
):
    stack = LocalStack(stack_root)
    prom = stack.prometheus(stack.load())
    stopped = []

    def on_event(event: Event) -> None:
        if event.kind == "weight_set" and not stopped:
            prom.stop()
            stopped.append(True)

    try:
        engine = engine_for(target, events=on_event)
        outcome = engine.start(ReleaseSpec("", "6.0.0"))
    finally:
        prom.start()
    assert outcome.status == "ABORTED"
    assert "Prometheus unavailable" in outcome.reason
    release = engine.ledger.find(outcome.release_id)
    provider = [v for v in release.verdicts if v.verdict == "PROVIDER_ERROR"]
    assert provider and "unreachable" in provider[0].reason
    assert target.workloads.state().weight == 0


def test_prometheus_back_within_the_limit_lets_the_release_continue(target, load, stack_root):
    stack = LocalStack(stack_root)
    prom = stack.prometheus(stack.load())
    seen = []

    def on_event(event: Event) -> None:
        if event.kind == "weight_set" and not seen:
            prom.stop()
            seen.append(True)
        elif (
            event.kind == "verdict"
            and event.data.get("verdict") == "PROVIDER_ERROR"
            and len(seen) == 1
        ):
            prom.start()
            seen.append(True)

    # after the gap Prometheus needs a few scrapes before the window has data again
    engine = engine_for(
        target,
        events=on_event,
        onProviderError={"limit": "20s", "then": "abort"},
        onInsufficientData={"limit": "20s", "then": "fail"},
    )
    try:
        outcome = engine.start(ReleaseSpec("", "6.1.0"))
    finally:
        if not prom.running():
            prom.start()
    assert len(seen) == 2
    assert outcome.status == "PROMOTED", outcome.reason


def test_zero_traffic_gives_insufficient_data_then_the_policy(target, load):
    load.stop()
    try:
        engine = engine_for(target)
        outcome = engine.start(ReleaseSpec("", "7.0.0"))
    finally:
        load.start()
    assert outcome.status == "ABORTED"
    assert "insufficient data" in outcome.reason
    release = engine.ledger.find(outcome.release_id)
    assert any(v.verdict == "INSUFFICIENT_DATA" for v in release.verdicts)


def test_zero_traffic_with_a_hold_policy_holds_for_a_human(target, load):
    load.stop()
    try:
        engine = engine_for(target, onInsufficientData={"limit": "3s", "then": "hold"})
        outcome = engine.start(ReleaseSpec("", "7.1.0"))
    finally:
        load.start()
    assert outcome.status == "HELD" and outcome.exit_code == 3
    assert engine.ledger.find(outcome.release_id).status == "HELD"
    # the weight stays where it was, and resume finishes it now that traffic is back
    assert target.workloads.state().weight == 30
    outcome = engine_for(target).resume()
    assert outcome.status == "PROMOTED", outcome.reason


def test_a_pause_step_waits_for_promote(target, stack, load):
    steps = [{"weight": 30, "analysis": "2s"}, {"pause": True}, {"weight": 100, "analysis": "2s"}]
    engine = engine_for(target, steps=steps)
    outcome = engine.start(ReleaseSpec("", "8.0.0"))
    assert outcome.status == "HELD"
    assert engine.ledger.find(outcome.release_id).status == "PAUSED"
    with pytest.raises(ReleaseError, match="paused for approval"):
        engine_for(target, steps=steps).resume()
    done = engine_for(target, steps=steps).request("promote", "alice")
    assert done is not None and done.status == "PROMOTED"
    assert "alice" in done.reason
    assert versions_of_stable(stack) == {"8.0.0"}


def test_abort_from_another_portalctl_rolls_back_within_an_interval(target, load):
    steps = [{"weight": 30, "analysis": "30s"}]
    engine = engine_for(target, steps=steps)
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("o", engine.start(ReleaseSpec("", "9.0.0")))
    )
    thread.start()
    deadline = time.time() + 30
    while time.time() < deadline and target.workloads.state().weight != 30:
        time.sleep(0.2)
    assert engine_for(target, steps=steps).request("abort", "bob") is None  # the runner acts
    asked = time.time()
    thread.join(timeout=30)
    assert result["o"].status == "ABORTED" and "bob" in result["o"].reason
    assert time.time() - asked < 5
    assert target.workloads.state().weight == 0


def _ctl(root: Path, *args: str, **kw):
    return subprocess.Popen(
        [*PORTALCTL, *args, "--local", "--dir", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        **kw,
    )


def test_portalctl_killed_between_steps_resumes_from_the_step_it_was_on(stack_root, target, load):
    steps = [{"weight": w, "analysis": "2s"} for w in (20, 50, 100)]
    with fast_stack_file(stack_root, steps=steps, leaseTtl="3s"):
        proc = _ctl(stack_root, "release", "start", "--version", "10.0.0")
        ledger = Ledger(target.ledger)
        deadline = time.time() + 60
        release = None
        while time.time() < deadline:
            release = ledger.latest()
            if release and release.version == "10.0.0" and release.step >= 1:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        release = ledger.latest()
        assert release.status == "PROGRESSING" and release.step >= 1
        time.sleep(3.5)  # the dead holder's lease expires
        resumed = _ctl(stack_root, "release", "resume")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err + out
        release = ledger.latest()
        weights = [t.args.weight for t in release.transitions if t.action == "set_weight"]
        assert weights.count(20) == 1, weights  # a finished step is never repeated
        assert weights[-1] == 100 and 50 in weights  # and none is skipped
        assert release.status == "PROMOTED"


def test_two_releases_at_once_on_one_stack_one_is_refused(stack_root, target, load):
    with fast_stack_file(stack_root, steps=[{"weight": 50, "analysis": "3s"}]):
        a = _ctl(stack_root, "release", "start", "--version", "11.0.0")
        b = _ctl(stack_root, "release", "start", "--version", "11.0.1")
        results = [(*p.communicate(timeout=120), p.returncode) for p in (a, b)]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    refused = next(r for r in results if r[2] == 2)
    assert "held by" in refused[1] or "in flight" in refused[1]


def test_a_live_release_refuses_a_second_start_naming_the_holder(target, load):
    steps = [{"weight": 30, "analysis": "20s"}]
    engine = engine_for(target, steps=steps)
    thread = threading.Thread(target=lambda: engine.start(ReleaseSpec("", "12.0.0")))
    thread.start()
    try:
        deadline = time.time() + 30
        while time.time() < deadline and target.workloads.state().weight != 30:
            time.sleep(0.2)
        with pytest.raises(ReleaseInProgress, match=engine.holder):
            engine_for(target, steps=steps).start(ReleaseSpec("", "12.0.1"))
    finally:
        engine_for(target, steps=steps).request("abort", "test")
        thread.join(timeout=30)


def test_scripted_rollback_returns_to_the_last_known_good_and_respects_contracts(
    target, stack, load
):
    engine = engine_for(target)
    assert engine.start(ReleaseSpec("", "13.0.0")).status == "PROMOTED"
    previous = engine.ledger.read().stable_history[-2].version
    outcome = engine.rollback()
    assert outcome.status == "ROLLED_BACK" and outcome.exit_code == 0
    assert versions_of_stable(stack) == {previous}
    assert previous in outcome.reason
    # forward again, then a contract migration makes the old version unsafe
    assert engine.start(ReleaseSpec("", "13.1.0")).status == "PROMOTED"
    applied = engine.contract("carol")
    assert applied == ["0003_drop_users_username"]
    with pytest.raises(ReleaseError, match="0003_drop_users_username"):
        engine.rollback(to="13.0.0")
    assert versions_of_stable(stack) == {"13.1.0"}  # refused: nothing changed
    engine.rollback(to="13.0.0", force=True)
    assert versions_of_stable(stack) == {"13.0.0"}


def test_the_local_edge_routes_only_the_business_routes(local_state, stack):
    """nginx stands for the cluster's Ingress: ``/api/`` reaches the instances, the scrape
    endpoint and the API's docs do not (Prometheus scrapes the instances directly)."""
    edge = local_state["nginx_url"]
    admin = {"Authorization": f"Bearer {stack.credentials().admin}"}
    with urllib.request.urlopen(f"{edge}/api/health", timeout=10) as r:
        assert r.status == 200
    for path in ("/metrics", "/docs", "/openapi.json", "/api"):
        request = urllib.request.Request(f"{edge}{path}", headers=admin)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 404, path
    _name, _track, instance = next(iter(app_instances(stack)))
    request = urllib.request.Request(f"{instance}/metrics", headers=admin)
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200, "the instance itself still serves its metrics"
