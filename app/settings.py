"""The service's settings, read once from the environment and validated before anything starts.

Every setting is optional except ``PORTAL_DATABASE_URL``. An empty value counts as unset (a
Kubernetes manifest often renders an optional variable as ``""``). A bad value raises
``SettingsError`` whose message is one line naming the variable, the value and what is allowed;
the command line prints that line and exits with status 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Track = Literal["stable", "canary"]

_LABEL_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_REPLACED = {
    "OTEL_TRACES_SAMPLER": "set PORTAL_TRACE_SAMPLE_RATIO (0 to 1) instead",
    "OTEL_TRACES_SAMPLER_ARG": "set PORTAL_TRACE_SAMPLE_RATIO (0 to 1) instead",
    "PORTAL_ADMIN_TOKEN": (
        "admin operations take a token with the admin scope "
        "(python -m app token mint --service NAME --scope admin)"
    ),
}


class SettingsError(ValueError):
    """A setting is wrong. ``variable`` is the environment variable at fault."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


@dataclass(frozen=True)
class Faults:
    """The fault switch for drills. Everything is off by default."""

    error_rate: float = 0.0
    """Fraction of business API requests answered with HTTP 500."""
    latency_ms: int = 0
    """Delay added to a delayed business API request."""
    latency_rate: float = 0.0
    """Fraction of business API requests delayed by ``latency_ms``."""
    db_sleep_ms: int = 0
    """``pg_sleep`` added to the dashboard query (which then bypasses the cache)."""

    @property
    def active(self) -> bool:
        return (
            self.error_rate > 0
            or (self.latency_ms > 0 and self.latency_rate > 0)
            or self.db_sleep_ms > 0
        )

    def describe(self) -> str:
        parts = []
        if self.error_rate > 0:
            parts.append(f"{self.error_rate:g} of requests answer 500")
        if self.latency_ms > 0 and self.latency_rate > 0:
            parts.append(f"{self.latency_rate:g} of requests delayed {self.latency_ms} ms")
        if self.db_sleep_ms > 0:
            parts.append(f"dashboard query sleeps {self.db_sleep_ms} ms")
        return "; ".join(parts) or "off"


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None = None
    version: str = "dev"
    track: Track = "stable"
    cache_ttl_short: int = 60
    cache_ttl_medium: int = 300
    cache_ttl_long: int = 3600
    slow_query_ms: int = 200
    slow_request_ms: int = 1000
    db_pool_size: int = 10
    db_timeout_s: float = 5.0
    """How long a request waits for a pooled connection before answering 503."""
    redis_timeout_ms: int = 500
    """Connect and operation timeout of Redis; past it the cache falls back to memory."""
    redis_retry_s: float = 2.0
    """After a Redis failure, how long the memory fallback serves before Redis is tried again."""
    n_plus_one_threshold: int = 5
    """The same statement run this many times in one request is logged as a suspected N+1."""
    db_statement_timeout_ms: int = 5000
    """``statement_timeout`` of the service's connections (0: none); a longer statement is
    cancelled and its request answered 503."""
    db_lock_timeout_ms: int = 1000
    """``lock_timeout`` of the service's connections (0: none)."""
    faults: Faults = Faults()
    auth_enabled: bool = True
    """Off only to measure what authentication costs (benchmarks): every caller is an admin."""
    auth_keys_file: Path | None = None
    """The JWK Set whose keys sign and verify the API's bearer tokens."""
    metrics_token_file: Path | None = None
    """The scraper's opaque token for ``/metrics``."""
    api_docs: bool = False
    """Serve ``/docs`` and ``/openapi.json``."""
    sentry_dsn: str | None = None
    otel_endpoint: str | None = None
    otel_service_name: str = "portal"
    trace_sample_ratio: float = 1.0
    """Share of requests that start a trace (one with a caller's ``traceparent`` follows it)."""
    trace_batch_size: int = 64
    """Most spans in one OTLP export (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``; OpenTelemetry: 512)."""
    trace_batch_delay_ms: int = 200
    """Longest a finished span waits for its export, in ms (``OTEL_BSP_SCHEDULE_DELAY``;
    OpenTelemetry's is 5000)."""
    log_level: str = "INFO"
    instrumentation: bool = True
    """Off only to measure the instrumentation's own cost (no metrics, headers or stats)."""
    response_headers: bool = True
    """The ``X-`` headers on every response (off: metrics, statistics and logs only)."""
    cache_enabled: bool = True
    """Off only to measure what the cache saves: every read computes, nothing is stored."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, require_database: bool = True) -> Settings:
        """Read and validate every setting; raise ``SettingsError`` on the first bad one."""
        r = _Reader(env)
        for name, instead in _REPLACED.items():
            if r.raw(name) is not None:
                raise SettingsError(
                    name, f"not used by this service (it would be ignored); {instead}"
                )
        database_url = r.url(
            "PORTAL_DATABASE_URL",
            ("postgresql", "postgres"),
            "postgresql://user[:password]@host:port/database",
            secret=True,
        )
        if database_url is None:
            if require_database:
                raise SettingsError(
                    "PORTAL_DATABASE_URL",
                    "not set; expected postgresql://user[:password]@host:port/database",
                )
            database_url = ""
        latency_ms = r.integer("PORTAL_FAULT_LATENCY_MS", 0, 0, 600_000)
        faults = Faults(
            error_rate=r.fraction("PORTAL_FAULT_ERROR_RATE", 0.0),
            latency_ms=latency_ms,
            latency_rate=r.fraction("PORTAL_FAULT_LATENCY_RATE", 1.0 if latency_ms else 0.0),
            db_sleep_ms=r.integer("PORTAL_FAULT_DB_SLEEP_MS", 0, 0, 600_000),
        )
        track = r.choice("PORTAL_TRACK", "stable", ("stable", "canary"))
        return cls(
            database_url=database_url,
            redis_url=r.url(
                "PORTAL_REDIS_URL",
                ("redis", "rediss", "unix"),
                "redis://[:password@]host:port/db",
                secret=True,
            ),
            version=r.label("PORTAL_VERSION", "dev"),
            track="canary" if track == "canary" else "stable",
            cache_ttl_short=r.integer("PORTAL_CACHE_TTL_SHORT", 60, 1, 86_400 * 30),
            cache_ttl_medium=r.integer("PORTAL_CACHE_TTL_MEDIUM", 300, 1, 86_400 * 30),
            cache_ttl_long=r.integer("PORTAL_CACHE_TTL_LONG", 3600, 1, 86_400 * 30),
            slow_query_ms=r.integer("PORTAL_SLOW_QUERY_MS", 200, 1, 3_600_000),
            slow_request_ms=r.integer("PORTAL_SLOW_REQUEST_MS", 1000, 1, 3_600_000),
            db_pool_size=r.integer("PORTAL_DB_POOL_SIZE", 10, 1, 200),
            db_timeout_s=r.integer("PORTAL_DB_TIMEOUT_MS", 5000, 100, 600_000) / 1000,
            redis_timeout_ms=r.integer("PORTAL_REDIS_TIMEOUT_MS", 500, 10, 60_000),
            redis_retry_s=r.integer("PORTAL_REDIS_RETRY_MS", 2000, 10, 600_000) / 1000,
            n_plus_one_threshold=r.integer("PORTAL_N_PLUS_ONE_THRESHOLD", 5, 2, 10_000),
            db_statement_timeout_ms=r.integer("PORTAL_DB_STATEMENT_TIMEOUT_MS", 5000, 0, 3_600_000),
            db_lock_timeout_ms=r.integer("PORTAL_DB_LOCK_TIMEOUT_MS", 1000, 0, 3_600_000),
            faults=faults,
            auth_enabled=r.choice("PORTAL_AUTH", "on", ("on", "off")) == "on",
            auth_keys_file=r.path("PORTAL_AUTH_KEYS_FILE"),
            metrics_token_file=r.path("PORTAL_METRICS_TOKEN_FILE"),
            api_docs=r.choice("PORTAL_API_DOCS", "off", ("on", "off")) == "on",
            sentry_dsn=r.url(
                "SENTRY_DSN", ("http", "https"), "https://key@host/project-id", secret=True
            ),
            otel_endpoint=r.url(
                "OTEL_EXPORTER_OTLP_ENDPOINT", ("http", "https"), "http://collector:4318"
            ),
            otel_service_name=r.label("OTEL_SERVICE_NAME", "portal"),
            trace_sample_ratio=r.fraction("PORTAL_TRACE_SAMPLE_RATIO", 1.0),
            trace_batch_size=r.integer("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 64, 1, 2048),
            trace_batch_delay_ms=r.integer("OTEL_BSP_SCHEDULE_DELAY", 200, 1, 60_000),
            log_level=r.choice("PORTAL_LOG_LEVEL", "INFO", _LOG_LEVELS, upper=True),
            instrumentation=r.choice("PORTAL_INSTRUMENTATION", "on", ("on", "off")) == "on",
            response_headers=r.choice("PORTAL_RESPONSE_HEADERS", "on", ("on", "off")) == "on",
            cache_enabled=r.choice("PORTAL_CACHE", "on", ("on", "off")) == "on",
        )

    def ttl(self, cache_class: str) -> int:
        return {
            "short": self.cache_ttl_short,
            "medium": self.cache_ttl_medium,
            "long": self.cache_ttl_long,
        }[cache_class]


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def secret(self, name: str) -> str | None:
        """A secret given as ``NAME=value`` or as a file, ``NAME_FILE=/path`` (a mounted
        Secret); not both."""
        file = self.raw(f"{name}_FILE")
        if file is None:
            return self.raw(name)
        if self.raw(name) is not None:
            raise SettingsError(f"{name}_FILE", f"set {name} or {name}_FILE, not both")
        try:
            value = Path(file).read_text().strip()
        except OSError as exc:
            raise SettingsError(
                f"{name}_FILE", f"{file}: cannot be read ({exc.strerror or exc})"
            ) from None
        if not value:
            raise SettingsError(f"{name}_FILE", f"{file} is empty")
        return value

    def path(self, name: str) -> Path | None:
        """A file the service reads (its content is checked where it is used)."""
        raw = self.raw(name)
        if raw is None:
            return None
        path = Path(raw)
        if not path.is_file():
            raise SettingsError(name, f"{raw}: no such file")
        return path

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(
                name, f"{raw!r} is not a whole number between {lo} and {hi}"
            ) from None
        if not lo <= value <= hi:
            raise SettingsError(name, f"{raw!r} is not a whole number between {lo} and {hi}")
        return value

    def fraction(self, name: str, default: float) -> float:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(name, f"{raw!r} is not a number between 0 and 1") from None
        if not 0.0 <= value <= 1.0:  # also rejects nan
            raise SettingsError(name, f"{raw!r} is not a number between 0 and 1")
        return value

    def choice(
        self, name: str, default: str, allowed: tuple[str, ...], *, upper: bool = False
    ) -> str:
        raw = self.raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw
        if value not in allowed:
            raise SettingsError(name, f"{raw!r} is not one of {', '.join(allowed)}")
        return value

    def label(self, name: str, default: str) -> str:
        raw = self.raw(name)
        if raw is None:
            return default
        if not _LABEL_SAFE.match(raw):
            raise SettingsError(
                name, f"{raw!r} is not a label of 1-64 letters, digits, '.', '_', '+' or '-'"
            )
        return raw

    def url(
        self, name: str, schemes: tuple[str, ...], example: str, *, secret: bool = False
    ) -> str | None:
        raw = self.secret(name) if secret else self.raw(name)
        if raw is None:
            return None
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            raise SettingsError(name, f"{_redact(raw)!r} is not a URL like {example}") from None
        if parts.scheme not in schemes or (parts.scheme != "unix" and not parts.hostname):
            raise SettingsError(name, f"{_redact(raw)!r} is not a URL like {example}")
        return raw


def _redact(url: str) -> str:
    """The URL with any password replaced, for error messages."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
