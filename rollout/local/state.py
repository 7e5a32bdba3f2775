"""The shape of the local stack's ``state.json``, checked on every read: a file of another
shape (edited by hand, cut short, written by something else) is refused in one line that names
it and what is wrong, before anything acts on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollout.ledger.store import describe
from rollout.local.processes import ServerError


class StateFileError(ServerError):
    """``state.json`` is not the shape this code writes (a one-line reason naming the file)."""


class SavedInstance(BaseModel):
    """The shape of one instance in ``state.json`` (checked on every read)."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str
    track: Literal["stable", "canary"]
    version: str
    port: int = Field(ge=1, le=65535)
    pid: int | None = None
    env: dict[str, str] = Field(default_factory=dict)


class SavedState(BaseModel):
    """The shape of ``state.json``: what every later ``portalctl`` relies on finding."""

    model_config = ConfigDict(extra="allow", strict=True)
    ports: dict[str, int]
    weight: int = Field(ge=0, le=100)
    stable_version: str
    canary_version: str | None = None
    instances: list[SavedInstance]
    versions: dict[str, dict[str, str]] = Field(default_factory=dict)


def read_state(path: Path) -> dict[str, Any]:
    """``state.json`` as a mapping; ``StateFileError`` when it cannot be read or is of the wrong
    shape."""
    try:
        raw = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise StateFileError(f"local stack state {path}: cannot be read ({exc})") from exc
    try:
        state = json.loads(raw)
    except ValueError as exc:
        raise StateFileError(f"local stack state {path}: not valid JSON ({exc})") from None
    try:
        SavedState.model_validate(state)
    except ValidationError as exc:
        raise StateFileError(f"local stack state {path}: {describe(exc)}") from None
    return dict(state)
