"""Alerts reach people, on the real local stack: a real fault fires the alert in Prometheus and
Alertmanager delivers it to the receiver with its runbook; inhibition mutes what follows from
an outage or a rollback; the silence ``portalctl`` sets holds during a release (and a resume)
and is gone after it; release events arrive; a failing Alertmanager never fails a release.

Real Postgres, Redis, app processes, nginx, Prometheus (1 s scrapes and evaluations),
Alertmanager and the stack's own receiver; alert windows of seconds.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contract.config import parse_config, read_stack_values
from rollout.alerting import AlertmanagerClient
from rollout.engine import ReleaseEngine
from rollout.events import Event
from rollout.ledger import Ledger
from rollout.local import webhook
from rollout.local.stack import DEFAULT_STACK_FILE, STACK, LocalStack
from rollout.ports import ReleaseSpec
from rollout.prometheus import Prometheus
from rollout.report import file_reporter
from tests.local_controls import start_redis, stop_redis
from tests.receivers import ScriptedReceiver, alerts_of, poll

from .conftest import FAST, fast_config, fast_stack_file

pytestmark = pytest.mark.slow
PORTALCTL = [sys.executable, "-c", "from rollout.cli import main; main()"]


def prometheus(stack: LocalStack) -> Prometheus:
    return Prometheus(stack.load()["prometheus_url"])


def firing(stack: LocalStack, name: str, **labels: str) -> bool:
    matchers = ",".join(
        [f'alertname="{name}"', 'alertstate="firing"'] + [f'{k}="{v}"' for k, v in labels.items()]
    )
    return bool(prometheus(stack).query(f"ALERTS{{{matchers}}}"))


def manager(stack: LocalStack) -> AlertmanagerClient:
    return AlertmanagerClient(stack.load()["alertmanager_url"])


def held(stack: LocalStack, name: str, **labels: str) -> list[dict]:
    """Alertmanager's alerts of ``name`` (every state)."""
    return alerts_of(iter(manager(stack).alerts()), name, **labels)


def delivered(
    stack: LocalStack, name: str, since: float = 0.0, until: float | None = None, **labels: str
) -> list[dict]:
    """What the stack's receiver got of ``name`` (firing) since ``since`` (until ``until``)."""
    notes = (
        a
        for a in webhook.alerts(stack.notifications)
        if since <= a["received_at"] <= (until or float("inf")) and a["status"] == "firing"
    )
    return alerts_of(notes, name, **labels)


def _ctl(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PORTALCTL, *args, "--local", "--dir", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_canary_answering_errors_pages_with_its_runbook_and_panel(stack, target, load):
    cfg = stack.config()
    stack.set_version_env("20.0.0", {"PORTAL_FAULT_ERROR_RATE": "0.5"})
    target.workloads.deploy_canary(ReleaseSpec("drill", "20.0.0"), 1)
    target.router.set_weight(30)
    try:
        poll(
            lambda: firing(stack, "PortalHighErrorRate", track="canary", version="20.0.0"),
            120,
            "PortalHighErrorRate firing in Prometheus",
        )
        got = poll(
            lambda: delivered(stack, "PortalHighErrorRate", version="20.0.0"),
            60,
            "the page at the receiver",
        )[0]
    finally:
        target.workloads.rollback()
    assert got["receiver"] == "paging"  # critical pages
    labels, notes = got["labels"], got["annotations"]
    assert (labels["severity"], labels["track"]) == ("critical", "canary")
    assert (labels["stack"], labels["namespace"]) == ("local", cfg.namespace)
    assert notes["runbook_url"] == cfg.alerts.runbook_url("high-error-rate")
    assert notes["dashboard_url"].endswith("/d/portal-api-performance?viewPanel=15")
    assert notes["value"].endswith("%") and float(notes["value"].rstrip("%")) > 2
    assert "canary" in notes["summary"] and "20.0.0" in notes["summary"]


def test_an_aborted_release_mutes_the_canary_alerts_it_caused_and_says_why(
    stack, stack_root, target, load
):
    # the canary's alert needs longer than the gates take to roll it back
    with fast_stack_file(stack_root, alerts={"for": "20s"}):
        since = time.time()
        stack.set_version_env("21.0.0", {"PORTAL_FAULT_ERROR_RATE": "0.5"})
        engine = ReleaseEngine(
            fast_config(), target, reporter=file_reporter(stack_root / "reports")
        )
        outcome = engine.start(ReleaseSpec("", "21.0.0"))
        assert outcome.status == "ABORTED"
        rid = outcome.release_id
        event = poll(
            lambda: delivered(stack, "PortalReleaseEvent", since, event="aborted", release=rid),
            60,
            "the aborted event at the receiver",
        )[0]
        notes = event["annotations"]
        assert event["receiver"] == "releases"
        assert notes["runbook_url"] == stack.config().alerts.runbook_url("release-aborted")
        assert notes["gate"] == "metrics / error_rate" and notes["value"].startswith("canary ")
        assert notes["report"] == str(stack_root / "reports" / f"{rid}.html")
        poll(lambda: firing(stack, "PortalReleaseAborted", release=rid), 60, "PortalReleaseAborted")
        poll(
            lambda: firing(stack, "PortalHighErrorRate", track="canary", version="21.0.0"),
            90,
            "the canary's error alert firing in Prometheus",
        )
        aborted = poll(
            lambda: held(stack, "PortalReleaseAborted", release=rid), 30, "PortalReleaseAborted"
        )[0]
        canary = poll(
            lambda: [
                a
                for a in held(stack, "PortalHighErrorRate", version="21.0.0")
                if a["status"]["state"] == "suppressed"
            ],
            30,
            "the canary's error alert muted in Alertmanager",
        )[0]
        assert aborted["fingerprint"] in canary["status"]["inhibitedBy"]
        # the release event carries the gate, values and report: the rule's alert is muted
        assert aborted["status"]["state"] == "suppressed"
        assert aborted["status"]["inhibitedBy"]
        assert not delivered(stack, "PortalHighErrorRate", since, version="21.0.0")
        assert not delivered(stack, "PortalReleaseAborted", since, release=rid)


def test_redis_down_pages_and_mutes_the_cache_hit_rate_alert_it_causes(stack, stack_root, load):
    # every miss counts as a low hit rate, and a firing group is sent again every 2 s
    keys = {"cacheHitRateMin": 1.0, "groupInterval": "1s", "repeatInterval": "2s"}
    with fast_stack_file(stack_root, alerts=keys):
        since = time.time()
        poll(
            lambda: len(delivered(stack, "PortalLowCacheHitRate", since)) >= 2,
            120,
            "the cache hit rate alert sent and sent again while nothing mutes it",
        )
        stop_redis(stack)
        try:
            down = poll(lambda: delivered(stack, "RedisDown", since), 90, "RedisDown delivered")
            assert down[0]["receiver"] == "paging"
            notes = down[0]["annotations"]
            assert notes["runbook_url"] == stack.config().alerts.runbook_url("redis-down")
            redis_down = held(stack, "RedisDown")[0]
            poll(
                lambda: any(
                    redis_down["fingerprint"] in a["status"]["inhibitedBy"]
                    for a in held(stack, "PortalLowCacheHitRate")
                ),
                30,
                "the cache hit rate alert muted by RedisDown",
            )
            muted_at = time.time()
            # RedisDown is sent again twice meanwhile; the muted alert is not
            poll(
                lambda: len(delivered(stack, "RedisDown", muted_at)) >= 2,
                30,
                "RedisDown repeated",
            )
            assert firing(stack, "PortalLowCacheHitRate"), "it still fires in Prometheus"
            assert not delivered(stack, "PortalLowCacheHitRate", muted_at + 1.0)
        finally:
            start_redis(stack)


def test_the_silence_portalctl_sets_holds_during_a_release_and_is_gone_after(
    stack, stack_root, target, load
):
    keys = {"cacheHitRateMin": 1.0, "groupInterval": "1s", "repeatInterval": "2s"}
    steps = [{"weight": 30, "analysis": "8s"}, {"weight": 100, "analysis": "4s"}]
    with fast_stack_file(stack_root, alerts=keys, steps=steps):
        since = time.time()
        poll(lambda: delivered(stack, "PortalLowCacheHitRate", since), 120, "the noisy alert")
        proc = _ctl(
            stack_root,
            "release",
            "start",
            "--version",
            "22.0.0",
            "--silence",
            "PortalLowCacheHitRate",
        )
        ledger = Ledger(target.ledger)

        def silence_id() -> str | None:
            release = ledger.latest()
            if release is None or release.version != "22.0.0" or release.silence is None:
                return None
            return release.silence.id

        sid = poll(silence_id, 60, "the silence recorded in the ledger")
        am = manager(stack)
        assert am.silence_state(sid) == "active"
        matchers = {
            m["name"]: m for m in next(s for s in am.silences() if s["id"] == sid)["matchers"]
        }
        assert matchers["alertname"]["value"] == "PortalLowCacheHitRate"
        assert (matchers["stack"]["value"], matchers["stack"]["isRegex"]) == ("local", False)
        poll(
            lambda: any(
                sid in a["status"]["silencedBy"] for a in held(stack, "PortalLowCacheHitRate")
            ),
            30,
            "the alert silenced",
        )
        silenced_at = time.time()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err + out
        assert f"silence {sid}" in out
        release = ledger.latest()
        assert release.status == "PROMOTED" and release.silence.ended_at is not None
        ended = release.silence.ended_at
        # nothing of the silenced alert reached the receiver while the release ran (long
        # enough for several repeats had the silence not held)...
        assert ended - silenced_at > 6
        assert not delivered(stack, "PortalLowCacheHitRate", silenced_at + 1.0, ended)
        # ...the silence is gone after it, and the alert reaches people again
        assert am.silence_state(sid) == "expired"
        poll(
            lambda: delivered(stack, "PortalLowCacheHitRate", ended),
            30,
            "the alert delivered again once the silence ended",
        )


def test_a_resumed_release_keeps_its_silence_and_ends_it(stack_root, target, stack, load):
    steps = [{"weight": w, "analysis": "2s"} for w in (20, 50, 100)]
    with fast_stack_file(stack_root, steps=steps, leaseTtl="3s"):
        proc = _ctl(
            stack_root, "release", "start", "--version", "23.0.0", "--silence", "PortalHighLatency"
        )
        ledger = Ledger(target.ledger)

        def started() -> bool:
            r = ledger.latest()
            return bool(r and r.version == "23.0.0" and r.step >= 1 and r.silence and r.silence.id)

        poll(started, 60, "the first step passed with the silence set")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = ledger.latest().silence
        assert before.id and before.ends_at
        am = manager(stack)
        assert am.silence_state(before.id) == "active"  # portalctl died; the silence holds
        assert before.ends_at < time.time() + 120  # and ends by itself if nobody resumes
        time.sleep(3.5)  # the dead holder's lease expires
        resumed = _ctl(stack_root, "release", "resume")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err + out
        after = ledger.latest().silence
        assert after.id == before.id and after.ends_at  # kept...
        assert after.ends_at > before.ends_at  # ...and moved on
        assert after.ended_at is not None and am.silence_state(after.id) == "expired"


def test_release_events_arrive_in_order_with_their_report(stack, target, load):
    since = time.time()
    outcome = ReleaseEngine(fast_config(), target).start(ReleaseSpec("", "24.0.0"))
    assert outcome.status == "PROMOTED", outcome.reason
    rid = outcome.release_id

    def events() -> list[str]:
        got = delivered(stack, "PortalReleaseEvent", since, release=rid)
        return [a["labels"]["event"] for a in sorted(got, key=lambda a: a["received_at"])]

    poll(lambda: "promoted" in events(), 60, "the promoted event")
    assert events() == ["started", "step_passed", "step_passed", "promoted"]
    promoted = delivered(stack, "PortalReleaseEvent", since, release=rid, event="promoted")[0]
    assert promoted["labels"]["version"] == "24.0.0" and promoted["receiver"] == "releases"


def test_a_stack_with_release_events_off_posts_none_and_still_silences(stack, target, load):
    values = read_stack_values(DEFAULT_STACK_FILE)
    values["canary"] = {**values["canary"], **FAST}
    values["alerts"] = {**values["alerts"], "releaseEvents": False}
    engine = ReleaseEngine(parse_config(values, STACK), target)
    outcome = engine.start(ReleaseSpec("", "27.0.0"), silence=["PortalHighLatency"])
    assert outcome.status == "PROMOTED", outcome.reason
    rid = outcome.release_id
    # events are posted before a run returns (it waits for them): none was
    assert not held(stack, "PortalReleaseEvent", release=rid)
    assert not delivered(stack, "PortalReleaseEvent", release=rid)
    silence = engine.ledger.find(rid).silence
    assert silence.id and silence.ended_at is not None  # planned-work silences are not events
    assert manager(stack).silence_state(silence.id) == "expired"


def test_a_paused_release_says_it_waits_for_a_human_and_lifts_its_silence(stack, target, load):
    since = time.time()
    steps = [{"weight": 30, "analysis": "3s"}, {"pause": True}, {"weight": 100, "analysis": "3s"}]
    engine = ReleaseEngine(fast_config(steps=steps), target)
    outcome = engine.start(ReleaseSpec("", "26.0.0"), silence=["PortalHighLatency"])
    assert outcome.status == "HELD"
    rid = outcome.release_id
    try:
        event = poll(
            lambda: delivered(stack, "PortalReleaseEvent", since, event="held", release=rid),
            60,
            "the held event",
        )[0]
        assert event["labels"]["severity"] == "warning"
        notes = event["annotations"]
        assert "waits for a human" in notes["summary"] and "step 2/3" in notes["summary"]
        assert "portalctl release promote|abort|resume --stack local" in notes["description"]
        # nobody drives a paused release: its silence is lifted (promote silences nothing)
        silence = engine.ledger.find(rid).silence
        assert silence.ended_at is not None
        assert manager(stack).silence_state(str(silence.id)) == "expired"
    finally:
        engine.request("promote", "test")


@pytest.mark.parametrize(
    ("failure", "version"), [("unreachable", "25.0.1"), ("answers 500", "25.0.2")]
)
def test_a_failing_alertmanager_never_fails_a_release(target, load, failure, version):
    receiver = ScriptedReceiver(then=500).start()
    url = receiver.url if failure == "answers 500" else "http://127.0.0.1:9"
    broken = dataclasses.replace(target, alerting=AlertmanagerClient(url, backoff_s=0.05))
    said: list[str] = []

    def listen(event: Event) -> None:
        said.append(event.message)

    try:
        engine = ReleaseEngine(fast_config(), broken, events=listen)
        outcome = engine.start(ReleaseSpec("", version), silence=["RedisDown"])
    finally:
        receiver.stop()
    assert outcome.status == "PROMOTED", outcome.reason
    not_sent = [m for m in said if m.startswith("release notification")]
    assert len(not_sent) == 4, said  # started, two steps, promoted: each given up on, and said
    assert all("after 3 attempts" in m for m in not_sent)
    release = engine.ledger.find(outcome.release_id)
    assert release.silence.id is None and "not set" in str(release.silence.detail)
    if failure == "answers 500":
        posts = receiver.requests("/api/v2/alerts")
        assert len(posts) == 4 * 3  # every notification tried three times
