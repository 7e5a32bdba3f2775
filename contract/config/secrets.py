"""Credentials inside the stack config (the alert receivers' webhook URLs, keys, passwords).

A Pulumi stack keeps them encrypted in its file, set one by one with a path:

    pulumi config set --secret --path 'portal:alerts.receivers.slack.apiUrl' https://hooks...

which writes ``apiUrl: {secure: v1:...}`` inside the ``portal:alerts`` object. The Pulumi engine
decrypts the object for the program and marks the whole key ``portal:alerts`` secret; the
program reads the values and puts them only into a Kubernetes Secret (as secret outputs).
``portalctl`` reads the stack file without the passphrase: there a credential is only known to be
set. A credential written in a stack file as plain text is refused by both, naming the key, and
never echoed. The local stack's file is not a Pulumi stack: plain text is its only form.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, PlainSerializer, PlainValidator

from contract.config.errors import ConfigError
from contract.config.types import Allowed
from contract.names import NAMESPACE


@dataclass(frozen=True, repr=False)
class SecretText:
    """A credential: its text where known, ``None`` where only the Pulumi engine can read it."""

    value: str | None
    """The text (decrypted by the engine, or written in plain text); ``None``: encrypted in the
    stack file (``{secure: ...}``)."""

    @property
    def encrypted(self) -> bool:
        return self.value is None

    def reveal(self, key: str) -> str:
        """The text, for the one place that writes it into a Kubernetes Secret."""
        if self.value is None:
            raise ValueError(
                f"{key} is encrypted in the stack file: only the Pulumi program, which the "
                "engine hands it decrypted, can render it"
            )
        return self.value

    def __repr__(self) -> str:
        return "SecretText(****)"

    __str__ = __repr__


def _secret_text(value: Any) -> SecretText:
    if isinstance(value, SecretText):
        return value
    if isinstance(value, str) and value:
        return SecretText(value)
    if isinstance(value, Mapping) and set(value) == {"secure"} and isinstance(value["secure"], str):
        return SecretText(None)
    raise ValueError("not a secret")


Secret = Annotated[
    SecretText,
    PlainValidator(_secret_text),
    PlainSerializer(lambda _: "[secret]", return_type=str),
    Allowed("expected a secret string, set with `pulumi config set --secret --path KEY VALUE`"),
]
"""A credential of the config model: dumped as ``[secret]``, never shown in an error."""


def secrets_of(model: BaseModel, path: str = NAMESPACE + ":") -> Iterator[tuple[str, SecretText]]:
    """Every credential set in ``model``, with its key (``portal:alerts.receivers.slack.apiUrl``
    ...)."""
    for name, field in type(model).model_fields.items():
        key = f"{path}{field.alias or name}"
        value = getattr(model, name)
        if isinstance(value, SecretText):
            yield key, value
        elif isinstance(value, BaseModel):
            yield from secrets_of(value, key + ".")


class _Hidden:
    """Stands for a credential's value in an error message: never shown."""

    def __repr__(self) -> str:
        return "(plain text, not shown)"


def plain_text(key: str) -> ConfigError:
    """A credential in plain text in a Pulumi stack file (the value is not shown)."""
    return ConfigError(
        key,
        _Hidden(),
        "a credential in plain text in the stack file: remove it and set it with "
        f"`pulumi config set --secret --path '{key}' VALUE`",
    )


def refuse_plain_text(cfg: BaseModel) -> None:
    """Every credential of a Pulumi stack file must be stored encrypted (``{secure: ...}``)."""
    for key, secret in secrets_of(cfg):
        if not secret.encrypted:
            raise plain_text(key)
