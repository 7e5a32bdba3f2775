"""The ledger in a ConfigMap of the stack's namespace; the token is its resourceVersion."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contract.config import StackConfig
from contract.labels import LEDGER, MANAGED_BY, PORTALCTL, selector
from rollout.k8s.api import TimedApi, api_error
from rollout.ledger.store import parse_document
from rollout.ports import ConflictError

LEDGER_KEY = "ledger.json"


class ConfigMapLedgerStore:
    def __init__(self, cfg: StackConfig, api_client: client.ApiClient) -> None:
        self.core: Any = TimedApi(client.CoreV1Api(api_client))
        self.namespace = cfg.namespace
        self.name = cfg.names.ledger
        self.labels = {**selector(cfg.names.app, LEDGER), MANAGED_BY: PORTALCTL}

    @property
    def where(self) -> str:
        return f"ledger ConfigMap {self.namespace}/{self.name} ({LEDGER_KEY})"

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            cm = self.core.read_namespaced_config_map(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise api_error(f"reading ConfigMap {self.name}", exc) from exc
        raw = (cm.data or {}).get(LEDGER_KEY)
        doc = parse_document(raw, self.where) if raw else None
        return doc, cm.metadata.resource_version

    def save(self, doc: dict[str, Any], token: str | None) -> str:
        metadata: dict[str, Any] = {"name": self.name, "labels": self.labels}
        if token is not None:
            metadata["resourceVersion"] = token
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {LEDGER_KEY: json.dumps(doc, sort_keys=True)},
        }
        try:
            if token is None:
                cm = self.core.create_namespaced_config_map(self.namespace, body)
            else:
                cm = self.core.replace_namespaced_config_map(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"ConfigMap {self.name} changed since it was read") from exc
            raise api_error(f"writing ConfigMap {self.name}", exc) from exc
        return str(cm.metadata.resource_version)
