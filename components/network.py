"""The namespace's NetworkPolicies: ``default-deny`` (nothing in, nothing out) and one policy per
workload that allows exactly its flows, as ``contract.network`` lists them (the README's table of
flows; a test evaluates the rendered policies against it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pulumi
import pulumi_kubernetes as k8s

from components import kube
from contract import network
from contract.config import StackConfig
from contract.labels import standard_labels


@dataclass(frozen=True)
class NetworkArgs:
    config: StackConfig
    """The validated stack config."""
    namespace: pulumi.Input[str]
    """Namespace to deploy into (the Namespace resource's name output)."""


class Network(pulumi.ComponentResource):
    """Default deny, and an allow rule per flow."""

    policies: dict[str, k8s.networking.v1.NetworkPolicy]
    """By name: ``default-deny`` and one per workload."""

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("portal:network:Network", name, None, opts)
        cfg = args.config
        labels = standard_labels(cfg, cfg.names.app, "network", None)
        self.policies = {
            policy.name: k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy.name}",
                metadata=kube.metadata(policy.name, args.namespace, labels),
                spec=cast(Any, policy.spec),  # the API's camelCase, as data
                opts=pulumi.ResourceOptions(parent=self),
            )
            for policy in network.policies(cfg)
        }
        self.register_outputs({"policies": sorted(self.policies)})
