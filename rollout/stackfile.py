"""Record a promoted version in ``Pulumi.<stack>.yaml`` so the next ``pulumi up`` agrees.

Round-trip YAML: comments, key order and the other keys stay as they were. The rewrite holds a
lock (``.<file>.lock`` beside it: two ``portalctl`` never interleave their read-change-write) and
replaces the file durably (``rollout.durable``), so a crash leaves the old or the new file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from filelock import FileLock
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from contract.config import NAMESPACE
from rollout.durable import replace_file


class StackFileError(RuntimeError):
    """The stack file cannot be read, or has no ``portal:app`` mapping to record a version in."""


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the style of the stack files
    return yaml


def _load(path: Path) -> tuple[Any, Any]:
    """The round-trip document and its ``portal:app`` mapping; ``StackFileError`` otherwise."""
    try:
        doc = _yaml().load(path.read_text())
    except OSError as exc:
        raise StackFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StackFileError(f"{path} is not valid YAML: {first}") from None
    config = doc.get("config") if isinstance(doc, dict) else None
    app = config.get(f"{NAMESPACE}:app") if isinstance(config, dict) else None
    if not hasattr(app, "__setitem__"):
        raise StackFileError(f"{path} has no {NAMESPACE}:app mapping to record the version in")
    return doc, app


def check_stack_file(path: Path) -> None:
    """Refuse now (before a release changes anything) a stack file a promotion could not update."""
    _load(path)


def set_app_version(path: Path, version: str, image: str | None = None) -> None:
    """Set ``portal:app.version`` (and ``image``'s repository when given with a tag)."""
    path = Path(path)
    with FileLock(path.with_name(f".{path.name}.lock")):
        doc, app = _load(path)
        if app.get("version") == version and (not image or app.get("image") == _repo(image)):
            return  # already recorded (a resumed promotion)
        app["version"] = version
        if image:
            app["image"] = _repo(image)
        out = io.StringIO()
        _yaml().dump(doc, out)
        try:
            replace_file(path, out.getvalue())
        except OSError as exc:
            raise StackFileError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _repo(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
