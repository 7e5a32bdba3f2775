"""The one client of the service's ``/api/health/advanced`` (release gates and runbooks)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from contract.labels import Track
from rollout.ports import HealthProbe

HEALTH_PATH = "/api/health/advanced"


def _failing_checks(body: dict[str, Any]) -> str:
    checks = body.get("checks")
    if not isinstance(checks, dict):
        return ""
    bad = [
        f"{name}: {c.get('status')}" + (f" ({c['error']})" if c.get("error") else "")
        for name, c in checks.items()
        if isinstance(c, dict) and c.get("status") not in (None, "healthy", "ok")
    ]
    return ", ".join(bad)


def probe(
    instance: str,
    base_url: str,
    timeout_s: float = 3.0,
    track: Track | None = None,
    token: str | None = None,
) -> HealthProbe:
    """Ask one instance (``base_url`` like ``http://127.0.0.1:8001``) how it is.

    ``ok`` only for HTTP 200 with status ``healthy``: a degraded canary (its cache down) is
    not one to send more traffic to. Without a ``token`` (of the admin scope) the service tells
    only its status; with one, which checks fail and why.
    """
    url = base_url.rstrip("/") + HEALTH_PATH
    code: int | None = None
    raw = b""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            code = resp.status
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        code = exc.code
        raw = exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return HealthProbe(instance, False, None, None, f"{url}: {reason}", track)
    return from_response(instance, code, raw, track)


def from_response(
    instance: str, code: int | None, raw: bytes, track: Track | None = None
) -> HealthProbe:
    """A probe result from a status code and body (the Kubernetes target reads them through
    the API server's pod proxy)."""
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    status = body.get("status") if isinstance(body, dict) else None
    ok = code == 200 and status == "healthy"
    if ok:
        detail = "healthy"
    else:
        failing = _failing_checks(body) if isinstance(body, dict) else ""
        detail = f"HTTP {code}, status {status or 'unknown'}" + (f": {failing}" if failing else "")
    return HealthProbe(instance, ok, code, str(status) if status else None, detail, track)
