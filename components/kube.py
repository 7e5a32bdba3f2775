"""Building blocks the components share: standard labels, metadata, security contexts, probes,
resources and env entries, as ``pulumi_kubernetes`` input types.

The labels themselves live in ``contract.labels`` (``portalctl`` reads them too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from contract import security
from contract.config import Resources, container_resources
from contract.config.types import split_image

SIDECAR_RESOURCES = container_resources("50m", "64Mi", "250m", "128Mi")
"""Requests and limits of the exporters, kube-state-metrics and the Pushgateway."""


def image_tag(image: str) -> str:
    """The version label of an image: its tag, else the start of its digest
    (``sha256-0123456789ab``)."""
    _, tag, digest = split_image(image)
    if tag:
        return tag
    return (digest or "unknown").replace(":", "-")[:19]


def pull_policy(image: str) -> str:
    return security.pull_policy(image)


def metadata(
    name: str,
    namespace: pulumi.Input[str] | None,
    labels: Mapping[str, str],
    annotations: Mapping[str, pulumi.Input[str]] | None = None,
) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(
        name=name,
        namespace=namespace,
        labels=dict(labels),
        annotations=dict(annotations) if annotations else None,
    )


def _snake(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level camelCase keys as the Args classes spell them (nested values pass as they are)."""
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in spec.items()}


def pod_security(uid: int, gid: int | None = None) -> k8s.core.v1.PodSecurityContextArgs:
    """``contract.security.pod`` as Pulumi input."""
    return k8s.core.v1.PodSecurityContextArgs(**_snake(security.pod(uid, gid)))


def container_security(uid: int | None = None) -> k8s.core.v1.SecurityContextArgs:
    """``contract.security.container`` as Pulumi input."""
    return k8s.core.v1.SecurityContextArgs(**_snake(security.container(uid)))


def resources(r: Resources) -> k8s.core.v1.ResourceRequirementsArgs:
    spec = r.as_k8s()
    return k8s.core.v1.ResourceRequirementsArgs(requests=spec["requests"], limits=spec["limits"])


def http_probe(
    path: str,
    port: str | int,
    *,
    period: int = 10,
    timeout: int = 3,
    failures: int = 3,
    initial_delay: int = 0,
) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port=port),
        period_seconds=period,
        timeout_seconds=timeout,
        failure_threshold=failures,
        initial_delay_seconds=initial_delay or None,
    )


def exec_probe(
    command: Sequence[str],
    *,
    period: int = 10,
    timeout: int = 5,
    failures: int = 3,
) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        exec_=k8s.core.v1.ExecActionArgs(command=list(command)),
        period_seconds=period,
        timeout_seconds=timeout,
        failure_threshold=failures,
    )


def tcp_probe(port: str | int, *, period: int = 10, failures: int = 3) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        tcp_socket=k8s.core.v1.TCPSocketActionArgs(port=port),
        period_seconds=period,
        timeout_seconds=3,
        failure_threshold=failures,
    )


def env(name: str, value: pulumi.Input[str]) -> k8s.core.v1.EnvVarArgs:
    return k8s.core.v1.EnvVarArgs(name=name, value=value)


def env_from_secret(name: str, secret: pulumi.Input[str], key: str) -> k8s.core.v1.EnvVarArgs:
    return k8s.core.v1.EnvVarArgs(
        name=name,
        value_from=k8s.core.v1.EnvVarSourceArgs(
            secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=secret, key=key),
        ),
    )


def port(name: str, number: int) -> k8s.core.v1.ContainerPortArgs:
    return k8s.core.v1.ContainerPortArgs(name=name, container_port=number, protocol="TCP")


def service_port(name: str, number: int, target: str | int) -> k8s.core.v1.ServicePortArgs:
    return k8s.core.v1.ServicePortArgs(name=name, port=number, target_port=target, protocol="TCP")


def empty_dir(name: str, size: str = "64Mi") -> k8s.core.v1.VolumeArgs:
    return k8s.core.v1.VolumeArgs(
        name=name, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=size)
    )


def config_map_volume(name: str, config_map: pulumi.Input[str]) -> k8s.core.v1.VolumeArgs:
    return k8s.core.v1.VolumeArgs(
        name=name, config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config_map)
    )


def mount(name: str, path: str, read_only: bool = False) -> k8s.core.v1.VolumeMountArgs:
    return k8s.core.v1.VolumeMountArgs(name=name, mount_path=path, read_only=read_only or None)


def secret_volume(
    name: str, secret: pulumi.Input[str], keys: Sequence[str] | None = None
) -> k8s.core.v1.VolumeArgs:
    """A Secret's keys as files readable by the pod's group (``fsGroup``) only."""
    items = [k8s.core.v1.KeyToPathArgs(key=k, path=k) for k in keys] if keys else None
    return k8s.core.v1.VolumeArgs(
        name=name,
        secret=k8s.core.v1.SecretVolumeSourceArgs(
            secret_name=secret, items=items, default_mode=0o440
        ),
    )


def exporter(
    name: str,
    image: str,
    number: int,
    env: Sequence[k8s.core.v1.EnvVarArgs],
    health_path: str,
    uid: int,
    mounts: Sequence[k8s.core.v1.VolumeMountArgs] = (),
) -> k8s.core.v1.ContainerArgs:
    """A Prometheus exporter sidecar on its ``metrics`` port."""
    return k8s.core.v1.ContainerArgs(
        name=name,
        image=image,
        image_pull_policy=pull_policy(image),
        ports=[port("metrics", number)],
        env=list(env),
        resources=resources(SIDECAR_RESOURCES),
        readiness_probe=http_probe(health_path, "metrics"),
        liveness_probe=http_probe(health_path, "metrics", period=20, failures=6),
        security_context=container_security(uid),
        volume_mounts=list(mounts) or None,
    )


def single_pod(
    uid: int,
    containers: Sequence[k8s.core.v1.ContainerArgs],
    volumes: Sequence[k8s.core.v1.VolumeArgs] = (),
    account: pulumi.Input[str] | None = None,
) -> k8s.core.v1.PodSpecArgs:
    """A pod running as ``uid``; with ``account``, the ServiceAccount's token is mounted."""
    return k8s.core.v1.PodSpecArgs(
        service_account_name=account,
        security_context=pod_security(uid),
        automount_service_account_token=None if account else False,
        enable_service_links=False,
        containers=list(containers),
        volumes=list(volumes) or None,
    )
