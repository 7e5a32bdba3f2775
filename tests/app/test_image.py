"""The container image, checked as text (no Docker engine here), and its dependency pins."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from packaging.markers import Marker

APP = Path(__file__).resolve().parents[2] / "app"
LOCK = APP.parent / "requirements.lock"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (APP / "Dockerfile").read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_base_image_is_a_pinned_python_3_11_slim_release():
    froms = [args for word, args in instructions() if word == "FROM"]
    assert len(froms) == 1
    image = froms[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    assert "latest" not in (APP / "Dockerfile").read_text()


def test_the_service_runs_as_a_numeric_non_root_user():
    steps = instructions()
    users = [(i, args) for i, (word, args) in enumerate(steps) if word == "USER"]
    assert users, "the image must switch to a non-root USER"
    last_index, user = users[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {user}: numeric and not root"
    assert all(word != "RUN" for word, _ in steps[last_index:]), "no RUN after dropping root"


def test_entrypoint_and_command_are_the_contracted_ones():
    steps = dict(instructions())
    assert steps["ENTRYPOINT"] == '["python", "-m", "app"]'
    assert steps["CMD"] == '["serve", "--host", "0.0.0.0", "--port", "8000"]'


def test_only_app_files_are_copied_and_no_healthcheck_without_a_reason():
    for word, args in instructions():
        if word in ("COPY", "ADD"):
            assert word == "COPY" and ".." not in args, args
    text = (APP / "Dockerfile").read_text()
    assert "HEALTHCHECK" not in [w for w, _ in instructions()]
    assert "No HEALTHCHECK, on purpose" in text, "say why there is no HEALTHCHECK"


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[re.sub(r"[-_.]+", "-", name).lower()] = version
    return out


def test_app_requirements_are_pinned_exactly_as_in_the_lock():
    app_pins, lock = _pins(APP / "requirements.txt"), _pins(LOCK)
    for name, version in app_pins.items():
        assert version, f"{name} is not pinned"
        assert lock.get(name) == version, f"{name}=={version} differs from requirements.lock"


def _closure(names: set[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = re.sub(r"[-_.]+", "-", stack.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        for req in md.distribution(name).requires or []:
            spec, _, marker = req.partition(";")
            if marker and not Marker(marker).evaluate({"extra": ""}):
                continue
            match = re.match(r"[A-Za-z0-9_.\-]+", spec.strip())
            assert match, req
            stack.append(match.group(0))
    return seen


def _providers(module: str, top_level: Mapping[str, list[str]]) -> set[str]:
    """The distributions providing ``module`` (namespace packages are split among several)."""
    candidates = set(top_level.get(module.split(".", maxsplit=1)[0], []))
    if len(candidates) <= 1:
        return candidates
    path = module.replace(".", "/")
    owners = {
        name
        for name in candidates
        if any(
            str(f).startswith(path + "/") or str(f) == path + ".py"
            for f in md.distribution(name).files or []
        )
    }
    if owners:
        return owners
    return _providers(module.rpartition(".")[0], top_level) if "." in module else candidates


def test_app_requirements_hold_everything_the_code_imports_and_its_dependencies():
    imported: set[str] = set()
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module)
    third_party = {
        m
        for m in imported
        if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "app"
    }
    top_level = md.packages_distributions()
    needed: set[str] = set()
    for module in third_party:
        providers = _providers(module, top_level)
        assert providers, f"no installed distribution provides {module}"
        needed |= providers
    needed |= {"uvloop", "httptools"}  # uvicorn's fast loop and parser, loaded by name
    required = set(_pins(APP / "requirements.txt"))
    missing = _closure(needed) - required
    assert not missing, f"app/requirements.txt lacks {sorted(missing)} (the image uses --no-deps)"
