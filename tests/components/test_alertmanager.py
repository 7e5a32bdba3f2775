"""Alertmanager's configuration, checked by amtool itself: it loads, and every alert's labels
route to the receiver meant for them. The program keeps the receivers' credentials in a Secret
only; a bad receiver config or a credential in plain text is refused with one line naming the
key."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.mockrun import run_program
from contract import alertmanager, alerts, prometheus_config
from contract.config import ConfigError, load_stack, parse_config, read_stack_values
from contract.panels import ALERT_PANELS
from tests.conftest import REPO

AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
SLACK_URL = "https://hooks.slack.com/services/T000/B000/s3cr3t-slack-token"
ROUTING_KEY = "r0ut1ngk3y-s3cr3t-0000000000000000"
SMTP_PASSWORD = "smtp-s3cr3t-password"
TOKEN = "webhook-s3cr3t-bearer"
CREDENTIALS = (SLACK_URL, ROUTING_KEY, SMTP_PASSWORD, TOKEN)

EVERY_RECEIVER = {
    "webhook": {"url": "http://alert-relay.ops.svc:8080/portal", "bearerToken": TOKEN},
    "slack": {"apiUrl": SLACK_URL, "channel": "#portal-alerts"},
    "pagerduty": {"routingKey": ROUTING_KEY},
    "email": {
        "to": "oncall@example.com, platform@example.com",
        "from": "alertmanager@example.com",
        "smarthost": "smtp.example.com:587",
        "authUsername": "alertmanager",
        "authPassword": SMTP_PASSWORD,
    },
}


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


def values(stack: str, receivers: dict | None = None) -> dict:
    v = read_stack_values(REPO / f"Pulumi.{stack}.yaml")
    if receivers is not None:
        v["alerts"] = {**v.get("alerts", {}), "receivers": copy.deepcopy(receivers)}
    return v


def write(folder: Path, cfg) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in alertmanager.files(cfg).items():
        (folder / name).write_text(text)
    return folder / alertmanager.CONFIG_FILE


VARIANTS = {
    "as shipped": None,
    "every receiver": EVERY_RECEIVER,
    "webhook only": {"webhook": {"url": "http://relay:8080/"}},
    "slack only": {"slack": {"apiUrl": SLACK_URL}},
    "no receiver": {},
}


@pytest.mark.parametrize("stack", ["staging", "prod"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_amtool_check_config_passes_on_the_rendered_config(tmp_path, stack, variant):
    cfg = parse_config(values(stack, VARIANTS[variant]), stack)
    path = write(tmp_path, cfg)
    result = amtool("check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout and "3 inhibit rules" in result.stdout


def test_the_shipped_stacks_name_their_receivers():
    staging, prod = (load_stack(s, REPO) for s in ("staging", "prod"))
    assert prod.alerts.receivers.email is not None
    assert staging.alerts.receivers.webhook is not None


def route(config: Path, labels: dict[str, str]) -> str:
    args = [f"{k}={v}" for k, v in labels.items()]
    result = amtool("config", "routes", "test", f"--config.file={config}", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_every_alert_routes_to_the_receiver_of_its_severity(tmp_path, stack):
    cfg = parse_config(values(stack, EVERY_RECEIVER), stack)
    config = write(tmp_path, cfg)
    rules = {r["alert"]: r for g in alerts.rule_groups(cfg)["groups"] for r in g["rules"]}
    assert set(rules) == set(alerts.RUNBOOKS)
    for name, rule in rules.items():
        # what Prometheus sends: the rule's labels and the external labels of the stack
        labels = {
            "alertname": name,
            **rule["labels"],
            "stack": cfg.stack,
            "environment": cfg.environment,
            "namespace": cfg.namespace,
        }
        want = alertmanager.PAGING if rule["labels"]["severity"] == "critical" else "chat"
        assert route(config, labels) == want, name
    for event in alertmanager.EVENTS:
        severity = "warning" if event in ("aborted", "held") else "info"
        labels = {
            "alertname": alertmanager.RELEASE_EVENT,
            "event": event,
            "severity": severity,
            "stack": cfg.stack,
            "release": "r1",
        }
        assert route(config, labels) == alertmanager.RELEASES, event
    # an alert of no known severity still reaches people
    assert route(config, {"alertname": "Unknown", "severity": "info"}) == alertmanager.CHAT


def receivers_of(cfg) -> dict[str, dict]:
    return {r["name"]: r for r in alertmanager.build(cfg)["receivers"]}


def test_critical_pages_warnings_chat_and_the_webhook_gets_all():
    cfg = parse_config(values("prod", EVERY_RECEIVER), "prod")
    got = receivers_of(cfg)
    assert set(got["paging"]) == {"name", "pagerduty_configs", "email_configs", "webhook_configs"}
    assert set(got["chat"]) == {"name", "slack_configs", "webhook_configs"}
    assert set(got["releases"]) == set(got["chat"])
    # release events are sent once: never a "resolved" message for them
    assert all(not c["send_resolved"] for c in got["releases"]["slack_configs"])
    assert all(c["send_resolved"] for c in got["chat"]["slack_configs"])
    pd = got["paging"]["pagerduty_configs"][0]
    assert pd["routing_key"] == ROUTING_KEY
    assert {link["text"] for link in pd["links"]} == {"Runbook", "Grafana panel"}


def test_without_a_pager_critical_alerts_go_to_slack_and_without_slack_warnings_to_email():
    slack_only = receivers_of(
        parse_config(values("prod", {"slack": {"apiUrl": SLACK_URL}}), "prod")
    )
    assert "slack_configs" in slack_only["paging"]
    mail = {"email": EVERY_RECEIVER["email"]}
    email_only = receivers_of(parse_config(values("prod", mail), "prod"))
    assert "email_configs" in email_only["chat"] and "email_configs" in email_only["paging"]
    nothing = receivers_of(parse_config(values("prod", {}), "prod"))
    assert all(set(r) == {"name"} for r in nothing.values())


def test_every_alert_carries_its_value_runbook_and_the_grafana_panel(configs):
    for cfg in configs.values():
        for group in alerts.rule_groups(cfg)["groups"]:
            for rule in group["rules"]:
                ann = rule["annotations"]
                assert "$value" in ann["value"], rule["alert"]
                panel = ALERT_PANELS[rule["alert"]]
                assert ann["dashboard_url"] == f"{cfg.alerts.grafana_url}{panel.path}"


def test_the_panels_alerts_link_exist_on_the_dashboards():
    from components.dashboards import load_dashboards

    titles = {}
    for dashboard in load_dashboards().values():
        stack = list(dashboard["panels"])
        while stack:
            panel = stack.pop()
            stack.extend(panel.get("panels", []))
            titles[(dashboard["uid"], panel["id"])] = panel["title"]
    for name, panel in ALERT_PANELS.items():
        assert titles.get((panel.dashboard_uid, panel.panel_id)) == panel.title, name


def test_prometheus_sends_its_alerts_to_alertmanager(configs):
    for cfg in configs.values():
        conf = prometheus_config.build(cfg, prometheus_config.kubernetes_targets(cfg))
        target = f"{cfg.names.alertmanager}:{cfg.names.alertmanager_port}"
        managers = conf["alerting"]["alertmanagers"]
        assert managers == [{"api_version": "v2", "static_configs": [{"targets": [target]}]}]
        assert conf["global"]["external_labels"]["namespace"] == cfg.namespace


# --------------------------------------------------------------------------- the program


def secret_values(stack: str) -> tuple[dict, dict]:
    """The stack's values with every receiver; ``alerts`` handed over as a secret key, as the
    engine does after ``pulumi config set --secret --path``."""
    v = values(stack, EVERY_RECEIVER)
    alerts_value = v.pop("alerts")
    return v, {"alerts": alerts_value}


@pytest.fixture(scope="module")
def with_receivers():
    plain, secret = secret_values("prod")
    return run_program("prod", plain, secret)


def test_alertmanager_runs_pinned_with_its_config_in_a_secret(with_receivers):
    run = with_receivers
    secret = run.get("Secret", "alertmanager-config")
    assert "/stringData" in secret.secret_paths or any(
        p.startswith("/stringData") for p in secret.secret_paths
    )
    data = secret.manifest()["stringData"]
    config = yaml.safe_load(data[alertmanager.CONFIG_FILE])
    assert {r["name"] for r in config["receivers"]} == set(alertmanager.RECEIVERS)
    assert data[alertmanager.TEMPLATE_FILE] == alertmanager.TEMPLATES
    deployment = run.get("Deployment", "alertmanager").manifest()
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "prom/alertmanager:v0.27.0"
    assert container["readinessProbe"] and container["livenessProbe"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["secret"]["secretName"] == "alertmanager-config"
    service = run.get("Service", "alertmanager").manifest()
    assert [p["port"] for p in service["spec"]["ports"]] == [9093]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    prometheus = yaml.safe_load(
        run.get("ConfigMap", "prometheus-config").manifest()["data"]["prometheus.yml"]
    )
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_the_receivers_credentials_appear_only_in_the_secret(with_receivers):
    run = with_receivers
    holders = []
    for c in run.resources:
        text = json.dumps(c.inputs)
        if any(cred in text for cred in CREDENTIALS):
            holders.append((c.type, c.name))
            assert c.secret_paths, f"{c.type} {c.name} carries a credential in plain text"
    assert holders == [("kubernetes:core/v1:Secret", "observability-alertmanager-config")]
    text = json.dumps(run.outputs)
    assert not any(cred in text for cred in CREDENTIALS)


def test_a_changed_credential_rolls_the_alertmanager_pod(with_receivers):
    plain, secret = secret_values("prod")
    secret["alerts"]["receivers"]["slack"]["apiUrl"] = SLACK_URL + "-rotated"
    other = run_program("prod", plain, secret)

    def digest(run):
        template = run.get("Deployment", "alertmanager").manifest()["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/config"]

    assert digest(other) != digest(with_receivers)
    # a digest of credentials is kept as secret as they are (Pulumi marks the spec holding it)
    assert other.get("Deployment", "alertmanager").secret_paths == ["/spec"]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("receivers", "key", "words"),
    [
        ({"teams": {"url": "https://x"}}, "portal:alerts.receivers.teams", "unknown key"),
        ({"webhook": {}}, "portal:alerts.receivers.webhook.url", "required"),
        ({"webhook": {"url": "relay:8080"}}, "portal:alerts.receivers.webhook.url", "http(s) URL"),
        ({"slack": {"channel": "#x"}}, "portal:alerts.receivers.slack.apiUrl", "required"),
        ({"pagerduty": {}}, "portal:alerts.receivers.pagerduty.routingKey", "required"),
        (
            {"email": {"to": "a@b.co", "from": "c@d.co"}},
            "portal:alerts.receivers.email.smarthost",
            "required",
        ),
        ({"slack": {"apiUrl": 42}}, "portal:alerts.receivers.slack.apiUrl", "secret"),
    ],
)
def test_a_bad_receiver_is_refused_with_one_line_naming_the_key(receivers, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(values("prod", receivers), "prod")
    message = str(info.value)
    assert info.value.key == key, message
    assert words in message and "\n" not in message


def test_a_bad_receiver_stops_the_program_before_any_resource():
    plain, secret = secret_values("prod")
    secret["alerts"]["receivers"]["webhook"] = {"bearerToken": TOKEN}
    with pytest.raises(Exception, match=r"portal:alerts\.receivers\.webhook\.url") as info:
        run_program("prod", plain, secret)
    run = getattr(info.value, "run", None)
    assert run is None or not run.resources


def test_a_credential_in_plain_text_is_refused_naming_the_key_and_never_shown(tmp_path):
    doc = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())
    doc["config"]["portal:alerts"]["receivers"] = {"slack": {"apiUrl": SLACK_URL}}
    (tmp_path / "Pulumi.prod.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_stack("prod", tmp_path)
    message = str(info.value)
    assert info.value.key == "portal:alerts.receivers.slack.apiUrl"
    assert "pulumi config set --secret --path" in message and SLACK_URL not in message
    # the program: an alerts key the engine did not mark secret holds it in plain text
    plain = values("prod", {"slack": {"apiUrl": SLACK_URL}})
    with pytest.raises(Exception, match=r"portal:alerts\.receivers\.slack\.apiUrl") as raised:
        run_program("prod", plain, {})
    assert SLACK_URL not in str(raised.value)


def test_an_encrypted_credential_is_known_to_be_set_and_never_dumped(tmp_path):
    doc = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())
    doc["config"]["portal:alerts"]["receivers"] = {"slack": {"apiUrl": {"secure": "v1:abc"}}}
    (tmp_path / "Pulumi.prod.yaml").write_text(yaml.safe_dump(doc))
    cfg = load_stack("prod", tmp_path)
    assert cfg.alerts.receivers.slack.api_url.encrypted
    assert cfg.model_dump()["alerts"]["receivers"]["slack"]["api_url"] == "[secret]"
    with pytest.raises(ValueError, match="encrypted"):
        alertmanager.render(cfg)
    decrypted = parse_config(values("prod", {"slack": {"apiUrl": SLACK_URL}}), "prod")
    assert SLACK_URL not in repr(decrypted) and SLACK_URL not in decrypted.model_dump_json()
