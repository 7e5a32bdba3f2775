"""The ``config:`` section of ``Pulumi.yaml``, generated from the model.

``python -m contract.config.docs`` rewrites it; ``--check`` exits 1 when the file differs (a test
runs the same comparison, so the documented keys never drift from the parsed ones).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from contract.config.base import Derived
from contract.config.errors import aliases
from contract.config.model import SECRET_KEYS, StackConfig
from contract.config.types import Allowed
from contract.names import NAMESPACE

PULUMI_YAML = Path(__file__).resolve().parents[2] / "Pulumi.yaml"
WIDTH = 110


def _model(field: FieldInfo) -> type[BaseModel] | None:
    for arg in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _show(value: Any, unit: str = "") -> str:
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_show(v, unit) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}{unit}"
    if isinstance(value, BaseModel):
        shown = (f"{k} {_show(v)}" for k, v in value.model_dump(by_alias=True).items())
        return "{" + ", ".join(shown) + "}"
    return f"{value}{unit}"


def _default(field: FieldInfo) -> str | None:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return str(extra["default_text"])
    derived = next((m for m in field.metadata if isinstance(m, Derived)), None)
    if derived is not None:
        return derived.text
    if field.default is PydanticUndefined or field.default is None:
        return None
    allowed = next((m for m in field.metadata if isinstance(m, Allowed)), None)
    return _show(field.default, allowed.unit if allowed else "")


def _options(field: FieldInfo) -> str | None:
    for arg in (field.annotation, *typing.get_args(field.annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return " | ".join(str(o) for o in typing.get_args(arg))
    return None


def _describe_field(name: str, field: FieldInfo) -> str:
    """``name (what; default X)``, or ``name {keys}`` for a nested mapping."""
    inner = _model(field)
    if inner is not None and not isinstance(field.default, BaseModel):
        lead = f"{field.description}: " if field.description else ""
        return f"{name} {{{lead}{_keys(inner)}}}"
    parts = [p for p in (_options(field), field.description) if p]
    default = _default(field)
    if default is not None:
        parts.append(f"default {default}")
    return f"{name} ({'; '.join(parts)})" if parts else name


def _keys(model: type[BaseModel]) -> str:
    return ", ".join(
        _describe_field(alias, field)
        for alias, field in zip(aliases(model), model.model_fields.values(), strict=True)
    )


def _doc(model: type[BaseModel]) -> str:
    return " ".join(inspect.cleandoc(model.__doc__ or "").split())


def pulumi_config() -> dict[str, dict[str, Any]]:
    """``portal:<key>`` -> its ``Pulumi.yaml`` entry. Every optional key declares a default
    that the model reads as unset ("" or {}): the Pulumi engine requires a declared key that has
    none in every stack, and passes the default of one a stack leaves out."""
    out: dict[str, dict[str, Any]] = {}
    for alias, field in zip(aliases(StackConfig), StackConfig.model_fields.values(), strict=True):
        inner = _model(field)
        entry: dict[str, Any] = {}
        optional = not (field.is_required() and not _derived(field))
        if inner is None:
            if alias in SECRET_KEYS:
                entry["secret"] = True
            else:
                entry["type"] = "string"
            if optional:
                entry["default"] = ""
            text = field.description or ""
            default = _default(field)
            entry["description"] = (
                text[:1].upper() + text[1:] + (f". Default: {default}." if default else ".")
            )
        else:
            if optional:
                entry["default"] = {}
            entry["description"] = f"{_doc(inner)} Keys: {_keys(inner)}."
        out[f"{NAMESPACE}:{alias}"] = entry
    return out


def _derived(field: FieldInfo) -> bool:
    return any(isinstance(m, Derived) for m in field.metadata)


def _scalar(value: Any) -> str:
    if value == {}:
        return "{}"
    return str(yaml.safe_dump(value, default_flow_style=True)).strip().removesuffix("...").strip()


def render(config: dict[str, dict[str, Any]]) -> str:
    lines = ["config:"]
    for key, entry in config.items():
        lines.append(f"  {key}:")
        for name in ("type", "secret", "default"):
            if name in entry:
                lines.append(f"    {name}: {_scalar(entry[name])}")
        body = textwrap.wrap(entry["description"], WIDTH, break_on_hyphens=False)
        lines.append("    description: >-")
        lines += [f"      {line}" for line in body]
    return "\n".join(lines) + "\n"


def updated(text: str) -> str:
    """``Pulumi.yaml``'s text with its ``config:`` section regenerated."""
    head = text.split("\nconfig:\n", 1)[0]
    return f"{head}\n{render(pulumi_config())}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m contract.config.docs", description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 when Pulumi.yaml is stale")
    args = p.parse_args(argv)
    text = PULUMI_YAML.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print(f"{PULUMI_YAML} is stale: run python -m contract.config.docs", file=sys.stderr)
            return 1
        return 0
    PULUMI_YAML.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
