"""Rich rendering of the release engine's events (``portalctl`` and the drill)."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.console import Console
from rich.markup import escape

from rollout.events import Event


class Progress:
    """Rich rendering of engine events: one line each, verdicts colour-coded."""

    COLOURS: ClassVar[dict[str, str]] = {
        "PASS": "green",
        "FAIL": "red",
        "INSUFFICIENT_DATA": "yellow",
        "PROVIDER_ERROR": "magenta",
    }

    def __init__(self, out: Console | None = None, quiet_passes: bool = False) -> None:
        self.out = out or Console(highlight=False, soft_wrap=True)
        self.quiet_passes = quiet_passes
        self.start = time.monotonic()

    def __call__(self, event: Event) -> None:
        t = time.monotonic() - self.start
        stamp = f"[dim]{t:6.1f}s[/dim]"
        if event.kind == "verdict":
            verdict = event.data.get("verdict", "")
            if self.quiet_passes and verdict == "PASS":
                return
            colour = self.COLOURS.get(verdict, "white")
            elapsed = event.data.get("elapsed_s", 0.0)
            window = event.data.get("window_s", 0.0)
            bar = _bar(elapsed / window if window else 1.0)
            self.out.print(
                f"{stamp}   {bar} {event.data.get('gate', ''):7} "
                f"[{colour}]{verdict:17}[/{colour}] "
                f"{escape(event.data.get('reason', ''))}"
            )
            return
        style = {
            "promoted": "bold green",
            "rolled_back": "bold red",
            "held": "bold yellow",
            "provider_error": "magenta",
            "lease": "bold yellow",
            "paused": "bold yellow",
            "step_started": "bold",
            "started": "bold cyan",
        }.get(event.kind, "")
        msg = escape(event.message)
        self.out.print(f"{stamp} [{style}]{msg}[/{style}]" if style else f"{stamp} {msg}")


def _bar(fraction: float, width: int = 10) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[cyan]" + "█" * filled + "[/cyan][dim]" + "·" * (width - filled) + "[/dim]"
