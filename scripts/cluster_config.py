#!/usr/bin/env python3
"""What each component of the control plane is started with: addresses, the node, the audit
policy, certificates, tokens and kubeconfigs, and every component's command line
(``scripts/cluster.py`` starts them). Standard library and the ``openssl`` command only.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

from cluster_build import RUNTIME_STAGES, Build, ClusterError

NODE_NAME = "portal-node-1"
# Addresses. Pods get IPs from the node's podCIDR (kwok allocates them); nothing routes there
# unless a test puts processes at those addresses inside its own network namespace.
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
# One node with a common machine size (16 cores, 64 GiB) less the usual system reservations.
NODE_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "200Gi"}
NODE_ALLOCATABLE = {"cpu": "15800m", "memory": "62Gi", "pods": "110", "ephemeral-storage": "190Gi"}

ADMIN_USER = "portal-admin"
# What the API server records of each request (verb, resource, user, answer), for people and
# tests asking what a client really calls: everyone but the control plane's own components.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "None",
            "users": [
                "system:kube-controller-manager",
                "system:kube-scheduler",
                "system:apiserver",
                "portal-kwok",
            ],
        },
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
        {"level": "Metadata"},
    ],
}


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def certificates(pki: Path) -> None:
    """A CA, the API server's serving certificate (127.0.0.1, localhost, the in-cluster names)
    and the service-account signing key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "3650",
        "-subj", "/CN=portal-cluster-ca", "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    openssl("genrsa", "-out", "apiserver.key", "2048", cwd=pki)
    openssl(
        "req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver",
        "-out", "apiserver.csr", cwd=pki,
    )  # fmt: skip
    sans = ",".join(
        [
            "IP:127.0.0.1",
            "IP:10.96.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    (pki / "apiserver.ext").write_text(
        f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
    )
    openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", "apiserver.ext",
        "-out", "apiserver.crt", cwd=pki,
    )  # fmt: skip
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> None:
    """A kubeconfig (JSON is YAML) with the CA inline, so it can be copied anywhere."""
    import base64

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "portal",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "portal", "context": {"cluster": "portal", "user": user}}],
        "current-context": "portal",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def credentials(state: Path, server: str) -> dict[str, str]:
    """A token per user of the control plane (in the API server's token file) and a kubeconfig
    for each component; returns the tokens."""
    pki = state / "pki"
    tokens = {
        ADMIN_USER: ("system:masters",),
        "system:kube-controller-manager": (),
        "system:kube-scheduler": (),
        "portal-kwok": ("system:masters",),  # the fake kubelet writes every node's and pod's status
    }
    issued = {user: secrets.token_hex(24) for user in tokens}
    (pki / "tokens.csv").write_text(
        "".join(
            f"{issued[user]},{user},{user}" + (f',"{",".join(groups)}"' if groups else "") + "\n"
            for user, groups in tokens.items()
        )
    )
    (pki / "tokens.csv").chmod(0o600)
    for user, file in KUBECONFIGS.items():
        kubeconfig(state / file, server, pki / "ca.crt", user, issued[user])
    return issued


KUBECONFIGS = {
    ADMIN_USER: "kubeconfig",
    "system:kube-controller-manager": "controller-manager.kubeconfig",
    "system:kube-scheduler": "scheduler.kubeconfig",
    "portal-kwok": "kwok.kubeconfig",
}


def etcd_argv(bin: Path, state: Path, ports: dict[str, int]) -> list[str]:
    peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    return [
        str(bin / "etcd"),
        "--name=portal",
        f"--data-dir={state / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
        f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=portal={peer}",
        "--log-level=warn",
        # a throwaway test store: no fsync on a disk shared with other builds
        "--unsafe-no-fsync",
    ]


def apiserver_argv(bin: Path, state: Path, ports: dict[str, int], audit_log: Path) -> list[str]:
    pki = state / "pki"
    return [
        str(bin / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports['apiserver']}",
        f"--cert-dir={state / 'certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        # aggregated-API style front proxy headers, trusted from our CA only (the
        # controller-manager and scheduler read this CA to delegate authentication)
        f"--requestheader-client-ca-file={pki / 'ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--token-auth-file={pki / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # the default admission plugins (PodSecurity among them) stay on
        "--allow-privileged=false",
        # the `kubernetes` Service would need a non-loopback address for its endpoints
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "--kubelet-preferred-address-types=InternalIP",
        f"--audit-policy-file={pki / 'audit-policy.json'}",
        f"--audit-log-path={audit_log}",
        "--audit-log-format=json",
        "--audit-log-maxsize=200",
        "--audit-log-maxbackup=1",
    ]


def controller_argv(name: str, bin: Path, state: Path, port: int) -> list[str]:
    """kube-controller-manager or kube-scheduler: its own kubeconfig for everything, on loopback,
    no leader election (one of each)."""
    config = state / KUBECONFIGS[f"system:{name}"]
    pki = state / "pki"
    argv = [
        str(bin / name),
        f"--kubeconfig={config}",
        f"--authentication-kubeconfig={config}",
        f"--authorization-kubeconfig={config}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={state / 'certs'}",
        "--leader-elect=false",
        "--profiling=false",
    ]
    if name == "kube-controller-manager":
        argv += [
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--cluster-cidr={CLUSTER_CIDR}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ]
    return argv


def kwok_argv(built: Build, state: Path, port: int, pod_cidr: str) -> list[str]:
    return [
        str(built.bin / "kwok"),
        f"--kubeconfig={state / KUBECONFIGS['portal-kwok']}",
        f"--manage-single-node={NODE_NAME}",
        f"--cidr={pod_cidr}",
        "--node-ip=127.0.0.1",
        f"--node-port={port}",
        f"--server-address=127.0.0.1:{port}",
        # renew the node's Lease like a kubelet (without it the node lifecycle controller
        # marks the node NotReady, and with it every pod)
        "--node-lease-duration-seconds=40",
        *(f"--config={stage}" for stage in sorted(built.stages.glob("*.yaml"))),
        *(f"--config={stage}" for stage in sorted(RUNTIME_STAGES.glob("*.yaml"))),
        "--enable-crds=Logs",
    ]


def node(pod_cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_ALLOCATABLE},
    }
