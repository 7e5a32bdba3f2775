"""What the engine tells its watchers (the CLI's progress display, the drill, tests)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

EventKind = Literal[
    "started",
    "migration",
    "canary_deployed",
    "step_started",
    "weight_set",
    "sample",
    "verdict",
    "paused",
    "held",
    "promoted",
    "rolled_back",
    "request",
    "provider_error",
    "lease",
    "info",
]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    release_id: str
    message: str
    step: int | None = None
    weight: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[Event], None]


def ignore(_: Event) -> None:
    """The default sink."""
