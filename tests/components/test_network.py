"""Which pod may open a connection to which port, derived from the rendered objects of each
stack (the NetworkPolicies evaluated over the pods' labels and ports, ``netpol.py``), is exactly
the README's table of flows: every other connection is denied."""

from __future__ import annotations

import copy
import ipaddress
import re

import pytest

from components.mockrun import run_program
from components.render import manifests
from contract.config import parse_config, read_stack_values
from contract.network import (
    RECEIVER_PORTS_CELL,
    condition_holds,
    markdown,
    receiver_ports,
    table_rows,
)
from tests.components.netpol import ContainerPort, Endpoint, Policies, pods_of
from tests.conftest import REPO

HEADER = "| From | To | Ports | When | Why |"
CONTROL_PLANE = ipaddress.ip_network("10.0.0.10/32")
"""An address of the API server inside the stacks' apiServerCidrs."""
PUBLIC = ipaddress.ip_network("52.95.110.1/32")
"""An address on the internet (where S3 answers)."""
SENTRY_HOST = ipaddress.ip_network("34.120.195.249/32")
"""Where the Sentry of the stack with Sentry on answers (its sentryCidrs)."""
RECEIVER_HOST = ipaddress.ip_network("44.210.10.7/32")
"""Where Alertmanager's receivers answer (inside the stacks' receiverCidrs)."""


def readme_flows() -> list[tuple[str, str, str, str]]:
    """(from, to, port, when) of every row of the README's table, one per port."""
    text = (REPO / "README.md").read_text()
    assert text.count(HEADER) == 1, "the README has one table of flows"
    rows = []
    for line in text.split(HEADER, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        source, target, ports, when = cells[:4]
        if ports == RECEIVER_PORTS_CELL:  # those of the stack's receivers: see expected()
            rows.append((source, target, ports, when))
            continue
        rows += [(source, target, port, when) for port in ports.split()]
    assert rows
    return rows


def expected(cfg) -> set[tuple[str, str, str]]:
    out = set()
    for s, t, p, when in readme_flows():
        if not condition_holds(cfg, when):
            continue
        ports = [f"{n}/TCP" for n in receiver_ports(cfg)] if p == RECEIVER_PORTS_CELL else [p]
        out |= {(s, t, port) for port in ports}
    return out


def endpoints(cfg, objects):
    pod_networks = [ipaddress.ip_network(c) for c in cfg.network.pod_cidrs]
    pods = pods_of(objects, pod_networks)
    net = cfg.network
    s3_port = 443
    outside = [
        Endpoint(
            "ingress-controller",
            net.ingress_namespace,
            dict(net.ingress_pod_labels),
            {"kubernetes.io/metadata.name": net.ingress_namespace},
            pod_networks,
            [ContainerPort(80), ContainerPort(443)],
        ),
        Endpoint(
            "kube-dns",
            net.dns_namespace,
            dict(net.dns_pod_labels),
            {"kubernetes.io/metadata.name": net.dns_namespace},
            pod_networks,
            [ContainerPort(53, "UDP"), ContainerPort(53, "TCP"), ContainerPort(9153)],
        ),
        Endpoint(
            "api-server",
            None,
            networks=[CONTROL_PLANE],
            ports=[ContainerPort(p) for p in net.api_server_ports],
        ),
        Endpoint("s3", None, networks=[PUBLIC], ports=[ContainerPort(s3_port)]),
        # A pod of another namespace that copies our labels: nothing lets it in or out.
        Endpoint(
            "stranger",
            "elsewhere",
            {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/component": "monitoring"},
            {"kubernetes.io/metadata.name": "elsewhere"},
            pod_networks,
            [ContainerPort(80), ContainerPort(5432), ContainerPort(8080)],
        ),
    ]
    if receiver_ports(cfg):  # where the receivers answer, and a port none of them uses
        outside.append(
            Endpoint(
                "receivers",
                None,
                networks=[RECEIVER_HOST],
                ports=[ContainerPort(p) for p in (*receiver_ports(cfg), 9999)],
            )
        )
    if cfg.sentry_enabled:  # the Sentry host of a stack that reports to one
        outside.append(
            Endpoint(
                "sentry",
                None,
                networks=[SENTRY_HOST],
                ports=[ContainerPort(net.sentry_port), ContainerPort(9000)],
            )
        )
    return pods, outside


def derived(cfg, objects) -> set[tuple[str, str, str]]:
    """Every (from, to, port/protocol) the policies allow."""
    policies = Policies([o for o in objects if o["kind"] == "NetworkPolicy"])
    pods, outside = endpoints(cfg, objects)
    everyone = pods + outside
    allowed = set()
    for source in everyone:
        for target in everyone:
            if cfg.namespace not in (source.namespace, target.namespace):
                continue  # neither end is a pod of the stack: not its policies' business
            for port in target.ports:
                if policies.connects(source, target, port):
                    allowed.add((source.key, target.key, f"{port.number}/{port.protocol}"))
    return allowed


def test_the_connections_the_policies_allow_are_the_readme_table(run, configs):
    cfg = configs[run.stack]
    objects = manifests(run)
    got, want = derived(cfg, objects), expected(cfg)
    assert got - want == set(), f"allowed but not in the README's table: {sorted(got - want)}"
    assert want - got == set(), f"in the README's table but denied: {sorted(want - got)}"


def test_every_pod_of_the_namespace_is_isolated_both_ways(run, configs):
    cfg = configs[run.stack]
    objects = manifests(run)
    policies = Policies([o for o in objects if o["kind"] == "NetworkPolicy"])
    pods, _ = endpoints(cfg, objects)
    assert len(pods) >= 10
    for pod in pods:
        for kind in ("Ingress", "Egress"):
            assert policies._selecting(pod, kind), f"{pod.key}: not isolated for {kind}"


def test_dropping_one_rule_denies_exactly_that_flow(runs, configs):
    """The comparison can fail: without the rule that lets Prometheus scrape the app, that
    flow (and only it) disappears from what the policies allow."""
    cfg = configs["staging"]
    objects = copy.deepcopy(manifests(runs["staging"]))
    before = derived(cfg, objects)
    policy = next(
        o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "portal"
    )
    policy["spec"]["ingress"] = [
        r for r in policy["spec"]["ingress"] if not any("prometheus" in str(p) for p in r["from"])
    ]
    after = derived(cfg, objects)
    assert before - after == {("prometheus/monitoring", "portal/api", "8000/TCP")}


def test_a_pod_network_missing_from_pod_cidrs_shows_as_a_hole(configs, runs):
    """If the cluster's pods lived in a range the stack does not except, they would pass for
    the API server and reach the Pushgateway: the evaluation sees it."""
    cfg = configs["staging"]
    objects = manifests(runs["staging"])
    policies = Policies([o for o in objects if o["kind"] == "NetworkPolicy"])
    pods, _ = endpoints(cfg, objects)
    pushgateway = next(p for p in pods if p.key == "pushgateway/release-events")
    unlisted = ipaddress.ip_network(cfg.network.api_server_cidrs[0])
    elsewhere = Endpoint("x", "other", {}, {}, [unlisted])
    assert policies.connects(elsewhere, pushgateway, ContainerPort(9091))
    excepted = Endpoint("x", "other", {}, {}, [ipaddress.ip_network(cfg.network.pod_cidrs[0])])
    assert not policies.connects(excepted, pushgateway, ContainerPort(9091))


def test_with_sentry_on_the_service_reaches_sentry_and_nothing_else_changes(configs, runs):
    """A Sentry DSN brings the one flow of the table marked ``sentry on``: the service to the
    Sentry host's addresses (``sentryCidrs``) on ``sentryPort``. Without a DSN the same host is
    out of reach of every pod."""
    dsn = "https://k@o1.ingest.sentry.io/1"
    values = copy.deepcopy(read_stack_values(REPO / "Pulumi.staging.yaml"))
    values["network"] = {**values.get("network", {}), "sentryCidrs": ["34.120.0.0/16"]}
    cfg = parse_config({**values, "sentryDsn": dsn}, "staging")
    on = derived(cfg, manifests(run_program("staging", values, {"sentryDsn": dsn})))
    assert on == expected(cfg)
    # The stack without a DSN, the Sentry host present all the same: nothing reaches it.
    off = derived(cfg, manifests(runs["staging"]))
    assert on - off == {("portal/api", "sentry", "443/TCP")}
    assert off - on == set()
    assert not any("sentry" in flow for flow in expected(configs["staging"]))


@pytest.mark.parametrize("stack", ["prod"])
def test_the_readme_table_is_the_one_the_policies_are_generated_from(stack):
    cfg = parse_config(read_stack_values(REPO / f"Pulumi.{stack}.yaml"), stack)
    text = (REPO / "README.md").read_text()
    assert markdown(table_rows(cfg)) in text, "python -m contract.network prints the table"


@pytest.mark.parametrize("key", ["apiServerCidrs", "s3Cidrs", "sentryCidrs", "receiverCidrs"])
def test_the_pod_ranges_a_stack_names_are_checked(key):
    values = copy.deepcopy(read_stack_values(REPO / "Pulumi.staging.yaml"))
    values["network"] = {key: ["10.244.1.0/24"], "podCidrs": ["10.244.0.0/16"]}
    with pytest.raises(Exception, match=re.escape(f"portal:network.{key}[0]")):
        parse_config(values, "staging")
