"""portalctl refuses bad input with one line naming the fault, exit 2, and changes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from tests.conftest import REPO

runner = CliRunner()


@pytest.fixture
def project(tmp_path):
    for name in ("Pulumi.yaml", "Pulumi.staging.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def run(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout + (result.stderr if result.stderr_bytes else "")


def write_steps(project, steps_yaml):
    text = (project / "Pulumi.staging.yaml").read_text()
    head, _, tail = text.partition("    steps:\n")
    rest = tail.split("    interval:", 1)[1]
    (project / "Pulumi.bad.yaml").write_text(
        head + "    steps:\n" + steps_yaml + "    interval:" + rest
    )


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            "      - weight: 50\n        analysis: 2m\n      - weight: 20\n        analysis: 2m\n",
            "portal:canary.steps",
        ),
        ("      - weight: 120\n        analysis: 2m\n", "portal:canary.steps"),
        ("      - weight: 10\n        analysis: soon\n", "analysis"),
    ],
)
def test_impossible_steps_are_refused_before_anything_changes(project, steps, message):
    write_steps(project, steps)
    before = sorted(p.name for p in project.rglob("*"))
    code, out = run(
        "release",
        "start",
        "--stack",
        "bad",
        "--image",
        "ghcr.io/acme/portal:2.0.0",
        "--project-dir",
        str(project),
    )
    assert code == 2, out
    assert message in out and "invalid stack config" in out
    assert len(out.strip().splitlines()) == 1
    assert sorted(p.name for p in project.rglob("*")) == before


def test_a_malformed_stack_file_is_refused(project):
    (project / "Pulumi.broken.yaml").write_text("config:\n  portal:app: [unclosed\n")
    code, out = run(
        "release", "start", "--stack", "broken", "--image", "r/p:1", "--project-dir", str(project)
    )
    assert code == 2 and "Pulumi.broken.yaml" in out


def test_an_unknown_stack_is_refused(project):
    code, out = run("release", "status", "--stack", "nope", "--project-dir", str(project))
    assert code == 2 and "Pulumi.nope.yaml" in out and "does not exist" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stack", "staging", "--image", "ghcr.io/acme/portal"], "not an image reference"),
        (["--stack", "staging"], "--image IMAGE:TAG is required"),
        (["--local"], "--local needs --version"),
        (["--local", "--version", "2", "--stack", "staging"], "exclusive"),
        (["--local", "--version", "2", "--env", "lower=1"], "--env"),
        (
            ["--stack", "staging", "--image", "r/p:2", "--env", "PORTAL_FAULT_ERROR_RATE=1"],
            "local drills",
        ),
        (
            ["--stack", "staging", "--image", "r/p:2", "--silence", "RedisDwn"],
            "--silence 'RedisDwn': not an alert of the stack (known: PortalHighErrorRate,",
        ),
        (
            ["--stack", "staging", "--image", "r/p:2", "--silence", "RedisDown", "--no-silence"],
            "exclusive",
        ),
    ],
)
def test_bad_release_arguments_are_refused(project, args, message):
    code, out = run("release", "start", "--project-dir", str(project), *args)
    assert code == 2, out
    assert message in out
    assert len(out.strip().splitlines()) == 1


def test_local_commands_without_a_local_stack_say_how_to_start_one(tmp_path):
    code, out = run("release", "status", "--local", "--dir", str(tmp_path / "none"))
    assert code == 2 and "portalctl local up" in out


STATE = {
    "ports": {"postgres": 1, "redis": 2, "prometheus": 3, "nginx": 4, "pushgateway": 5},
    "weight": 0,
    "stable_version": "1.0.0",
    "canary_version": None,
    "instances": [
        {"name": "stable-1", "track": "stable", "version": "1.0.0", "port": 8001, "pid": None}
    ],
    "prometheus_url": "http://127.0.0.1:3",
    "pushgateway_url": "http://127.0.0.1:5",
    "database_url": "postgresql://postgres@127.0.0.1:1/portal",
}


def local_dir(tmp_path, state=None, ledger=None):
    """A local stack's directory (its servers not running): ``state.json`` and a ledger."""
    root = tmp_path / "local"
    root.mkdir()
    (root / "state.json").write_text(state if state is not None else json.dumps(STATE))
    if ledger is not None:
        (root / "ledger.json").write_text(ledger)
    return root


def files(root):
    """What the directory holds (the ledger's lock file, empty, is not state)."""
    return {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix != ".lock"}


@pytest.mark.parametrize(
    ("ledger", "message"),
    [
        ("[]", "expected a JSON object, found an array"),
        ('{"_revision": "x"}', "_revision 'x' is not a revision number"),
        ('{"schema_version": 3, "releases": [{"id": "r"}]}', "releases[0].version: Field required"),
    ],
)
def test_a_malformed_local_ledger_is_refused_in_one_line_and_nothing_changes(
    tmp_path, ledger, message
):
    root = local_dir(tmp_path, ledger=ledger)
    before = files(root)
    for args in (
        ("release", "status"),
        ("release", "start", "--version", "2.0.0", "--env", "PORTAL_FAULT_ERROR_RATE=0.2"),
        ("release", "resume"),
        ("rollback",),
    ):
        code, out = run(*args, "--local", "--dir", str(root))
        assert code == 2, (args, out)
        assert len(out.strip().splitlines()) == 1, out
        assert f"ledger {root / 'ledger.json'}: {message}" in out, out
    assert files(root) == before


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "Input should be a valid dictionary"),
        (json.dumps({**STATE, "weight": "half"}), "weight: Input should be a valid integer"),
        (
            json.dumps({**STATE, "instances": [{"name": "x", "track": "green"}]}),
            "instances[0].track: Input should be 'stable' or 'canary'",
        ),
    ],
)
def test_a_malformed_local_stack_state_is_refused_in_one_line_and_nothing_changes(
    tmp_path, state, message
):
    root = local_dir(tmp_path, state=state)
    before = files(root)
    for args in (("release", "status", "--local", "--dir"), ("local", "up", "--dir")):
        code, out = run(*args, str(root))
        assert code == 2, (args, out)
        assert len(out.strip().splitlines()) == 1, out
        assert f"local stack state {root / 'state.json'}" in out and message in out, out
    assert files(root) == before


def test_a_stack_file_a_promotion_could_not_update_is_refused_before_the_release(project):
    (project / "Pulumi.staging.yaml").write_text(
        (project / "Pulumi.staging.yaml").read_text().replace("portal:app:", "portal:appx:")
    )
    (project / "Pulumi.odd.yaml").write_text("config: [1, 2]\n")
    code, out = run("release", "status", "--stack", "odd", "--project-dir", str(project))
    assert code == 2 and "Pulumi.odd.yaml" in out and len(out.strip().splitlines()) == 1
