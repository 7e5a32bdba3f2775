"""Record a promoted version in ``Pulumi.<stack>.yaml`` so the next ``pulumi up`` agrees.

Round-trip YAML: comments, key order and the other keys stay as they were.
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

from contract.config import NAMESPACE


class StackFileError(RuntimeError):
    """The stack file cannot be read or has no ``portal:app`` mapping."""


def set_app_version(path: Path, version: str, image: str | None = None) -> None:
    """Set ``portal:app.version`` (and ``image``'s repository when given with a tag)."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # the style of the stack files
    try:
        doc = yaml.load(path.read_text())
    except OSError as exc:
        raise StackFileError(f"cannot read {path}: {exc}") from exc
    app = (doc or {}).get("config", {}).get(f"{NAMESPACE}:app")
    if not hasattr(app, "__setitem__"):
        raise StackFileError(f"{path} has no {NAMESPACE}:app mapping to record the version in")
    app["version"] = version
    if image:
        repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        app["image"] = repository
    out = io.StringIO()
    yaml.dump(doc, out)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(out.getvalue())
    tmp.replace(path)
