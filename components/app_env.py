"""The Secret the app reads its credentials from (``portal-env``, as files): the database URL of
the ``portal_app`` role and the Redis URL of the ``portal_app`` ACL user, built from the generated
passwords, the key set the API's tokens are signed with (one generated key per id of
``portal:app.authKeyIds``), the token Prometheus scrapes with, and the Sentry DSN when the stack
sets one."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components import kube
from contract import ports
from contract.config import StackConfig
from contract.labels import API, standard_labels
from contract.names import (
    AUTH_KEYS,
    DATABASE_URL,
    METRICS_TOKEN,
    PG_APP,
    REDIS_APP_USER,
    REDIS_URL,
    SENTRY_DSN,
)


@dataclass(frozen=True)
class AppEnvArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""
    postgres_host: pulumi.Input[str]
    """The Postgres Service name."""
    postgres_password: pulumi.Input[str]
    """The generated password of the ``portal_app`` role (secret)."""
    redis_host: pulumi.Input[str]
    """The Redis Service name."""
    redis_password: pulumi.Input[str]
    """The generated password of the ``portal_app`` Redis user (secret)."""
    scrape_token: pulumi.Input[str]
    """The token Prometheus presents on ``/metrics`` (secret)."""
    sentry_dsn: pulumi.Input[str] | None = None
    """The Sentry DSN (a secret from the stack config), or ``None``."""


class AppEnv(pulumi.ComponentResource):
    """The ``portal-env`` Secret."""

    secret: k8s.core.v1.Secret
    secret_name: pulumi.Output[str]
    keys: tuple[str, ...]
    """The keys the Secret holds."""

    def __init__(
        self, name: str, args: AppEnvArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:app_env:AppEnv", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        labels = standard_labels(cfg, cfg.names.app, API, None)
        # A key per id, named after it: a new id is a new key, a dropped id a deleted one. 64
        # letters and digits are base64url of 48 bytes (the service wants at least 32).
        secrets = [
            random.RandomPassword(f"{name}-auth-key-{kid}", length=64, special=False, opts=child)
            for kid in cfg.app.auth_key_ids
        ]
        auth_keys: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(*(s.result for s in secrets)).apply(
                lambda values: json.dumps(
                    {
                        "keys": [
                            {"kty": "oct", "alg": "HS256", "kid": kid, "k": value}
                            for kid, value in zip(cfg.app.auth_key_ids, values, strict=True)
                        ]
                    }
                )
            )
        )

        database_url: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.format(
                "postgresql://{0}:{1}@{2}:{3}/{4}",
                PG_APP,
                args.postgres_password,
                args.postgres_host,
                ports.POSTGRES,
                cfg.postgres.database,
            )
        )
        redis_url: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.format(
                "redis://{0}:{1}@{2}:{3}/0",
                REDIS_APP_USER,
                args.redis_password,
                args.redis_host,
                ports.REDIS,
            )
        )
        data: dict[str, pulumi.Input[str]] = {
            DATABASE_URL: database_url,
            REDIS_URL: redis_url,
            AUTH_KEYS: auth_keys,
            METRICS_TOKEN: pulumi.Output.secret(args.scrape_token),
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
        self.register_outputs({"secretName": self.secret_name, "keys": list(self.keys)})
