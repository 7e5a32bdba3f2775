"""A whole release on the Kubernetes target: the engine, the stand-in API server, and a real
Prometheus reached through the API server's service proxy, scraping a metrics source whose
canary behaviour the test sets."""

from __future__ import annotations

import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rollout.engine import ReleaseEngine
from rollout.k8s import kubernetes_target
from rollout.local.processes import free_port, wait_until
from rollout.local.servers import PushgatewayServer
from rollout.ports import ReleaseSpec
from rollout.prometheus import Prometheus

from .conftest import api_client, config

pytestmark = pytest.mark.slow
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0)


class Traffic:
    """Counters that grow at ``rate`` requests/s per track, with an error share and a latency."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.port = 0
        self.tracks: dict[str, dict[str, Any]] = {
            "stable": {"version": "1.0.0", "errors": 0.0, "latency": 0.02},
            "canary": {"version": "2.0.0", "errors": 0.0, "latency": 0.02},
        }
        self.rate = 20.0

    def render(self) -> str:
        elapsed = time.time() - self.t0
        lines = []
        for track, t in self.tracks.items():
            n = self.rate * elapsed
            labels = f'track="{track}",version="{t["version"]}",route="/api/users",method="GET"'
            lines.append(
                f'http_requests_total{{{labels},status="200"}} {n * (1 - t["errors"]):.3f}'
            )
            lines.append(f'http_requests_total{{{labels},status="500"}} {n * t["errors"]:.3f}')
            for le in BUCKETS:
                count = n if t["latency"] <= le else 0
                lines.append(
                    f'http_request_duration_seconds_bucket{{{labels},le="{le}"}} {count:.3f}'
                )
            lines.append(f'http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {n:.3f}')
        return "\n".join(lines) + "\n"


@pytest.fixture
def traffic():
    t = Traffic()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = t.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    t.port = port
    yield t
    server.shutdown()


@pytest.fixture
def pushgateway(server_root):
    server = PushgatewayServer(server_root / f"push-{free_port()}", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def engine_on_cluster(standin, traffic, prometheus_factory, pushgateway):
    prom = prometheus_factory(
        "global: {scrape_interval: 500ms}\n"
        "scrape_configs:\n"
        f"- job_name: portal\n  static_configs: [{{targets: ['127.0.0.1:{traffic.port}']}}]\n"
    )
    standin.service_proxies["prometheus"] = prom.url
    standin.service_proxies["pushgateway"] = pushgateway.url
    client = Prometheus(prom.url)
    wait_until(lambda: bool(client.query("http_requests_total")), 30, "first scrape")
    cfg = config(
        steps=[{"weight": 25, "analysis": "3s"}, {"weight": 100, "analysis": "2s"}],
        interval="0.5s",
        settle="0s",
        minRequests=5,
    )
    target = kubernetes_target(cfg, api_client(standin), poll_s=0.01, timeout_s=5)

    def make():
        return ReleaseEngine(cfg, target)

    return make, target


def test_a_healthy_canary_is_promoted_through_the_api(engine_on_cluster, standin):
    make, target = engine_on_cluster
    engine = make()
    assert "/services/prometheus:9090/proxy" in target.telemetry.prometheus.base_url
    outcome = engine.start(ReleaseSpec("", "2.0.0", "ghcr.io/acme/portal:2.0.0"))
    assert outcome.status == "PROMOTED", outcome.reason
    state = target.workloads.state()
    assert state.stable_image == "ghcr.io/acme/portal:2.0.0" and state.weight == 0
    ingress_writes = [verb for verb, kind, _ in standin.writes if kind == "Ingress"]
    assert ingress_writes.count("patch") == 3  # 25%, 100%, back to 0
    ledger = engine.ledger.read()
    assert ledger.stable.version == "2.0.0"
    assert standin.get("ConfigMap", "portal-staging", "portal-releases")
    assert standin.get("Job", "portal-staging", engine.cfg.names.migration_job("2.0.0"))


def test_an_erroring_canary_is_rolled_back_through_the_api(engine_on_cluster, traffic, pushgateway):
    make, target = engine_on_cluster
    traffic.tracks["canary"]["errors"] = 0.3
    outcome = make().start(ReleaseSpec("", "2.0.0", "ghcr.io/acme/portal:2.0.0"))
    assert outcome.status == "ABORTED"
    assert outcome.incident.check == "error_rate"
    state = target.workloads.state()
    assert state.weight == 0 and state.canary_replicas == 0
    assert state.stable_image == "ghcr.io/acme/portal:1.0.0"
    # the abort reached the Pushgateway through the API server (the PortalReleaseAborted alert)
    with urllib.request.urlopen(f"{pushgateway.url}/metrics", timeout=5) as r:
        pushed = r.read().decode()
    assert f'release="{outcome.release_id}"' in pushed
    assert "portal_release_aborted_timestamp_seconds{" in pushed
