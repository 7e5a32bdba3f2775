"""The control plane the cluster tests run against: built from the pinned modules, one Ready node
with a real machine's capacity, and ``scripts/cluster.py`` keeping its promises (``up`` twice is
one cluster, a crashed cluster is replaced, ``down`` leaves nothing running)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.cluster.conftest import NotYet, wait_for
from tests.conftest import REPO, cluster_script
from tests.conftest import script as load_script

SCRIPT = REPO / "scripts" / "cluster.py"


def pinned(module: str, gomod: Path) -> str:
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", gomod.read_text(), re.M)
    assert match, f"{gomod} does not require {module}"
    return match.group(1)


def test_api_server_reports_the_pinned_release(control_plane, kube):
    """The version stamps reach the binary: clients that read /version see the release."""
    release = pinned("k8s.io/kubernetes", REPO / "scripts/cluster/kubernetes/go.mod")
    version = client.VersionApi(kube).get_code()
    assert version.git_version == release == control_plane.versions["kubernetes"]
    major, minor = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", release).groups()
    assert (version.major, version.minor) == (major, minor)
    assert version.build_date.startswith("20")


def test_the_node_is_ready_with_allocatable_capacity_and_a_pod_cidr(control_plane, kube):
    script = cluster_script()
    node = client.CoreV1Api(kube).read_node(control_plane.node)
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready["Ready"] == "True"
    for resource in ("cpu", "memory", "pods"):
        assert node.status.allocatable[resource] == script.NODE_ALLOCATABLE[resource]
    cidr = ipaddress.ip_network(node.spec.pod_cidr)
    assert node.spec.pod_cidr == control_plane.pod_cidr
    assert cidr.prefixlen == 24 and cidr.subnet_of(ipaddress.ip_network(script.CLUSTER_CIDR))


def test_a_node_that_lost_its_addresses_gets_its_address_back(control_plane, kube):
    """The API server reaches the node at its status addresses for pod logs; a node seen
    without them (after an API-server outage) gets kwok's address back at once."""
    core = client.CoreV1Api(kube)
    name = control_plane.node
    core.patch_node_status(
        name, {"status": {"addresses": None}}, _content_type="application/merge-patch+json"
    )

    def addresses() -> list[str] | NotYet:
        found = [a.address for a in core.read_node(name).status.addresses or []]
        return found or NotYet("no addresses")

    assert wait_for("the node's address back", addresses, timeout=60) == ["127.0.0.1"]


def test_wrapper_module_replaces_every_staging_module_with_its_release_tag():
    """The wrapper go.mod is what ``scripts/cluster.py pin`` generates from the release's own
    go.mod: each staging module (``v0.0.0`` plus a local replace upstream) at its tag."""
    script = load_script("cluster_build")
    ours = (REPO / "scripts/cluster/kubernetes/go.mod").read_text()
    release = pinned("k8s.io/kubernetes", REPO / "scripts/cluster/kubernetes/go.mod")
    upstream = Path(script.GO.download("k8s.io/kubernetes", release)["GoMod"]).read_text()
    staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", upstream, re.M)
    replaced = dict(re.findall(r"^\s*(k8s\.io/[\w.-]+) => k8s\.io/[\w.-]+ (v\S+)", ours, re.M))
    tag = "v0." + release.removeprefix("v1.")
    assert len(staging) > 20
    assert replaced == dict.fromkeys(staging, tag)


def cli(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--dir", str(state)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def ours_running(state: Path) -> list[int]:
    """Processes whose command line names the state directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            zombie = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
        except OSError:
            continue
        if str(state) in cmdline and not zombie and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def test_up_twice_is_one_cluster_a_crashed_one_is_replaced_and_down_leaves_nothing(control_plane):
    """Beside the session's control plane: a second cluster on this machine claims a pod CIDR of
    its own (routes to two clusters' pods never collide) and gives it back on ``down``."""
    state = Path(tempfile.mkdtemp(prefix="portal-cluster-cli-", dir="/tmp"))
    try:
        first = cli("up", state=state)
        assert first.returncode == 0, first.stderr
        export = f"export KUBECONFIG={state / 'kubeconfig'}"
        assert first.stdout.strip() == export
        pids = {
            c["name"]: c["pid"]
            for c in json.loads(cli("status", "--json", state=state).stdout)["components"]
        }
        assert set(pids) == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
        }
        cidr = json.loads(cli("status", "--json", state=state).stdout)["pod_cidr"]
        assert cidr != control_plane.pod_cidr

        again = cli("up", state=state)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == export
        assert "starting" not in again.stderr
        assert cli("env", state=state).stdout.strip() == export

        os.kill(pids["kube-apiserver"], signal.SIGKILL)  # a crash
        assert cli("status", state=state).returncode == 1
        restarted = cli("up", state=state)
        assert restarted.returncode == 0, restarted.stderr
        assert "cleaning up a stale cluster" in restarted.stderr
        assert restarted.stdout.strip() == export
        status: dict[str, Any] = json.loads(cli("status", "--json", state=state).stdout)
        now = {c["name"]: c["pid"] for c in status["components"]}
        assert set(now.values()).isdisjoint(pids.values())
        assert set(ours_running(state)) == set(now.values())

        down = cli("down", state=state)
        assert down.returncode == 0, down.stderr
        assert ours_running(state) == []
        claims = cluster_script().CIDR_CLAIMS
        assert not (claims / cidr.replace("/", "_")).exists(), "the pod CIDR is still claimed"
        assert not (state / "cluster.json").exists()
        assert not (state / "etcd").exists()
        assert cli("status", state=state).returncode == 1
    finally:
        cli("down", state=state)
        subprocess.run(["rm", "-rf", str(state)], check=False)
