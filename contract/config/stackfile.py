"""Reading the model from ``Pulumi.<stack>.yaml`` (``portalctl``) or from values (the Pulumi
program, which gets them from ``pulumi.Config``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from contract.config.errors import ConfigError, translate, unknown_key
from contract.config.model import CONFIG_KEYS, StackConfig
from contract.config.secrets import refuse_plain_text
from contract.names import NAMESPACE

_STACK = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _decode(raw: Any) -> Any:
    """Object values may come as JSON strings (as ``pulumi.Config`` stores them)."""
    if isinstance(raw, str) and raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def parse_config(values: Mapping[str, Any], stack: str) -> StackConfig:
    """The validated model from the stack's ``portal:`` values (keys without the prefix)."""
    if not isinstance(stack, str) or not _STACK.match(stack):
        raise ConfigError("stack", stack, "expected a stack name made of a-z, 0-9 and '-'")
    decoded = {}
    for key, raw in values.items():
        if key not in CONFIG_KEYS:
            raise unknown_key(f"{NAMESPACE}:{key}", raw, key, CONFIG_KEYS, top=True)
        decoded[key] = _decode(raw)
    try:
        return StackConfig.model_validate(decoded, context={"stack": stack})
    except ValidationError as exc:
        raise translate(exc, decoded, StackConfig) from None


def stack_file(stack: str, project_dir: Path | str = ".") -> Path:
    return Path(project_dir) / f"Pulumi.{stack}.yaml"


def read_stack_values(path: Path) -> dict[str, Any]:
    """The ``portal:`` values of a ``Pulumi.<stack>.yaml`` (prefix stripped).

    Secure values (``{secure: ...}``) are kept as an opaque marker: the model only records that
    they are set. Keys of other namespaces (``kubernetes:context``...) are ignored.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), None, "the stack file does not exist") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), None, f"the file is not valid YAML: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError(str(path), None, "expected a mapping with a `config:` key")
    config = doc.get("config") or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path}: config", config, "expected a mapping of portal:<key> values")
    values: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            continue
        ns, _, name = key.partition(":")
        if ns == NAMESPACE and name:
            values[name] = value
    return values


def load_stack(
    stack: str, project_dir: Path | str = ".", *, plain_text_secrets: bool = False
) -> StackConfig:
    """The validated model of ``Pulumi.<stack>.yaml`` in ``project_dir``. A credential in plain
    text there is refused unless ``plain_text_secrets`` (a file that is no Pulumi stack's)."""
    cfg = parse_config(read_stack_values(stack_file(stack, project_dir)), stack)
    if not plain_text_secrets:
        refuse_plain_text(cfg)
    return cfg
