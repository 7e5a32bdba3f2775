"""Traffic routers on Kubernetes: the ingress-nginx canary Ingress's ``canary-weight``, or, in
``replicas`` mode, the ratio of canary to stable pods (no ingress controller needed)."""

from __future__ import annotations

import math
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contract.config import StackConfig
from contract.labels import CANARY_WEIGHT_ANNOTATION
from rollout.k8s.api import Deployments, TimedApi, api_error
from rollout.ports import TargetError


def _check(weight: int) -> None:
    if not 0 <= weight <= 100:
        raise TargetError(f"weight {weight} is not a percentage (0..100)")


class IngressRouter:
    """The canary Ingress's ``nginx.ingress.kubernetes.io/canary-weight`` annotation."""

    def __init__(self, cfg: StackConfig, api_client: client.ApiClient) -> None:
        self.net: Any = TimedApi(client.NetworkingV1Api(api_client))
        self.namespace = cfg.namespace
        self.name = cfg.names.canary_ingress

    def set_weight(self, weight: int) -> None:
        _check(weight)
        body = {"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: str(weight)}}}
        try:
            self.net.patch_namespaced_ingress(self.name, self.namespace, body)
        except ApiException as exc:
            raise api_error(f"patching Ingress {self.name}", exc) from exc

    def all_to_stable(self) -> None:
        """Before the canary is scaled away: it gets no traffic."""
        self.set_weight(0)

    def weight(self) -> int:
        try:
            ing = self.net.read_namespaced_ingress(self.name, self.namespace)
        except ApiException as exc:
            raise api_error(f"reading Ingress {self.name}", exc) from exc
        return int((ing.metadata.annotations or {}).get(CANARY_WEIGHT_ANNOTATION, "0"))


class ReplicaRouter:
    """The canary's share approximated by pod counts out of ``app.replicas`` in all."""

    def __init__(self, cfg: StackConfig, deployments: Deployments) -> None:
        self.total = cfg.app.replicas
        self.names = cfg.names
        self.deployments = deployments

    def set_weight(self, weight: int) -> None:
        _check(weight)
        d = self.deployments
        canary = (
            max(1, math.ceil(self.total * weight / 100))
            if weight
            else max(1, d.replicas(self.names.canary) or 1)
        )
        stable = self.total if weight == 0 else max(1, self.total - canary)
        d.scale(self.names.canary, canary)
        d.scale(self.names.stable, stable)
        d.wait_rollout(self.names.canary)
        d.wait_rollout(self.names.stable)

    def weight(self) -> int:
        canary = self.deployments.replicas(self.names.canary)
        stable = self.deployments.replicas(self.names.stable)
        return round(100 * canary / (canary + stable)) if canary + stable else 0

    def all_to_stable(self) -> None:
        """Before the canary is scaled away: stable back to all the replicas."""
        self.deployments.scale(self.names.stable, self.total)
