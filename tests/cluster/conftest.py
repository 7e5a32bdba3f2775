"""Helpers for tests against the real control plane (the ``control_plane`` and ``kube`` fixtures
live in ``tests/conftest.py``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

T = TypeVar("T")

FIELD_MANAGER = "portal-tests"


@pytest.fixture(scope="session")
def dynamic(kube: client.ApiClient) -> DynamicClient:
    return DynamicClient(kube)


@dataclass
class Applied:
    """One server-side apply: the object the server returned and the warnings it sent."""

    obj: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def server_side_apply(
    dynamic: DynamicClient, obj: dict[str, Any], manager: str = FIELD_MANAGER
) -> Applied:
    """``kubectl apply --server-side --force-conflicts`` for one object, keeping the server's
    ``Warning`` headers (PodSecurity ``warn`` and deprecations arrive there)."""
    resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    meta = obj["metadata"]
    path = resource.path(name=meta["name"], namespace=meta.get("namespace"))
    api = dynamic.client
    request = api.param_serialize(
        "PATCH",
        path,
        query_params=[("fieldManager", manager), ("force", "true")],
        header_params={
            "Content-Type": "application/apply-patch+yaml",
            "Accept": "application/json",
        },
        body=obj,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request)
    response.read()
    if not 200 <= response.status <= 299:
        api.response_deserialize(response, {})  # raises ApiException with the server's message
    headers = response.getheaders()
    warnings = headers.getlist("Warning") if hasattr(headers, "getlist") else []
    return Applied(json.loads(response.data), [str(w) for w in warnings])


class NotYet(str):
    """What a probe saw while the condition does not hold yet (falsy; reported on timeout)."""

    def __bool__(self) -> bool:
        return False


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 240, every: float = 0.5
) -> T:
    """Poll ``probe`` until it returns a truthy value; fail naming ``what`` and the last thing
    the probe saw (it returns ``NotYet("...")``, or None, to keep waiting)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ApiException as exc:
            value, last = None, f"HTTP {exc.status}: {exc.reason}"
        if value:
            return value
        if isinstance(value, NotYet):
            last = value
        time.sleep(every)
    pytest.fail(f"{what}: not reached within {timeout:.0f}s (last: {last})")
