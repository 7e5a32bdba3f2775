"""The random provider built here (``make toolchain``) serves the pulumi_random SDK: generated
values meet every constraint the program sets, stay the same on the next run, change only when an
input changes, and stay encrypted in the state. No cluster is needed."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from tests.pulumi.conftest import Pulumi
from tests.pulumi.test_toolchain import project

SDK_RANDOM = "4.21.4"  # pulumi_random in requirements.lock: the plugin version it asks for

PROGRAM = """
import pulumi
import pulumi_random as random

config = pulumi.Config()
password = random.RandomPassword(
    "db",
    length=config.require_int("length"),
    special=True,
    override_special="_-",
    min_upper=3,
    min_numeric=2,
)
suffix = random.RandomString("suffix", length=8, special=False, upper=False)
pulumi.export("password", password.result)
pulumi.export("bcrypt", password.bcrypt_hash)
pulumi.export("length", password.length)
pulumi.export("special", password.special)
pulumi.export("overrideSpecial", password.override_special)
pulumi.export("suffix", suffix.result)
"""


def outputs(pulumi: Pulumi, folder: Path) -> dict[str, object]:
    shown = pulumi.run("stack", "output", "--show-secrets", "--json", cwd=folder)
    result: dict[str, object] = json.loads(shown.stdout)
    return result


def test_random_password_inputs_and_outputs_round_trip_and_stay_secret(
    pulumi: Pulumi, tmp_path: Path
) -> None:
    folder = project(tmp_path / "rand", "rand", PROGRAM)
    pulumi.run("stack", "init", "dev", cwd=folder)
    pulumi.run("config", "set", "length", "24", cwd=folder)

    up = pulumi.stack("up", folder, "dev")
    assert "random:index:RandomPassword db created" in up.stdout, up.stdout
    got = outputs(pulumi, folder)
    password = str(got["password"])
    assert len(password) == got["length"] == 24
    assert got["special"] is True and got["overrideSpecial"] == "_-"
    allowed = set(string.ascii_letters + string.digits + "_-")
    assert set(password) <= allowed, password
    assert sum(c.isupper() for c in password) >= 3
    assert sum(c.isdigit() for c in password) >= 2
    assert re.fullmatch(r"\$2[aby]\$\d\d\$.{53}", str(got["bcrypt"])), got["bcrypt"]
    assert re.fullmatch(r"[a-z0-9]{8}", str(got["suffix"])), got["suffix"]
    hidden = json.loads(pulumi.run("stack", "output", "--json", cwd=folder).stdout)
    assert hidden["password"] == hidden["bcrypt"] == "[secret]"
    for path in (p for p in (pulumi.state / "backend").rglob("*") if p.is_file()):
        assert password not in path.read_text(errors="replace"), f"plain password in {path}"

    # the same inputs: nothing changes, the values stay
    pulumi.stack("preview", folder, "dev", "--expect-no-changes")
    pulumi.stack("up", folder, "dev", "--expect-no-changes")
    assert outputs(pulumi, folder)["password"] == password

    # a changed input replaces the password and leaves the other value alone
    pulumi.run("config", "set", "length", "32", cwd=folder)
    pulumi.stack("up", folder, "dev")
    again = outputs(pulumi, folder)
    assert len(str(again["password"])) == 32 and again["password"] != password
    assert again["suffix"] == got["suffix"]

    plugins = json.loads(pulumi.run("plugin", "ls", "--json", cwd=folder).stdout)
    assert ("random", "resource", SDK_RANDOM) in [
        (p["name"], p["kind"], p["version"]) for p in plugins
    ]
    pulumi.stack("destroy", folder, "dev")
    listed = json.loads(pulumi.run("stack", "ls", "--json", cwd=folder).stdout)
    assert [(s["name"], s["resourceCount"]) for s in listed] == [("dev", 0)]
