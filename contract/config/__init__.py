"""The one config model of the portal platform (pydantic, no Pulumi import).

The Pulumi program fills it from ``pulumi.Config``; ``portalctl`` and the runbooks from
``Pulumi.<stack>.yaml``. Steps, thresholds and names therefore have one definition that feeds
the deployed objects, the release gates and the alert rules alike. Every error names the key
(``portal:<path>``), the value at fault and what is allowed, before anything is created.
"""

from contract.config.base import Resources, container_resources
from contract.config.deploy import (
    DEFAULT_IMAGES,
    AppConfig,
    BackupConfig,
    MigrationsConfig,
    NetworkConfig,
    ObservabilityConfig,
    PostgresConfig,
    RedisConfig,
    TrafficConfig,
)
from contract.config.errors import ConfigError
from contract.config.model import CONFIG_KEYS, SECRET_KEYS, StackConfig
from contract.config.release import AlertsConfig, CanaryConfig, Slo, VerdictPolicy
from contract.config.stackfile import load_stack, parse_config, read_stack_values, stack_file
from contract.config.steps import DEFAULT_STEPS, Step
from contract.config.types import parse_duration
from contract.names import NAMESPACE

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_IMAGES",
    "DEFAULT_STEPS",
    "NAMESPACE",
    "SECRET_KEYS",
    "AlertsConfig",
    "AppConfig",
    "BackupConfig",
    "CanaryConfig",
    "ConfigError",
    "MigrationsConfig",
    "NetworkConfig",
    "ObservabilityConfig",
    "PostgresConfig",
    "RedisConfig",
    "Resources",
    "Slo",
    "StackConfig",
    "Step",
    "TrafficConfig",
    "VerdictPolicy",
    "container_resources",
    "load_stack",
    "parse_config",
    "parse_duration",
    "read_stack_values",
    "stack_file",
]
