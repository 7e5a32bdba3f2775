"""The pod network of the data plane: network namespaces of our own, routed from the host.

The layout is what a point-to-point CNI plugin (Calico's, for one) builds on a node:

- one *node* namespace stands for the node's root namespace. It is joined to the host by a veth
  pair on a /30 of link-local addresses, forwards between its links (``ip_forward`` in that
  namespace only; the host's own setting is untouched), and holds a /32 route to every pod;
- one namespace per pod, with its pod IP (kwok's choice) as a /32 on ``eth0`` and a default route
  through ``169.254.1.1``, which the node side answers by proxy ARP;
- on the host, one route: the cluster's pod CIDR through the node namespace. The API server dials
  a pod IP from the host (pod and service proxies, as it would on a real control-plane node) and
  reaches the pod through it; a pod IP with no pod behind it ends in the node namespace, never on
  the host's uplink.

Only the host, our namespaces and loopback ever see a packet. The API server listens on the
host's loopback, which no pod can reach, so a relay on the host's end of the link forwards to it:
pods find it as ``kubernetes.default.svc`` (a name the server's certificate carries) through
their hosts file, the way in-cluster clients such as Prometheus expect.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

NETNS_DIR = Path("/run/netns")
LOCKS = Path("/tmp")
POD_GATEWAY = "169.254.1.1"
# /30 links between the host and a node namespace, one per claimed pod CIDR (its third octet)
LINKS = ipaddress.IPv4Network("169.254.244.0/22")


class NetworkError(RuntimeError):
    """A namespace, link or route could not be set up; the message names the command."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc.stdout


def sysctl(netns: str, key: str, value: str) -> None:
    """Set ``key`` inside ``netns`` only (a per-namespace setting, written under its /proc/sys)."""
    argv = ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def kill_processes_in(netns: str) -> None:
    """SIGKILL whatever still runs in ``netns`` (a server's own children after its leader)."""
    for pid in (int(p) for p in ip("netns", "pids", netns, check=False).split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def namespaces() -> set[str]:
    return {p.name for p in NETNS_DIR.iterdir()} if NETNS_DIR.exists() else set()


@dataclass
class Relay:
    """TCP relay from ``listen`` (an address on the host end of the link) to ``target`` on
    loopback: how pods reach the API server. One thread accepts; two pump each connection."""

    listen: tuple[str, int]
    target: tuple[str, int]
    _server: socket.socket | None = field(default=None, repr=False)
    _open: set[socket.socket] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> Relay:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, daemon=True, name="api-relay").start()
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._open.difference_update((source, sink))

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()


@dataclass
class PodLink:
    """One pod's namespace and the veth that joins it to the node namespace."""

    netns: str
    ip: str
    node_side: str


class PodNetwork:
    """The node namespace, the host route to the pod CIDR and one namespace per pod.

    Every name starts with ``pdp<n>``, ``n`` the third octet of the pod CIDR, which one running
    cluster on this machine holds at a time (``scripts/cluster.py`` claims it); a lock held for
    the network's life tells a live one from what a killed run left behind, which ``up`` removes.
    """

    def __init__(self, pod_cidr: str, api_server: tuple[str, int]) -> None:
        self.pod_cidr = ipaddress.ip_network(pod_cidr)
        third = int(self.pod_cidr.network_address.packed[2])
        self.prefix = prefix = f"pdp{third}"
        self._lockfile: TextIO | None = None
        link = list(LINKS.subnets(new_prefix=30))[third]
        self.host_ip, self.node_ip = (str(a) for a in list(link.hosts())[:2])
        self.node = f"{prefix}-node"
        self.host_if = f"{prefix}h"
        self.api_server = api_server
        self.relay: Relay | None = None
        self.pods: dict[str, PodLink] = {}
        self._count = 0
        self._lock = threading.Lock()

    # -- the node ------------------------------------------------------------------------------

    def up(self) -> PodNetwork:
        lock = open(LOCKS / f"portal-data-plane-{self.prefix}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NetworkError(
                f"another data plane serves a cluster with pod CIDR {self.pod_cidr} "
                f"(it holds {lock.name})"
            ) from None
        self._lockfile = lock
        self.cleanup_stale()
        taken = [line for line in ip("route", "show", str(self.pod_cidr)).splitlines() if line]
        if taken:
            self._unlock()
            raise NetworkError(
                f"the host already routes {self.pod_cidr} ({taken[0]}); this data plane does not "
                "replace a route it did not make"
            )
        try:
            ip("netns", "add", self.node)
            ip("link", "set", "lo", "up", netns=self.node)
            ip(
                "link",
                "add",
                self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                self.node,
            )
            ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            ip("addr", "add", f"{self.node_ip}/30", "dev", "uplink", netns=self.node)
            ip("link", "set", "uplink", "up", netns=self.node)
            ip("route", "add", "default", "via", self.host_ip, netns=self.node)
            sysctl(self.node, "net.ipv4.ip_forward", "1")
            # a pod IP with no namespace behind it (a pod kwok runs alone) refuses at once
            ip("route", "add", "unreachable", str(self.pod_cidr), netns=self.node)
            ip("route", "add", str(self.pod_cidr), "via", self.node_ip, "dev", self.host_if)
            self.relay = Relay((self.host_ip, self.api_server[1]), self.api_server).start()
        except BaseException:
            self.down()
            raise
        return self

    @property
    def api_endpoint(self) -> tuple[str, int]:
        """Where pods reach the API server (the relay on the host's end of the link)."""
        return self.host_ip, self.api_server[1]

    # -- pods ----------------------------------------------------------------------------------

    def add_pod(self, key: str, pod_ip: str) -> PodLink:
        """A namespace for the pod ``key`` with ``pod_ip``; idempotent."""
        with self._lock:
            if key in self.pods:
                return self.pods[key]
            self._count += 1
            n = self._count
            # kwok hands a deleted pod's IP to the next pod: a namespace still holding it (its
            # pod's processes being stopped) goes now
            stale = [k for k, link in self.pods.items() if link.ip == pod_ip]
        for other in stale:
            self.remove_pod(other)
        if ipaddress.ip_address(pod_ip) not in self.pod_cidr:
            raise NetworkError(f"pod IP {pod_ip} is outside the node's pod CIDR {self.pod_cidr}")
        netns, node_side = f"{self.prefix}-p{n}", f"p{n}"
        ip("netns", "add", netns)
        try:
            ip("link", "set", "lo", "up", netns=netns)
            ip(
                "link",
                "add",
                node_side,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
                netns=self.node,
            )
            sysctl(self.node, f"net.ipv4.conf.{node_side}.proxy_arp", "1")
            ip("link", "set", node_side, "up", netns=self.node)
            ip("route", "replace", f"{pod_ip}/32", "dev", node_side, netns=self.node)
            ip("addr", "add", f"{pod_ip}/32", "dev", "eth0", netns=netns)
            ip("link", "set", "eth0", "up", netns=netns)
            ip("route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link", netns=netns)
            ip("route", "add", "default", "via", POD_GATEWAY, "dev", "eth0", netns=netns)
        except BaseException:
            ip("netns", "delete", netns, check=False)
            raise
        link = PodLink(netns, pod_ip, node_side)
        with self._lock:
            self.pods[key] = link
        return link

    def remove_pod(self, key: str) -> None:
        with self._lock:
            link = self.pods.pop(key, None)
        if link is not None:
            kill_processes_in(link.netns)
            # deleting the namespace deletes its veth end, and with it the peer and the route
            ip("netns", "delete", link.netns, check=False)

    def down(self) -> None:
        """Remove every namespace, link and route this network made (also after a failure)."""
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        for key in list(self.pods):
            self.remove_pod(key)
        self.cleanup_stale()
        self._unlock()

    def _unlock(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing releases the lock
            self._lockfile = None

    def cleanup_stale(self) -> list[str]:
        """Our namespaces (with whatever still runs in them), host link and route, removed:
        also what a killed run left behind."""
        removed = sorted(n for n in namespaces() if n.startswith(f"{self.prefix}-"))
        for name in removed:
            kill_processes_in(name)
            ip("netns", "delete", name, check=False)
        ip("route", "del", str(self.pod_cidr), "via", self.node_ip, check=False)
        ip("link", "del", self.host_if, check=False)
        return removed


@contextlib.contextmanager
def pod_network(pod_cidr: str, api_server: tuple[str, int]) -> Iterator[PodNetwork]:
    network = PodNetwork(pod_cidr, api_server).up()
    try:
        yield network
    finally:
        network.down()
