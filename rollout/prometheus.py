"""The one Prometheus HTTP API client of the product (release gates, runbooks, drills).

Every failure to get an answer (unreachable, timeout, HTTP error, PromQL error, a body that is
not the API's JSON) is a ``PrometheusError`` whose message names the URL and the query, so a gate
can turn it into PROVIDER_ERROR and a runbook can say "Prometheus is down" instead of crashing.
"""

from __future__ import annotations

import contextlib
import json
import math
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class PrometheusError(RuntimeError):
    """Prometheus did not answer the query (the message says where and why)."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One element of a range query's matrix: ``points`` are ``(unix seconds, value)``."""

    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]


def _number(raw: Any) -> float:
    value = float(raw)
    return value


class Prometheus:
    """Client of ``<base_url>/api/v1``."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = headers or {}
        """Sent with every request (a bearer token when reached through the API server); a
        function is asked at every request (credentials that refresh)."""
        self.ssl_context = ssl_context

    def _open(self, url: str) -> Any:
        headers = self.headers() if callable(self.headers) else self.headers
        req = urllib.request.Request(url, headers=dict(headers))
        return urllib.request.urlopen(req, timeout=self.timeout_s, context=self.ssl_context)

    def _get(self, path: str, params: dict[str, str], what: str) -> Any:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with self._open(url) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                detail = json.loads(detail).get("error", detail)
            raise PrometheusError(
                f"Prometheus at {self.base_url} rejected {what}: HTTP {exc.code}: {detail.strip()}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(
                f"Prometheus at {self.base_url} is unreachable ({reason}) for {what}"
            ) from exc
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise PrometheusError(
                f"Prometheus at {self.base_url} answered {what} with something that is not JSON"
            ) from exc
        if not isinstance(doc, dict) or doc.get("status") != "success":
            error = doc.get("error") if isinstance(doc, dict) else doc
            raise PrometheusError(f"Prometheus at {self.base_url} failed {what}: {error}")
        return doc.get("data")

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Evaluate ``promql`` as an instant query (now, or at unix time ``at``)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params, f"query `{promql}`")
        kind = data.get("resultType")
        result = data.get("result")
        if kind == "vector":
            return [Sample(dict(r.get("metric", {})), _number(r["value"][1])) for r in result]
        if kind == "scalar":
            return [Sample({}, _number(result[1]))]
        raise PrometheusError(f"query `{promql}` returned a {kind}, expected a vector")

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The single value of ``promql``; ``None`` when the vector is empty or the value NaN
        (no traffic, so no ratio). More than one series is an error: gate queries aggregate."""
        samples = self.query(promql, at)
        if not samples:
            return None
        if len(samples) > 1:
            raise PrometheusError(
                f"query `{promql}` returned {len(samples)} series, expected one (aggregate it)"
            )
        v = samples[0].value
        return None if math.isnan(v) else v

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> list[Series]:
        data = self._get(
            "/api/v1/query_range",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"},
            f"range query `{promql}`",
        )
        return [
            Series(dict(r.get("metric", {})), tuple((float(t), _number(v)) for t, v in r["values"]))
            for r in data.get("result", [])
        ]

    def ready(self) -> bool:
        """Whether Prometheus answers at all (``/-/ready``)."""
        try:
            with self._open(f"{self.base_url}/-/ready") as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Prometheus currently has pending or firing."""
        data = self._get("/api/v1/alerts", {}, "the alerts list")
        return list(data.get("alerts", []))
