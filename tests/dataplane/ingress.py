"""An ingress controller for one namespace: real nginx, configured from the real API.

It does what ingress-nginx does for our stacks' two Ingresses: the main Ingress routes to its
Service's ready endpoints, and the Ingress annotated ``nginx.ingress.kubernetes.io/canary:
"true"`` takes ``canary-weight`` percent of the requests to its own Service's endpoints. The
endpoints come from the Services' EndpointSlices (what the endpoint controller derives from the
pods' readiness), the weight from the annotation ``portalctl`` patches; a change rewrites the
config and reloads nginx. nginx listens on loopback; its upstreams are pod IPs, reached through
the data plane's route. Load generators send their requests to ``url`` with the Ingress's host.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from rollout.local.processes import free_port
from rollout.local.servers import NginxServer

CANARY = "nginx.ingress.kubernetes.io/canary"
WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
REFRESH_S = 0.3
log = logging.getLogger("dataplane.ingress")


def _backend(ingress: Any) -> tuple[str, Any]:
    path = ingress.spec.rules[0].http.paths[0]
    return path.backend.service.name, path.backend.service.port


class IngressController:
    def __init__(self, api_client: client.ApiClient, namespace: str, directory: Path) -> None:
        self.net: Any = client.NetworkingV1Api(api_client)
        self.core: Any = client.CoreV1Api(api_client)
        self.discovery: Any = client.DiscoveryV1Api(api_client)
        self.namespace = namespace
        self.directory = directory
        self.nginx: NginxServer | None = None
        self.routes: tuple[tuple[str, ...], tuple[str, ...], int] = ((), (), 0)
        self.reloads = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def _endpoints(self, service: str, port: Any) -> tuple[str, ...]:
        svc = self.core.read_namespaced_service(service, self.namespace)
        wanted = port.name or str(port.number)
        target = next(
            (p for p in svc.spec.ports if p.name == wanted or str(p.port) == wanted), None
        )
        if target is None:
            return ()
        slices = self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={service}"
        ).items
        out = []
        for s in slices:
            ports = {p.name: p.port for p in s.ports or []}
            number = ports.get(target.name) or next(iter(ports.values()), None)
            for e in s.endpoints or []:
                if e.conditions.ready and number:
                    out += [f"{a}:{number}" for a in e.addresses]
        return tuple(sorted(out))

    def read_routes(self) -> tuple[tuple[str, ...], tuple[str, ...], int]:
        """(stable endpoints, canary endpoints, canary weight) from the namespace's Ingresses."""
        stable: tuple[str, ...] = ()
        canary: tuple[str, ...] = ()
        weight = 0
        for ingress in self.net.list_namespaced_ingress(self.namespace).items:
            annotations = ingress.metadata.annotations or {}
            service, port = _backend(ingress)
            if annotations.get(CANARY) == "true":
                canary = self._endpoints(service, port)
                weight = int(annotations.get(WEIGHT, "0"))
            else:
                stable = self._endpoints(service, port)
        return stable, canary, weight

    def config(self, port: int) -> str:
        stable, canary, weight = self.routes
        if not canary:  # ingress-nginx sends nothing to a canary without endpoints
            weight = 0
        if not stable and canary:
            weight = 100

        def upstream(name: str, servers: tuple[str, ...]) -> str:
            lines = [f"    server {s} max_fails=0;" for s in servers] or [
                "    server 127.0.0.1:1 down;"
            ]
            return f"  upstream {name} {{\n" + "\n".join(lines) + "\n    keepalive 16;\n  }\n"

        split = (
            f'    {weight}% "canary";\n    * "stable";\n'
            if 0 < weight < 100
            else f'    * "{"canary" if weight >= 100 else "stable"}";\n'
        )
        return (
            "worker_processes 1;\npid nginx.pid;\nevents { worker_connections 1024; }\n"
            "http {\n  access_log off;\n"
            f"  client_body_temp_path tmp;\n  proxy_temp_path tmp;\n"
            f"  split_clients $request_id $track {{\n{split}  }}\n"
            f"{upstream('stable', stable)}{upstream('canary', canary)}"
            f"  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n"
            '      proxy_http_version 1.1;\n      proxy_set_header Connection "";\n'
            "      proxy_connect_timeout 2s;\n      proxy_pass http://$track;\n    }\n  }\n}\n"
        )

    def start(self) -> IngressController:
        self.routes = self.read_routes()
        port = free_port()
        self.nginx = NginxServer(self.directory, port, self.config(port)).start()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ingress")
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                routes = self.read_routes()
            except Exception as exc:  # the API server gone for a while included: keep routing
                log.warning("ingress: %s", exc)
                continue
            if routes != self.routes and self.nginx is not None:
                self.routes = routes
                self.nginx.reload(self.config(self.nginx.port))
                self.reloads += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.nginx is not None:
            self.nginx.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[IngressController]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
