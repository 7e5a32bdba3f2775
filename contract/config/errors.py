"""One line per config mistake: the key (``portal:<path>``), the value at fault, what is allowed.

Pydantic's errors are turned into ``ConfigError`` here, with the words of the field's own type
(``types.Allowed``) and bounds, so every key explains itself without a hand-written message.
"""

from __future__ import annotations

import difflib
import json
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from contract.config.types import Allowed
from contract.names import NAMESPACE


class ConfigError(ValueError):
    """A stack config value is wrong. ``key`` is the full ``portal:`` path of the value at fault."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}: {_show(value)}: {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def unknown_key(
    key: str, value: Any, name: str, known: Sequence[str], top: bool = False
) -> ConfigError:
    near = difflib.get_close_matches(name, known, n=1)
    if near:
        hint = f" (did you mean {NAMESPACE}:{near[0]}?)" if top else f" (did you mean {near[0]!r}?)"
    else:
        hint = ""
    return ConfigError(key, value, f"unknown key{hint}; known keys: {', '.join(known)}")


def key_of(loc: Sequence[str | int]) -> str:
    """``("canary", "steps", 1, "weight")`` -> ``portal:canary.steps[1].weight``."""
    out = f"{NAMESPACE}:"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += part if i == 0 else f".{part}"
    return out


def aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _field(model: type[BaseModel], alias: str) -> FieldInfo | None:
    for name, f in model.model_fields.items():
        if (f.alias or name) == alias:
            return f
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def walk(
    root: type[BaseModel], loc: Sequence[str | int]
) -> tuple[type[BaseModel], FieldInfo | None]:
    """The model holding the last part of ``loc`` and that part's field (``None``: unknown)."""
    model = root
    field: FieldInfo | None = None
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        field = _field(model, part)
        if field is None or i == len(loc) - 1:
            break
        inner = _model_in(field.annotation)
        if inner is None:
            break
        model = inner
    return model, field


def _metadata(field: FieldInfo) -> list[Any]:
    found = list(field.metadata)
    for arg in typing.get_args(field.annotation):
        found += list(getattr(arg, "__metadata__", ()))
    return found


def _bounds(meta: list[Any]) -> tuple[str, float | None, float | None]:
    low_kind, low, high = "", None, None
    for m in meta:
        if isinstance(m, annotated_types.Ge):
            low_kind, low = "from", float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Gt):
            low_kind, low = "above", float(m.gt)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Le):
            high = float(m.le)  # type: ignore[arg-type]
    return low_kind, low, high


def allowed_text(field: FieldInfo, error_type: str = "") -> str:
    """What ``field`` allows, in words: its type's ``Allowed`` text and its bounds."""
    annotation = field.annotation
    options = [
        a
        for a in (annotation, *typing.get_args(annotation))
        if typing.get_origin(a) is typing.Literal
    ]
    if options:
        return "expected one of " + ", ".join(str(o) for o in typing.get_args(options[0]))
    inner = _model_in(annotation)
    if inner is not None:
        return "expected a mapping with keys " + ", ".join(aliases(inner))
    meta = _metadata(field)
    allowed = next((m for m in meta if isinstance(m, Allowed)), None)
    text = allowed.text if allowed else "expected another value"
    low_kind, low, high = _bounds(meta)
    if high is None:
        return text
    if allowed is not None and allowed.unit:
        if error_type in ("greater_than_equal", "greater_than", "less_than_equal"):
            return f"expected a duration from {low:g}{allowed.unit} to {high:g}{allowed.unit}"
        return text
    if (isinstance(annotation, type) and issubclass(annotation, int)) or "whole" in text:
        return f"{text} from {low:g} to {high:g}"
    return f"{text} {low_kind} {low:g} up to {high:g}"


def _lookup(raw: Any, loc: Sequence[str | int]) -> tuple[bool, Any]:
    node = raw
    for part in loc:
        if isinstance(node, Mapping) and isinstance(part, str) and part in node:
            node = node[part]
            continue
        if isinstance(node, list | tuple) and isinstance(part, int) and part < len(node):
            node = node[part]
            continue
        return False, None
    return True, node


def translate(exc: ValidationError, raw: Mapping[str, Any], root: type[BaseModel]) -> ConfigError:
    """The first of pydantic's errors as one ``ConfigError``."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    loc = tuple(err["loc"])
    key = key_of(loc)
    found, value = _lookup(raw, loc)
    if not found:
        value = None if err["type"] == "missing" else err.get("input")
    model, field = walk(root, loc)
    if err["type"] == "extra_forbidden" or field is None:
        return unknown_key(key, value, str(loc[-1]), aliases(model), top=len(loc) == 1)
    allowed = allowed_text(field, err["type"])
    if err["type"] == "missing":
        return ConfigError(key, None, "required: " + allowed.removeprefix("expected "))
    return ConfigError(key, value, allowed)
