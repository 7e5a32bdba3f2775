"""The Pulumi engine and the Kubernetes provider built here (``make toolchain``) work offline:
a stack goes up with secret outputs that stay encrypted in the state and comes down again, the
provider is found for the version the Python SDK asks for, and the engine accepts our project
file and both stack files. No cluster is needed."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.pulumi.conftest import Pulumi

SDK_KUBERNETES = "4.34.2"  # pulumi_kubernetes in requirements.lock: the plugin version it asks for


def closed_port() -> int:
    """A loopback port nothing listens on (the API server of a cluster that is not there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig(path: Path, context: str = "offline") -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}
                ],
                "users": [{"name": "nobody", "user": {"token": "none"}}],
                "contexts": [
                    {"name": context, "context": {"cluster": "nowhere", "user": "nobody"}}
                ],
                "current-context": context,
            }
        )
    )
    return path


def project(folder: Path, name: str, program: str) -> Path:
    """A Python project whose runtime is the repository's virtualenv."""
    folder.mkdir(parents=True)
    (folder / "Pulumi.yaml").write_text(
        f"name: {name}\n"
        "runtime:\n"
        "  name: python\n"
        "  options:\n"
        "    toolchain: pip\n"
        f"    virtualenv: {REPO / '.venv'}\n"
    )
    (folder / "__main__.py").write_text(program)
    return folder


SECRETS_PROGRAM = """
import pulumi
import pulumi_kubernetes as k8s

config = pulumi.Config()
provider = k8s.Provider(
    "offline", kubeconfig=config.require("kubeconfig"), context="offline", namespace="smoke"
)
pulumi.export("token", config.require_secret("token"))
pulumi.export("derived", config.require_secret("token").apply(lambda t: "derived-" + t))
pulumi.export("provider", provider.urn)
pulumi.export("plain", "visible")
"""


def test_a_stack_goes_up_with_its_secrets_encrypted_in_the_state_and_comes_down(
    pulumi: Pulumi, tmp_path: Path
) -> None:
    folder = project(tmp_path / "smoke", "smoke", SECRETS_PROGRAM)
    token = secrets.token_urlsafe(24)
    pulumi.run("stack", "init", "dev", "--secrets-provider", "passphrase", cwd=folder)
    pulumi.run("config", "set", "--secret", "token", token, cwd=folder)
    pulumi.run(
        "config", "set", "kubeconfig", kubeconfig(tmp_path / "kubeconfig").read_text(), cwd=folder
    )
    assert token not in (folder / "Pulumi.dev.yaml").read_text()

    up = pulumi.stack("up", folder, "dev")
    assert "created" in up.stdout, up.stdout

    shown = json.loads(pulumi.run("stack", "output", "--show-secrets", "--json", cwd=folder).stdout)
    assert shown["token"] == token
    assert shown["derived"] == f"derived-{token}"
    assert shown["plain"] == "visible"
    assert shown["provider"].endswith("pulumi:providers:kubernetes::offline")
    hidden = json.loads(pulumi.run("stack", "output", "--json", cwd=folder).stdout)
    assert hidden["token"] == hidden["derived"] == "[secret]"

    stored = [p for p in (pulumi.state / "backend").rglob("*") if p.is_file()]
    checkpoint = pulumi.state / "backend" / ".pulumi" / "stacks" / "smoke" / "dev.json"
    assert checkpoint in stored
    for path in stored:
        text = path.read_text(errors="replace")
        assert token not in text, f"the secret is in plain text in {path}"
    state = json.loads(checkpoint.read_text())
    outputs = state["checkpoint"]["latest"]["resources"][0]["outputs"]
    assert "ciphertext" in outputs["token"] and "ciphertext" in outputs["derived"]
    assert outputs["plain"] == "visible"

    pulumi.run("destroy", "--yes", cwd=folder)
    listed = json.loads(pulumi.run("stack", "ls", "--json", cwd=folder).stdout)
    assert [(s["name"], s["resourceCount"]) for s in listed] == [("dev", 0)]


DEFAULT_PROVIDER_PROGRAM = """
import pulumi_kubernetes as k8s

k8s.core.v1.ConfigMap("settings", metadata={"namespace": "smoke"}, data={"a": "b"})
"""


def test_the_kubernetes_provider_serves_the_version_the_python_sdk_asks_for(
    pulumi: Pulumi, tmp_path: Path
) -> None:
    """The program's resources use the default provider, which pulumi_kubernetes asks for at its
    own version; the engine takes the provider on PATH, which answers for any version. The plugin
    cache lists the provider under the version it reports."""
    folder = project(tmp_path / "k8s", "k8s", DEFAULT_PROVIDER_PROGRAM)
    pulumi.run("stack", "init", "dev", cwd=folder)
    pulumi.env["KUBECONFIG"] = str(kubeconfig(tmp_path / "kubeconfig"))
    preview = pulumi.stack("preview", folder, "dev")
    # the provider checked the ConfigMap's inputs (a cluster that is not there is fine in preview)
    assert "kubernetes:core/v1:ConfigMap settings create" in preview.stdout, preview.stdout
    built = pulumi.toolchain.versions()["pulumi-resource-kubernetes"]
    if built != SDK_KUBERNETES:  # the engine says which version served the request
        assert f"expected to have version >={SDK_KUBERNETES}, but has {built}" in preview.stdout

    plugins = json.loads(pulumi.run("plugin", "ls", "--json", cwd=folder).stdout)
    assert ("kubernetes", "resource", built) in [
        (p["name"], p["kind"], p["version"]) for p in plugins
    ], plugins
    schema = pulumi.run("package", "get-schema", f"kubernetes@{built}", cwd=folder)
    # the schema the build generated from the module, stamped with the version
    assert json.loads(schema.stdout)["version"] == built


CONFIG_PROGRAM = """
import pulumi

portal = pulumi.Config("portal")
pulumi.export("environment", portal.get("environment"))
pulumi.export("namespace", portal.get("namespace"))
pulumi.export("app", portal.require_object("app"))
pulumi.export("migrations", portal.get_object("migrations"))
pulumi.export("canary", portal.get_object("canary"))
pulumi.export("sentryDsn", portal.get("sentryDsn"))
"""


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_the_engine_accepts_the_project_file_and_the_stack_file(
    pulumi: Pulumi, tmp_path: Path, stack: str
) -> None:
    """The engine validates Pulumi.yaml and the stack's values against it, applies the
    project's defaults and hands the config to the program (here one that only reads it)."""
    folder = tmp_path / "portal"
    folder.mkdir()
    for name in ("Pulumi.yaml", f"Pulumi.{stack}.yaml"):
        shutil.copy(REPO / name, folder / name)
    (tmp_path / "read_config.py").write_text(CONFIG_PROGRAM)
    pulumi.run("stack", "init", stack, cwd=folder)
    pulumi.stack("up", folder, stack, "--program", str(tmp_path / "read_config.py"))

    got = json.loads(pulumi.run("stack", "output", "--json", cwd=folder).stdout)
    declared = pulumi.run("config", "--json", cwd=folder)
    assert json.loads(declared.stdout)["portal:namespace"]["value"] == f"portal-{stack}"
    assert got["environment"] == stack
    assert got["namespace"] == f"portal-{stack}"
    assert got["app"]["image"] == "ghcr.io/acme/portal"
    assert got["canary"]["steps"], got["canary"]
    # left out of the stack file: the project's defaults, which the model reads as unset
    assert got["sentryDsn"] == ""
    if stack == "staging":
        assert got["migrations"] == {}


RECEIVER_PROGRAM = """
import pulumi

from components.stack_config import load_config
from contract import alertmanager

cfg = load_config()
pulumi.export("alertsKeyIsSecret", pulumi.runtime.is_config_secret("portal:alerts"))
pulumi.export("for", cfg.alerts.for_duration)
pulumi.export("alertmanagerConfig", pulumi.Output.secret(alertmanager.render(cfg)))
"""


def test_a_receiver_credential_set_with_a_path_stays_encrypted_and_reaches_the_program(
    pulumi: Pulumi, tmp_path: Path
) -> None:
    """`pulumi config set --secret --path` writes the credential encrypted inside the
    portal:alerts object (the other keys stay readable), portalctl reads the file knowing only
    that it is set, and the engine hands the program the object decrypted with the key marked
    secret: the program renders Alertmanager's config with it, and it is kept secret."""
    import yaml

    from contract.config import load_stack

    folder = tmp_path / "portal"
    folder.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.staging.yaml"):
        shutil.copy(REPO / name, folder / name)
    url = f"https://hooks.slack.com/services/T0/B0/{secrets.token_urlsafe(18)}"
    pulumi.run("stack", "init", "staging", "--secrets-provider", "passphrase", cwd=folder)
    key = "portal:alerts.receivers.slack.apiUrl"
    pulumi.run("config", "set", "--secret", "--path", key, url, cwd=folder)

    text = (folder / "Pulumi.staging.yaml").read_text()
    assert url not in text
    stored = yaml.safe_load(text)["config"]["portal:alerts"]
    assert set(stored["receivers"]["slack"]["apiUrl"]) == {"secure"}
    assert stored["for"] == "2m" and stored["receivers"]["webhook"]["url"]  # kept as they were
    cfg = load_stack("staging", folder)  # what portalctl sees: set, and encrypted
    assert cfg.alerts.receivers.slack is not None and cfg.alerts.receivers.slack.api_url.encrypted

    (tmp_path / "receivers.py").write_text(RECEIVER_PROGRAM)
    pulumi.stack("up", folder, "staging", "--program", str(tmp_path / "receivers.py"))
    shown = json.loads(pulumi.run("stack", "output", "--show-secrets", "--json", cwd=folder).stdout)
    assert shown["alertsKeyIsSecret"] is True and shown["for"] == "2m"
    rendered = yaml.safe_load(shown["alertmanagerConfig"])
    chat = next(r for r in rendered["receivers"] if r["name"] == "chat")
    assert chat["slack_configs"][0]["api_url"] == url
    hidden = json.loads(pulumi.run("stack", "output", "--json", cwd=folder).stdout)
    assert hidden["alertmanagerConfig"] == "[secret]"
    for path in (p for p in (pulumi.state / "backend").rglob("*") if p.is_file()):
        assert url not in path.read_text(errors="replace"), f"in plain text in {path}"
