"""What a set of Kubernetes objects lets connect to what: the NetworkPolicy semantics of the
Kubernetes API (``networking.k8s.io/v1``), evaluated over the pods the workloads' templates make.

Written from the API reference, not from ``contract.network``: a pod is isolated for ingress
(egress) once any policy of its namespace selects it with that policy type; then a connection is
allowed only if some such policy has a rule whose peers match the other end and whose ports match
the destination port. A connection between two pods needs the source's egress and the
destination's ingress. An ``ipBlock`` matches an endpoint whose possible addresses overlap the
block minus its ``except`` (a pod may have any address of the pod networks: so a block that
overlaps them lets pods through).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ContainerPort:
    number: int
    protocol: str = "TCP"
    name: str | None = None


@dataclass
class Endpoint:
    """A pod (in some namespace) or an address outside the cluster."""

    key: str
    namespace: str | None
    """``None``: not a pod (an address outside the cluster)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    networks: Sequence[Network] = ()
    ports: Sequence[ContainerPort] = ()


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions); ``{}`` selects everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _block_matches(block: Mapping[str, Any], networks: Sequence[Network]) -> bool:
    cidr = ipaddress.ip_network(block["cidr"])
    excepted = [ipaddress.ip_network(e) for e in block.get("except") or []]
    for net in networks:
        if net.version != cidr.version or not net.overlaps(cidr):
            continue
        inside = net if net.subnet_of(cidr) else cidr
        if not any(inside.subnet_of(e) for e in excepted if e.version == inside.version):
            return True
    return False


def peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return _block_matches(peer["ipBlock"], other.networks)
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), other.labels)


def port_matches(rule_ports: Sequence[Mapping[str, Any]] | None, port: ContainerPort) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != port.protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            if want == port.name:
                return True
            continue
        if want <= port.number <= p.get("endPort", want):
            return True
    return False


@dataclass
class Policies:
    items: list[dict[str, Any]]

    def _selecting(self, pod: Endpoint, kind: str) -> list[dict[str, Any]]:
        out = []
        for policy in self.items:
            spec = policy["spec"]
            types = spec.get("policyTypes") or (
                ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]
            )
            if policy["metadata"]["namespace"] != pod.namespace or kind not in types:
                continue
            if selects(spec.get("podSelector", {}), pod.labels):
                out.append(policy)
        return out

    def _allowed(self, pod: Endpoint, other: Endpoint, port: ContainerPort, kind: str) -> bool:
        if pod.namespace is None:
            return True  # not a pod: no policy of ours applies
        selecting = self._selecting(pod, kind)
        if not selecting:
            return True
        rules_key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
        for policy in selecting:
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key)
                ns = policy["metadata"]["namespace"]
                if (not peers or any(peer_matches(p, ns, other) for p in peers)) and port_matches(
                    rule.get("ports"), port
                ):
                    return True
        return False

    def connects(self, source: Endpoint, target: Endpoint, port: ContainerPort) -> bool:
        return self._allowed(source, target, port, "Egress") and self._allowed(
            target, source, port, "Ingress"
        )


def pods_of(
    objects: Iterable[Mapping[str, Any]], pod_networks: Sequence[Network]
) -> list[Endpoint]:
    """One endpoint per workload (Deployment, StatefulSet, Job) from its pod template, keyed
    ``<app.kubernetes.io/name>/<app.kubernetes.io/component>``."""
    objects = list(objects)
    namespaces = {
        o["metadata"]["name"]: {
            **(o["metadata"].get("labels") or {}),
            "kubernetes.io/metadata.name": o["metadata"]["name"],
        }
        for o in objects
        if o["kind"] == "Namespace"
    }
    pods: dict[str, Endpoint] = {}
    for o in objects:
        if o["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        template = o["spec"]["template"]
        labels = template["metadata"]["labels"]
        key = f"{labels['app.kubernetes.io/name']}/{labels['app.kubernetes.io/component']}"
        namespace = o["metadata"]["namespace"]
        container_ports = [
            ContainerPort(p["containerPort"], p.get("protocol", "TCP"), p.get("name"))
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        ]
        pods[key] = Endpoint(
            key,
            namespace,
            labels,
            namespaces.get(namespace, {"kubernetes.io/metadata.name": namespace}),
            pod_networks,
            container_ports,
        )
    return list(pods.values())
