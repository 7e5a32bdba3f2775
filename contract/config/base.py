"""What every section of the config model is built on: camelCase keys, refused unknown keys,
frozen values, defaults derived from other keys, and container resources."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from contract.config.types import (
    Cpu,
    Memory,
)

_ALIASES = {
    "interval_s": "interval",
    "settle_s": "settle",
    "lease_ttl_s": "leaseTtl",
    "limit_s": "limit",
    "scrape_interval_s": "scrapeInterval",
    "for_duration": "for",
    "sentry_dsn": "sentryDsn",
    "from_": "from",
}


def _alias(name: str) -> str:
    return _ALIASES.get(name) or to_camel(name)


@dataclass(frozen=True)
class Derived:
    """The default of a field that depends on another value (filled in before validation)."""

    text: str


class Section(BaseModel):
    """A mapping of the stack config: unknown keys are refused, nothing changes once read."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_alias, populate_by_name=True
    )


class Resources(Section):
    """Kubernetes requests and limits of one container."""

    cpu_request: Cpu = Field(description="CPU request")
    memory_request: Memory = Field(description="memory request")
    cpu_limit: Cpu = Field(description="CPU limit")
    memory_limit: Memory = Field(description="memory limit")

    def as_k8s(self) -> dict[str, dict[str, str]]:
        """The ``resources`` block of a container spec."""
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


def merged_over(default: Section) -> BeforeValidator:
    """A mapping given for this key is laid over ``default``: keys not given keep its values."""

    def over(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {**default.model_dump(by_alias=True), **value}
        return value

    return BeforeValidator(over)


def container_resources(
    cpu_request: str, memory_request: str, cpu_limit: str, memory_limit: str
) -> Resources:
    """Requests and limits in the order Kubernetes writes them."""
    return Resources(
        cpu_request=cpu_request,
        memory_request=memory_request,
        cpu_limit=cpu_limit,
        memory_limit=memory_limit,
    )


APP_RESOURCES = container_resources("250m", "256Mi", "1", "512Mi")
POSTGRES_RESOURCES = container_resources("250m", "512Mi", "1", "1Gi")
REDIS_RESOURCES = container_resources("100m", "128Mi", "500m", "512Mi")
PROMETHEUS_RESOURCES = container_resources("200m", "512Mi", "1", "2Gi")
GRAFANA_RESOURCES = container_resources("100m", "128Mi", "500m", "512Mi")
JAEGER_RESOURCES = container_resources("100m", "256Mi", "500m", "1Gi")
