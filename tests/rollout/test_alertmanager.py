"""A real Alertmanager (Debian's) with the stack's configuration, delivering to receivers the
test runs: a failing receiver is retried, a hanging one is tried again, PagerDuty and Slack get
the summary, the value, the runbook and the panel; ``portalctl``'s client creates, moves and
ends silences."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contract import alertmanager
from contract.config import StackConfig, parse_config, read_stack_values
from rollout.alerting import AlertmanagerClient
from rollout.local.alerting import AlertmanagerServer
from rollout.local.processes import free_port
from rollout.local.stack import DEFAULT_STACK_FILE, STACK
from rollout.ports import Notification, SilenceSpec
from tests.receivers import ScriptedReceiver, poll

FAST = {"groupWait": "0s", "groupInterval": "1s", "repeatInterval": "1h"}


def config(receivers: dict[str, Any]) -> StackConfig:
    values = read_stack_values(DEFAULT_STACK_FILE)
    values["alerts"] = {**values["alerts"], **FAST, "receivers": receivers}
    return parse_config(values, STACK)


@pytest.fixture
def start_alertmanager(server_root: Path) -> Iterator[Callable[[StackConfig], AlertmanagerClient]]:
    started: list[AlertmanagerServer] = []

    def start(cfg: StackConfig) -> AlertmanagerClient:
        folder = server_root / f"am-{free_port()}"
        server = AlertmanagerServer(folder, free_port(), alertmanager.files(cfg)).start()
        started.append(server)
        return AlertmanagerClient(server.url)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def receiver() -> Iterator[Callable[..., ScriptedReceiver]]:
    running: list[ScriptedReceiver] = []

    def start(*script: int | str) -> ScriptedReceiver:
        r = ScriptedReceiver(script).start()
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()


def alert(name: str, severity: str, **labels: str) -> Notification:
    now = time.time()
    return Notification(
        {
            "alertname": name,
            "severity": severity,
            "stack": "local",
            "namespace": "portal-local",
            **labels,
        },
        {
            "summary": f"{name} summary",
            "description": f"{name} happened (value 42%).",
            "value": "42%",
            "runbook_url": f"https://runbooks.example.com/{name}.md",
            "dashboard_url": "http://localhost:3000/d/portal-api-performance?viewPanel=15",
        },
        now,
        now + 600,
    )


def alert_names(body: Any) -> list[str]:
    return [a["labels"]["alertname"] for a in body["alerts"]]


def test_a_receiver_answering_500_is_retried_until_it_takes_the_alert(start_alertmanager, receiver):
    hook = receiver(500, 500)
    am = start_alertmanager(config({"webhook": {"url": f"{hook.url}/hook"}}))
    am.notify([alert("PortalHighErrorRate", "critical")])
    poll(lambda: any(r.answered == 200 for r in hook.requests()), 60, "the alert taken")
    tries = hook.requests()
    assert [r.answered for r in tries[:3]] == [500, 500, 200]
    assert all(alert_names(r.body) == ["PortalHighErrorRate"] for r in tries)
    assert len({r.body["groupKey"] for r in tries}) == 1  # one notification, retried


def test_a_receiver_that_does_not_answer_is_tried_again(start_alertmanager, receiver):
    hook = receiver("hang:20")
    am = start_alertmanager(config({"webhook": {"url": f"{hook.url}/hook"}}))
    am.notify([alert("RedisDown", "critical")])
    poll(lambda: any(r.answered == 200 for r in hook.requests()), 90, "the alert taken")
    first, *_ = hook.requests()
    taken = next(r for r in hook.requests() if r.answered == 200)
    assert taken is not first and alert_names(taken.body) == ["RedisDown"]


def test_pagerduty_gets_critical_and_slack_gets_warnings_with_runbook_value_and_panel(
    start_alertmanager, receiver
):
    pagerduty, slack = receiver(), receiver()
    am = start_alertmanager(
        config(
            {
                "pagerduty": {"routingKey": "key-123", "url": f"{pagerduty.url}/v2/enqueue"},
                "slack": {"apiUrl": f"{slack.url}/services/x", "channel": "#portal"},
            }
        )
    )
    am.notify([alert("RedisDown", "critical"), alert("PortalHighLatency", "warning")])
    page = poll(pagerduty.requests, 60, "the page")[0].body
    assert page["routing_key"] == "key-123" and page["event_action"] == "trigger"
    assert page["payload"]["severity"] == "critical"
    assert "RedisDown" in page["payload"]["summary"]
    details = page["payload"]["custom_details"]
    assert details["value"] == "42%"
    assert details["runbook_url"] == "https://runbooks.example.com/RedisDown.md"
    assert {link["text"]: link["href"] for link in page["links"]} == {
        "Runbook": "https://runbooks.example.com/RedisDown.md",
        "Grafana panel": "http://localhost:3000/d/portal-api-performance?viewPanel=15",
    }
    message = poll(slack.requests, 60, "the Slack message")[0].body
    assert message["channel"] == "#portal"
    attachment = message["attachments"][0]
    assert "PortalHighLatency" in attachment["title"]
    assert attachment["title_link"].endswith("viewPanel=15")
    text = attachment["text"]
    assert "PortalHighLatency summary" in text and "Value: 42%" in text
    assert "Runbook: https://runbooks.example.com/PortalHighLatency.md" in text
    assert len(pagerduty.requests()) == 1  # the warning paged nobody


def test_a_release_event_goes_to_chat_once_with_its_release(start_alertmanager, receiver):
    slack = receiver()
    am = start_alertmanager(config({"slack": {"apiUrl": f"{slack.url}/services/x"}}))
    event = alert(
        alertmanager.RELEASE_EVENT, "warning", event="aborted", release="r-1", version="3.0.0"
    )
    am.notify([event])
    text = poll(slack.requests, 60, "the event in Slack")[0].body["attachments"][0]
    assert "aborted" in text["title"] and "r-1" in text["title"]
    assert "Release: r-1 (3.0.0)" in text["text"]


def test_silences_are_created_moved_in_place_and_ended(start_alertmanager):
    am = start_alertmanager(config({}))
    now = time.time()
    spec = SilenceSpec(("RedisDown", "PortalHighLatency"), "local", now, now + 60, "me", "test")
    sid = am.silence(spec)
    assert am.silence_state(sid) == "active"
    moved = am.silence(
        SilenceSpec(spec.alerts, spec.stack, time.time(), now + 600, "me", "test", sid)
    )
    assert moved == sid  # the same silence, with a later end
    listed = next(s for s in am.silences() if s["id"] == sid)
    assert listed["endsAt"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(now + 600)))
    am.notify([alert("RedisDown", "critical")])
    muted = poll(am.alerts, 30, "the alert held")[0]
    assert muted["status"]["silencedBy"] == [sid]
    am.expire(sid)
    assert am.silence_state(sid) == "expired"
    am.expire(sid)  # twice is fine
    again = am.silence(SilenceSpec(spec.alerts, "local", time.time(), now + 60, "me", "t", sid))
    assert again != sid and am.silence_state(again) == "active"  # an ended one is replaced
    assert am.silence_state("00000000-0000-0000-0000-000000000000") is None
