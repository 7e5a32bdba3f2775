"""The ``Telemetry`` port: Prometheus and the Pushgateway, reached with the target's credentials.

Release events go out in the Prometheus text format through ``prometheus_client``'s
``push_to_gateway`` (PUT replaces the release's group). On a cluster both are reached through
the API server's service proxy, so the push carries the kubeconfig's credentials and trusts its
CA: a handler of our own opens the request with them.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from contract.promql import RELEASE_ABORTED, RELEASE_JOB, RELEASE_STATUS
from rollout.http import HttpAuth
from rollout.ports import ReleaseEvent, TelemetryError, Unavailable
from rollout.prometheus import Prometheus


class PrometheusTelemetry:
    def __init__(
        self,
        prometheus_url: str,
        pushgateway_url: str,
        *,
        rate_window: str,
        auth: HttpAuth | None = None,
        dashboard_hint: str | None = None,
    ) -> None:
        self.auth = auth or HttpAuth()
        self.pushgateway_url = pushgateway_url.rstrip("/")
        self._prometheus = Prometheus(
            prometheus_url, headers=self.auth.headers, ssl_context=self.auth.ssl_context
        )
        self._rate_window = rate_window
        self._dashboard_hint = dashboard_hint

    @property
    def prometheus(self) -> Prometheus:
        return self._prometheus

    @property
    def rate_window(self) -> str:
        return self._rate_window

    def dashboard(self, path: str) -> str | Unavailable:
        if self._dashboard_hint is None:
            return Unavailable("this target runs no Grafana")
        return self._dashboard_hint.format(path=path)

    def publish(self, event: ReleaseEvent) -> None:
        registry = CollectorRegistry()
        Gauge(
            RELEASE_STATUS,
            "State of a release: 0 in progress, 1 promoted, 2 aborted.",
            ["version"],
            registry=registry,
        ).labels(event.version).set(event.status)
        if event.aborted_at is not None:
            Gauge(
                RELEASE_ABORTED,
                "When the release was aborted (unix seconds).",
                ["version"],
                registry=registry,
            ).labels(event.version).set(round(event.aborted_at, 3))
        try:
            push_to_gateway(
                self.pushgateway_url,
                job=RELEASE_JOB,
                registry=registry,
                grouping_key={"stack": event.stack, "release": event.release_id},
                timeout=3,
                handler=self._handler,
            )
        except (urllib.error.URLError, OSError) as exc:
            raise TelemetryError(
                f"could not push release state to {self.pushgateway_url}: {exc}"
            ) from exc

    def _handler(
        self,
        url: str,
        method: str,
        timeout: float | None,
        headers: Sequence[tuple[str, str]],
        data: bytes,
    ) -> Callable[[], None]:
        def handle() -> None:
            request = urllib.request.Request(
                url, data=data, method=method, headers={**dict(headers), **self.auth.headers()}
            )
            with urllib.request.urlopen(request, timeout=timeout, context=self.auth.ssl_context):
                pass

        return handle
