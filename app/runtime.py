"""What one app instance owns, handed to the routes, the request observer and the error handlers.

Its own module, below all of them, so nothing imports ``app.main`` but the entry points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.auth import Authenticator
from app.cache import Cache
from app.db import Database
from app.health import RequestStats
from app.metrics import Metrics
from app.settings import Settings
from app.telemetry import SentrySwitch


@dataclass
class Runtime:
    """Everything one app instance owns."""

    settings: Settings
    metrics: Metrics
    db: Database
    cache: Cache
    stats: RequestStats
    sentry: SentrySwitch
    tracer_provider: Any | None
    auth: Authenticator
