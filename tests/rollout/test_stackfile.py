"""Promotion records the new version in the stack file, keeping the operator's comments."""

from __future__ import annotations

import shutil

import pytest

from contract.config import load_stack
from rollout.stackfile import StackFileError, set_app_version
from tests.conftest import REPO


def test_the_promoted_version_is_written_and_everything_else_kept(tmp_path):
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    path = tmp_path / "Pulumi.prod.yaml"
    before = path.read_text()
    set_app_version(path, "1.4.0", "ghcr.io/acme/portal:1.4.0")
    after = path.read_text()
    assert load_stack("prod", tmp_path).app.version == "1.4.0"
    assert load_stack("prod", tmp_path).app.image == "ghcr.io/acme/portal"
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert changed == [("    version: 1.0.0", "    version: 1.4.0")]


def test_a_stack_file_without_the_app_mapping_is_refused(tmp_path):
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text("config:\n  portal:namespace: x\n")
    with pytest.raises(StackFileError, match="portal:app"):
        set_app_version(path, "2", None)
    assert path.read_text() == "config:\n  portal:namespace: x\n"
