"""The stack config as the Pulumi engine hands it to the program, validated by the model.

Kept out of ``__main__`` so it can be run on its own (the real engine's tests read a stack
through it).
"""

from __future__ import annotations

from typing import Any

import pulumi

from contract.config import (
    CONFIG_KEYS,
    NAMESPACE,
    SECRET_KEYS,
    ConfigError,
    StackConfig,
    parse_config,
)
from contract.config.secrets import plain_text, secrets_of


def stack_values() -> dict[str, Any]:
    """Every ``portal:`` key the model declares, read through ``pulumi.Config`` (objects arrive
    JSON-encoded; ``parse_config`` decodes them, with any secret inside decrypted by the engine).
    A secret key is replaced by a marker: the model only records that it is set (an empty one,
    the default Pulumi.yaml declares, means unset). Keys the model does not declare are found
    among the names the Pulumi CLI hands the program, so a misspelt key is refused with a
    suggestion."""
    config = pulumi.Config(NAMESPACE)
    values: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        if key in SECRET_KEYS:
            if pulumi.runtime.get_config(config.full_key(key)):
                values[key] = "[secret]"
            continue
        value = config.get(key)
        if value is not None:
            values[key] = value
    prefix = f"{NAMESPACE}:"
    for name in pulumi.runtime.get_config_env():
        key = name.removeprefix(prefix)
        if name.startswith(prefix) and key not in CONFIG_KEYS:
            values[key] = pulumi.runtime.get_config(name)
    return values


def check_secrets(cfg: StackConfig) -> None:
    """A credential inside an object key (``portal:alerts.receivers.slack.apiUrl``) arrives
    decrypted, and the engine marks the whole key secret when it was set with ``--secret``; a key
    not marked so holds its credential in plain text in the stack file: refused."""
    for key, _ in secrets_of(cfg):
        top = key.partition(".")[0]
        if not pulumi.runtime.is_config_secret(top):
            raise plain_text(key)


def load_config() -> StackConfig:
    try:
        cfg = parse_config(stack_values(), pulumi.get_stack())
        check_secrets(cfg)
    except ConfigError as exc:
        raise pulumi.RunError(f"invalid stack config: {exc}") from None
    return cfg
