"""The Secret the app and the migration Job read their credentials from (``portal-env``):
the database and Redis URLs built from the generated passwords, the admin token the runbooks use
for operational endpoints, and the Sentry DSN when the stack sets one."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import kube
from contract import ports
from contract.config import StackConfig
from contract.labels import API, standard_labels
from contract.names import ADMIN_TOKEN, DATABASE_URL, REDIS_URL, SENTRY_DSN


@dataclass(frozen=True)
class AppEnvArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""
    postgres_host: pulumi.Input[str]
    """The Postgres Service name."""
    postgres_password: pulumi.Input[str]
    """The generated Postgres password (secret)."""
    redis_host: pulumi.Input[str]
    """The Redis Service name."""
    redis_password: pulumi.Input[str]
    """The generated Redis password (secret)."""
    sentry_dsn: pulumi.Input[str] | None = None
    """The Sentry DSN (a secret from the stack config), or ``None``."""


class AppEnv(pulumi.ComponentResource):
    """The ``portal-env`` Secret."""

    secret: k8s.core.v1.Secret
    secret_name: pulumi.Output[str]
    keys: tuple[str, ...]
    """The keys the Secret holds."""
    admin_token: pulumi.Output[str]

    def __init__(
        self, name: str, args: AppEnvArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:app_env:AppEnv", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        labels = standard_labels(cfg, cfg.names.app, API, None)
        token = random.RandomPassword(f"{name}-admin-token", length=40, special=False, opts=child)

        database_url: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.format(
                "postgresql://{0}:{1}@{2}:{3}/{4}",
                cfg.postgres.user,
                args.postgres_password,
                args.postgres_host,
                ports.POSTGRES,
                cfg.postgres.database,
            )
        )
        redis_url: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.format(
                "redis://:{0}@{1}:{2}/0", args.redis_password, args.redis_host, ports.REDIS
            )
        )
        data: dict[str, pulumi.Input[str]] = {
            DATABASE_URL: database_url,
            REDIS_URL: redis_url,
            ADMIN_TOKEN: token.result,
        }
        if args.sentry_dsn is not None:
            data[SENTRY_DSN] = pulumi.Output.secret(args.sentry_dsn)
        self.keys = tuple(data)
        self.secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=kube.metadata(cfg.names.app_secret, args.namespace, labels),
            type="Opaque",
            string_data=data,
            opts=child,
        )
        self.secret_name = self.secret.metadata.name
        self.admin_token = token.result
        self.register_outputs({"secretName": self.secret_name, "keys": list(self.keys)})
