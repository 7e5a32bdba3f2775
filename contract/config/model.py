"""The stack config model: every ``portal:`` key is one field here, with its type, bounds,
default and description. ``Pulumi.yaml``'s config descriptions are generated from it
(``python -m contract.config.docs``) and a test fails when they drift.

Field names are snake_case; the stack file spells them camelCase (``canaryReplicas``), and a few
durations drop their unit suffix (``interval`` is ``interval_s``, in seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PrivateAttr, model_validator

from contract.config.base import Derived, Section
from contract.config.deploy import (
    AppConfig,
    MigrationsConfig,
    NetworkConfig,
    ObservabilityConfig,
    PostgresConfig,
    RedisConfig,
    TrafficConfig,
)
from contract.config.errors import ConfigError
from contract.config.release import AlertsConfig, CanaryConfig, Slo
from contract.config.types import (
    Allowed,
    DnsLabel,
    Namespace,
)
from contract.names import NAMES, NAMESPACE, Names


def _secret(value: Any) -> str:
    if isinstance(value, str) or (isinstance(value, Mapping) and set(value) == {"secure"}):
        return "[secret]"
    raise ValueError("not a secret")


Secret = Annotated[
    str,
    BeforeValidator(_secret),
    Allowed("expected a secret string (pulumi config set --secret portal:sentryDsn https://...)"),
]


class StackConfig(Section):
    """The whole stack config, validated."""

    environment: Annotated[DnsLabel, Derived("the stack name")] = Field(
        description="label put on every object (app.kubernetes.io/instance)"
    )
    namespace: Annotated[Namespace, Derived("portal-<stack>")] = Field(
        description="namespace the stack deploys into"
    )
    app: AppConfig
    traffic: Annotated[TrafficConfig, Derived("the host from the stack name")]
    postgres: PostgresConfig = Field(default=PostgresConfig())
    redis: RedisConfig = Field(default=RedisConfig())
    migrations: MigrationsConfig = Field(default=MigrationsConfig())
    observability: ObservabilityConfig = Field(default=ObservabilityConfig())
    network: NetworkConfig = Field(default=NetworkConfig())
    slo: Slo = Field(default=Slo())
    canary: CanaryConfig = Field(default=CanaryConfig())
    alerts: AlertsConfig = Field(default=AlertsConfig())
    sentry_dsn: Secret | None = Field(
        default=None,
        description="optional Sentry DSN (`pulumi config set --secret portal:sentryDsn ...`); "
        "Sentry is off without it",
        json_schema_extra={"secret": True},
    )
    _stack: str = PrivateAttr("")

    @property
    def stack(self) -> str:
        return self._stack

    @property
    def names(self) -> Names:
        return NAMES

    @property
    def sentry_enabled(self) -> bool:
        return self.sentry_dsn is not None

    @model_validator(mode="before")
    @classmethod
    def _stack_defaults(cls, data: Any, info: Any) -> Any:
        stack = str((info.context or {}).get("stack", ""))
        if not isinstance(data, Mapping):
            return data
        # Empty reads as unset: it is the default Pulumi.yaml declares for an optional key, which
        # the engine passes to the program when the stack leaves the key out.
        data = {k: v for k, v in data.items() if not (k in _EMPTY_IS_UNSET and v == "")}
        if "app" not in data:
            raise ConfigError(
                f"{NAMESPACE}:app", None, "required: a mapping with at least image and version"
            )
        data.setdefault("environment", stack)
        data.setdefault("namespace", f"portal-{stack}")
        traffic = data.get("traffic")
        if traffic is None or isinstance(traffic, Mapping):
            data["traffic"] = {"host": f"portal.{stack}.example.com", **(traffic or {})}
        return data

    @model_validator(mode="after")
    def _remember_stack(self, info: Any) -> StackConfig:
        self._stack = str((info.context or {}).get("stack", ""))
        return self


_EMPTY_IS_UNSET = ("environment", "namespace", "sentryDsn")

CONFIG_KEYS: tuple[str, ...] = tuple(
    field.alias or name for name, field in StackConfig.model_fields.items()
)
"""Every top-level key (``portal:<key>``), in the order of the model."""

SECRET_KEYS = frozenset({"sentryDsn"})
"""Keys that may only hold Pulumi secrets: the model records whether they are set, not the value."""
