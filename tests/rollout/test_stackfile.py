"""Promotion records the new version in the stack file, keeping the operator's comments."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

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


def _promote(path: str, version: str) -> None:
    set_app_version(Path(path), version, f"ghcr.io/acme/portal:{version}")


def test_concurrent_rewrites_leave_a_whole_stack_file_with_its_mode_and_no_temporary(tmp_path):
    for name in ("Pulumi.yaml", "Pulumi.prod.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    path = tmp_path / "Pulumi.prod.yaml"
    path.chmod(0o640)
    writers = [
        multiprocessing.Process(target=_promote, args=(str(path), f"2.{i}.0")) for i in range(6)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert all(w.exitcode == 0 for w in writers)
    cfg = load_stack("prod", tmp_path)
    assert cfg.app.version in {f"2.{i}.0" for i in range(6)}
    assert cfg.app.image == "ghcr.io/acme/portal"
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".Pulumi.prod.yaml.lock",
        "Pulumi.prod.yaml",
        "Pulumi.yaml",
    ]


def test_a_stack_file_that_is_not_yaml_is_refused_in_one_line(tmp_path):
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text("config:\n  portal:app: [unclosed\n")
    with pytest.raises(StackFileError) as info:
        set_app_version(path, "2", None)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
