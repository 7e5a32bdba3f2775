"""The network of a stack: every connection a pod of the namespace opens or accepts, as a table of
flows, and the NetworkPolicies that allow exactly those (plain data, camelCase, as the API takes
them; ``components.network`` deploys them).

The namespace denies everything in and out (``default-deny``); each workload then gets one
NetworkPolicy whose ingress rules are the flows that end at it and whose egress rules are the
flows that start at it. A flow between two pods of the namespace is therefore allowed on both
sides. Adding a flow is one line in ``flows`` (and one row in the README's table, which a test
compares with what the rendered policies allow).

Peers outside the namespace come from ``portal:network``: the ingress controller and the cluster
DNS by namespace and pod labels, the API server, the S3 endpoint, Sentry and Alertmanager's
receivers by address ranges (with the pod networks excepted, so no pod passes for them).

``python -m contract.network [--stack STACK]`` prints the table in the README's format.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from contract import labels, ports
from contract.config import StackConfig

Protocol = Literal["TCP", "UDP"]
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""The label the API server puts on every Namespace (its name)."""

DEFAULT_DENY = "default-deny"


@dataclass(frozen=True)
class Workload:
    """Pods of the namespace, selected by their ``name`` and ``component`` labels."""

    name: str
    component: str
    policy: str
    """The NetworkPolicy of these pods."""

    @property
    def key(self) -> str:
        """How the table names it: ``portal/api``."""
        return f"{self.name}/{self.component}"

    @property
    def selector(self) -> dict[str, str]:
        return labels.selector(self.name, self.component)


@dataclass(frozen=True)
class External:
    """A peer outside the namespace (``api-server``, ``kube-dns``...)."""

    key: str


@dataclass(frozen=True)
class Port:
    number: int
    protocol: Protocol = "TCP"

    def __str__(self) -> str:
        return f"{self.number}/{self.protocol}"


Peer = Workload | External


@dataclass(frozen=True)
class Flow:
    """``source`` may open connections to ``target`` on ``ports``."""

    source: Peer
    target: Peer
    ports: tuple[Port, ...]
    why: str
    when: str = "always"
    """``always``, or the feature of the stack that brings this flow (``backup on``,
    ``sentry on``)."""


def tcp(*numbers: int) -> tuple[Port, ...]:
    return tuple(Port(n) for n in numbers)


DNS_PORTS = (Port(53, "UDP"), Port(53, "TCP"))

INGRESS_CONTROLLER = External("ingress-controller")
API_SERVER = External("api-server")
KUBE_DNS = External("kube-dns")
S3 = External("s3")
SENTRY = External("sentry")
RECEIVERS = External("receivers")
"""The integrations of ``portal:alerts.receivers`` (webhook, Slack, PagerDuty, the SMTP relay)."""

CONDITIONS = ("always", "backup on", "sentry on", "receivers set")
"""When a flow exists: always, or with a feature of the stack on."""


def condition_holds(cfg: StackConfig, when: str) -> bool:
    """Whether the stack has the flows of ``when``."""
    return {
        "always": True,
        "backup on": cfg.migrations.backup.enabled,
        "sentry on": cfg.sentry_enabled,
        "receivers set": bool(receiver_ports(cfg)),
    }[when]


@dataclass(frozen=True)
class Workloads:
    """The stack's workloads."""

    app: Workload
    migration: Workload
    roles: Workload
    postgres: Workload
    redis: Workload
    prometheus: Workload
    pushgateway: Workload
    kube_state_metrics: Workload
    grafana: Workload
    jaeger: Workload
    alertmanager: Workload

    def all(self) -> tuple[Workload, ...]:
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)


def workloads(cfg: StackConfig) -> Workloads:
    n = cfg.names
    return Workloads(
        app=Workload(n.app, labels.API, n.app),
        migration=Workload(n.app, labels.MIGRATION, f"{n.app}-{labels.MIGRATION}"),
        roles=Workload(n.postgres, labels.ROLES, n.postgres_roles),
        postgres=Workload(n.postgres, labels.DATABASE, n.postgres),
        redis=Workload(n.redis, labels.CACHE, n.redis),
        prometheus=Workload(n.prometheus, labels.MONITORING, n.prometheus),
        pushgateway=Workload(n.pushgateway, labels.RELEASE_EVENTS, n.pushgateway),
        kube_state_metrics=Workload(
            n.kube_state_metrics, labels.CLUSTER_METRICS, n.kube_state_metrics
        ),
        grafana=Workload(n.grafana, labels.DASHBOARDS, n.grafana),
        jaeger=Workload(n.jaeger, labels.TRACING, n.jaeger),
        alertmanager=Workload(n.alertmanager, labels.ALERTING, n.alertmanager),
    )


# Ports of the observability workloads (their containers declare the same numbers).
GRAFANA_PORT = 3000
JAEGER_UI_PORT = 16686
JAEGER_OTLP_GRPC_PORT = 4317
JAEGER_OTLP_HTTP_PORT = 4318


def s3_port(cfg: StackConfig) -> int:
    """The port of the backup's S3 endpoint (443 for AWS itself)."""
    endpoint = cfg.migrations.backup.endpoint
    if not endpoint:
        return 443
    parts = urlsplit(endpoint)
    return parts.port or (80 if parts.scheme == "http" else 443)


def _url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (80 if parts.scheme == "http" else 443)


def receiver_ports(cfg: StackConfig) -> tuple[int, ...]:
    """The ports Alertmanager's receivers listen on (none configured: none)."""
    r = cfg.alerts.receivers
    found = set()
    if r.webhook is not None:
        found.add(_url_port(str(r.webhook.url)))
    if r.slack is not None:
        found.add(443)  # the incoming webhook URL is a secret: Slack's own HTTPS
    if r.pagerduty is not None:
        found.add(_url_port(str(r.pagerduty.url)) if r.pagerduty.url else 443)
    if r.email is not None:
        found.add(int(str(r.email.smarthost).rsplit(":", 1)[1]))
    return tuple(sorted(found))


def flows(cfg: StackConfig) -> list[Flow]:
    """Every connection the stack uses, one line each."""
    return [f for f in all_flows(cfg) if condition_holds(cfg, f.when)]


def all_flows(cfg: StackConfig) -> list[Flow]:
    """Every connection a stack with this config may use, its features on or off."""
    w = workloads(cfg)
    n = cfg.names
    app = tcp(cfg.app.port)
    api = tcp(*cfg.network.api_server_ports)
    table = [
        Flow(INGRESS_CONTROLLER, w.app, app, "user requests through the Ingress"),
        Flow(API_SERVER, w.app, app, "portalctl's health checks (pod proxy)"),
        Flow(w.app, w.postgres, tcp(ports.POSTGRES), "queries (role portal_app)"),
        Flow(w.app, w.redis, tcp(ports.REDIS), "the cache (ACL user portal_app)"),
        Flow(w.app, w.jaeger, tcp(JAEGER_OTLP_HTTP_PORT), "traces (OTLP/HTTP)"),
        Flow(w.app, KUBE_DNS, DNS_PORTS, "name lookups"),
        Flow(w.app, SENTRY, tcp(cfg.network.sentry_port), "error reports", "sentry on"),
        Flow(w.migration, w.postgres, tcp(ports.POSTGRES), "migrations and pg_dump"),
        Flow(w.migration, KUBE_DNS, DNS_PORTS, "name lookups"),
        Flow(w.migration, S3, tcp(s3_port(cfg)), "the pre-migration backup", "backup on"),
        Flow(w.roles, w.postgres, tcp(ports.POSTGRES), "creates the roles (superuser)"),
        Flow(w.roles, KUBE_DNS, DNS_PORTS, "name lookups"),
        Flow(w.prometheus, w.app, app, "scrapes /metrics"),
        Flow(w.prometheus, w.postgres, tcp(ports.POSTGRES_EXPORTER), "scrapes the exporter"),
        Flow(w.prometheus, w.redis, tcp(ports.REDIS_EXPORTER), "scrapes the exporter"),
        Flow(w.prometheus, w.pushgateway, tcp(n.pushgateway_port), "scrapes release events"),
        Flow(w.prometheus, w.kube_state_metrics, tcp(ports.KUBE_STATE_METRICS), "scrapes"),
        Flow(w.prometheus, API_SERVER, api, "discovers the app's pods"),
        Flow(w.prometheus, KUBE_DNS, DNS_PORTS, "name lookups"),
        Flow(API_SERVER, w.prometheus, tcp(n.prometheus_port), "portalctl's queries (proxy)"),
        Flow(API_SERVER, w.pushgateway, tcp(n.pushgateway_port), "portalctl's pushes (proxy)"),
        Flow(w.kube_state_metrics, API_SERVER, api, "lists and watches the namespace"),
        Flow(w.grafana, w.prometheus, tcp(n.prometheus_port), "dashboards' queries"),
        Flow(w.grafana, w.jaeger, tcp(JAEGER_UI_PORT), "the traces datasource"),
        Flow(w.grafana, KUBE_DNS, DNS_PORTS, "name lookups"),
        Flow(w.prometheus, w.alertmanager, tcp(n.alertmanager_port), "sends firing alerts"),
        Flow(
            API_SERVER,
            w.alertmanager,
            tcp(n.alertmanager_port),
            "portalctl's release events and silences (proxy)",
        ),
        Flow(w.alertmanager, KUBE_DNS, DNS_PORTS, "name lookups"),
        Flow(
            w.alertmanager,
            RECEIVERS,
            tcp(*receiver_ports(cfg)),
            "notifications",
            "receivers set",
        ),
    ]
    return table


# ---------------------------------------------------------------------------- policies


def _except(cidr: str, excluded: Sequence[str]) -> list[str]:
    """The networks of ``excluded`` strictly inside ``cidr``."""
    net = ipaddress.ip_network(cidr)
    out: list[str] = []
    for other in excluded:
        p = ipaddress.ip_network(other)
        inside = p.version == net.version and p != net and p.subnet_of(net)  # type: ignore[arg-type]
        if inside and str(p) not in out:
            out.append(str(p))
    return out


def _ip_blocks(cidrs: Sequence[str], excluded: Sequence[str]) -> list[dict[str, Any]]:
    blocks = []
    for cidr in cidrs:
        block: dict[str, Any] = {"cidr": cidr}
        excepted = _except(cidr, excluded)
        if excepted:
            block["except"] = excepted
        blocks.append({"ipBlock": block})
    return blocks


def peers(cfg: StackConfig, peer: Peer) -> list[dict[str, Any]]:
    """``peer`` as NetworkPolicyPeers (seen from a policy in the stack's namespace)."""
    net = cfg.network
    if isinstance(peer, Workload):
        return [{"podSelector": {"matchLabels": peer.selector}}]
    if peer == INGRESS_CONTROLLER:
        return [_in_namespace(net.ingress_namespace, net.ingress_pod_labels)]
    if peer == KUBE_DNS:
        return [_in_namespace(net.dns_namespace, net.dns_pod_labels)]
    if peer == API_SERVER:
        # No pod passes for the API server.
        return _ip_blocks(net.api_server_cidrs, net.pod_cidrs)
    if peer == S3:
        # Nor for S3; and the S3 range does not open the control plane's addresses.
        return _ip_blocks(net.s3_cidrs, [*net.pod_cidrs, *net.api_server_cidrs])
    if peer == SENTRY:
        return _ip_blocks(net.sentry_cidrs, [*net.pod_cidrs, *net.api_server_cidrs])
    if peer == RECEIVERS:
        return _ip_blocks(net.receiver_cidrs, [*net.pod_cidrs, *net.api_server_cidrs])
    raise ValueError(f"no NetworkPolicy peer for {peer.key}")


def _in_namespace(namespace: str, pod_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
        "podSelector": {"matchLabels": dict(pod_labels)},
    }


def _ports(flow: Flow) -> list[dict[str, Any]]:
    return [{"port": p.number, "protocol": p.protocol} for p in flow.ports]


@dataclass(frozen=True)
class Policy:
    """One NetworkPolicy: ``name`` and its ``spec``."""

    name: str
    spec: dict[str, Any]


def policies(cfg: StackConfig) -> list[Policy]:
    """One policy per workload allowing exactly its flows, then ``default-deny`` (last, so a
    namespace that had none keeps its flows while the policies arrive)."""
    table = flows(cfg)
    out = []
    for w in workloads(cfg).all():
        ingress = [
            {"from": peers(cfg, f.source), "ports": _ports(f)} for f in table if f.target == w
        ]
        egress = [{"to": peers(cfg, f.target), "ports": _ports(f)} for f in table if f.source == w]
        spec: dict[str, Any] = {
            "podSelector": {"matchLabels": w.selector},
            "policyTypes": ["Ingress", "Egress"],
        }
        if ingress:
            spec["ingress"] = ingress
        if egress:
            spec["egress"] = egress
        out.append(Policy(w.policy, spec))
    out.append(Policy(DEFAULT_DENY, {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    return out


# ---------------------------------------------------------------------------- the table

TABLE_HEADER = ("From", "To", "Ports", "When", "Why")


def _name(peer: Peer) -> str:
    return peer.key


RECEIVER_PORTS_CELL = "the receivers' ports"
"""The ports column of the receivers' row: those of the URLs and relay of ``portal:alerts``."""


def table_rows(cfg: StackConfig) -> list[tuple[str, str, str, str, str]]:
    return [
        (
            _name(f.source),
            _name(f.target),
            RECEIVER_PORTS_CELL if f.target == RECEIVERS else " ".join(str(p) for p in f.ports),
            f.when,
            f.why,
        )
        for f in all_flows(cfg)
    ]


def markdown(rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += [
        "| "
        + " | ".join(f"`{c}`" if i < 3 and c != RECEIVER_PORTS_CELL else c for i, c in enumerate(r))
        + " |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from contract.config import load_stack

    p = argparse.ArgumentParser(prog="python -m contract.network", description=__doc__)
    p.add_argument("--stack", default="prod", help="the stack file to read (default prod)")
    args = p.parse_args(argv)
    print(markdown(table_rows(load_stack(args.stack))), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
