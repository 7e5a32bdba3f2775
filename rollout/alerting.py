"""The ``Alerting`` port on Alertmanager's HTTP API (v2): release events posted as alerts,
silences created, extended and expired.

On a cluster Alertmanager is reached through the API server's service proxy with the
kubeconfig's credentials, like Prometheus. Every call is retried a bounded number of times
(connection refused, a timeout, a 5xx: tenacity, with a growing pause); then it raises
``AlertingError`` naming the URL and the last failure. A 4xx is not retried (the request itself is
wrong). The callers decide what a failure means: a release never fails because of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential

from rollout.http import HttpAuth
from rollout.ports import AlertingError, Notification, SilenceSpec

ATTEMPTS = 3
TIMEOUT_S = 3.0


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class _Retry(Exception):
    """A failure worth another attempt."""


class AlertmanagerClient:
    """``<url>/api/v2`` of one Alertmanager."""

    def __init__(
        self,
        url: str,
        *,
        auth: HttpAuth | None = None,
        attempts: int = ATTEMPTS,
        timeout_s: float = TIMEOUT_S,
        backoff_s: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        self.auth = auth or HttpAuth()
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._client = httpx.Client(
            verify=self.auth.ssl_context if self.auth.ssl_context is not None else True,
            timeout=timeout_s,
        )

    # -------------------------------------------------------------------------- plumbing

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        url = f"{self.url}/api/v2{path}"

        def once() -> httpx.Response:
            try:
                # asked at every call: a refreshed token is the one sent
                headers = dict(self.auth.headers())
                response = self._client.request(method, url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise _Retry(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code >= 500:
                raise _Retry(f"HTTP {response.status_code}: {response.text.strip()[:200]}")
            return response

        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, _Retry)),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=4 * self.backoff_s),
        )
        try:
            return retrying(once)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise AlertingError(
                f"Alertmanager at {self.url} did not answer {method} {path} after "
                f"{self.attempts} attempts: {last}"
            ) from None

    @staticmethod
    def _refused(response: httpx.Response, what: str) -> AlertingError:
        return AlertingError(
            f"Alertmanager refused {what}: HTTP {response.status_code}: "
            f"{response.text.strip()[:200]}"
        )

    # -------------------------------------------------------------------------- the port

    def notify(self, notifications: Sequence[Notification]) -> None:
        body = [
            {
                "labels": dict(n.labels),
                "annotations": dict(n.annotations),
                "startsAt": rfc3339(n.starts_at),
                "endsAt": rfc3339(n.ends_at),
            }
            for n in notifications
        ]
        response = self._call("POST", "/alerts", body)
        if response.status_code != 200:
            raise self._refused(response, "the release notification")

    def silence(self, spec: SilenceSpec) -> str:
        """A new silence, or ``spec.silence_id`` with its new end. Alertmanager changes an active
        silence in place only when its start is unchanged, so the start is read back first; an
        expired or unknown one is replaced by a new silence."""
        starts_at = rfc3339(spec.starts_at)
        silence_id = spec.silence_id
        if silence_id is not None:
            response = self._call("GET", f"/silence/{silence_id}")
            current = response.json() if response.status_code == 200 else None
            if current is None or current["status"]["state"] == "expired":
                silence_id = None
            else:
                starts_at = current["startsAt"]
        body: dict[str, Any] = {
            "matchers": [
                {
                    "name": "alertname",
                    "value": "|".join(spec.alerts),
                    "isRegex": True,
                    "isEqual": True,
                },
                {"name": "stack", "value": spec.stack, "isRegex": False, "isEqual": True},
            ],
            "startsAt": starts_at,
            "endsAt": rfc3339(spec.ends_at),
            "createdBy": spec.created_by,
            "comment": spec.comment,
        }
        if silence_id is not None:
            body["id"] = silence_id
        response = self._call("POST", "/silences", body)
        if response.status_code != 200:
            raise self._refused(response, "the silence")
        return str(response.json()["silenceID"])

    def expire(self, silence_id: str) -> None:
        response = self._call("DELETE", f"/silence/{silence_id}")
        # 404 (unknown) and 500 "silence ... already expired" leave nothing to do
        if response.status_code not in (200, 404):
            raise self._refused(response, f"expiring silence {silence_id}")

    def silence_state(self, silence_id: str) -> str | None:
        response = self._call("GET", f"/silence/{silence_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._refused(response, f"reading silence {silence_id}")
        return str(response.json()["status"]["state"])

    # -------------------------------------------------------------------------- reads

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (``active``, ``silenced``, ``inhibited`` as filters)."""
        response = self._call("GET", "/alerts?" + "&".join(f"{k}={v}" for k, v in filters.items()))
        if response.status_code != 200:
            raise self._refused(response, "listing alerts")
        alerts: list[dict[str, Any]] = response.json()
        return alerts

    def silences(self) -> list[dict[str, Any]]:
        response = self._call("GET", "/silences")
        if response.status_code != 200:
            raise self._refused(response, "listing silences")
        silences: list[dict[str, Any]] = response.json()
        return silences
