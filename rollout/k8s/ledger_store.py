"""The ledger in a ConfigMap of the stack's namespace; the token is its resourceVersion. Each
archived release is a ConfigMap of its own (``<ledger>-<release id>``, labelled as the ledger's
archive), kept for the newest releases only (``rollout.ledger.retention``)."""

from __future__ import annotations

import json
import re
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contract.config import StackConfig
from contract.labels import LEDGER, LEDGER_ARCHIVE, MANAGED_BY, PORTALCTL, label_selector, selector
from rollout.k8s.api import TimedApi, api_error
from rollout.ledger.store import parse_document
from rollout.ports import ConflictError

LEDGER_KEY = "ledger.json"
ARCHIVE_KEY = "release.json"
ARCHIVE_KEY_ANNOTATION = "portal.dev/release"
"""The release id an archive ConfigMap holds (its name is the id made a valid object name)."""


class ConfigMapLedgerStore:
    def __init__(self, cfg: StackConfig, api_client: client.ApiClient) -> None:
        self.core: Any = TimedApi(client.CoreV1Api(api_client))
        self.namespace = cfg.namespace
        self.name = cfg.names.ledger
        self.labels = {**selector(cfg.names.app, LEDGER), MANAGED_BY: PORTALCTL}
        self.archive_labels = {**selector(cfg.names.app, LEDGER_ARCHIVE), MANAGED_BY: PORTALCTL}

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
            "data": {LEDGER_KEY: json.dumps(doc, sort_keys=True, separators=(",", ":"))},
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

    # ------------------------------------------------------------------ archive

    def archive_name(self, key: str) -> str:
        slug = re.sub(r"[^a-z0-9.-]+", "-", key.lower()).strip("-.")
        return f"{self.name}-{slug}"[:253].rstrip("-.")

    def archive(self, key: str, doc: dict[str, Any]) -> None:
        name = self.archive_name(key)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "labels": self.archive_labels,
                "annotations": {ARCHIVE_KEY_ANNOTATION: key},
            },
            "data": {ARCHIVE_KEY: json.dumps(doc, sort_keys=True, separators=(",", ":"))},
        }
        try:
            try:
                self.core.create_namespaced_config_map(self.namespace, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.core.replace_namespaced_config_map(name, self.namespace, body)
        except ApiException as exc:
            raise api_error(f"archiving release {key} in ConfigMap {name}", exc) from exc

    def archived(self, key: str) -> dict[str, Any] | None:
        name = self.archive_name(key)
        try:
            cm = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise api_error(f"reading ConfigMap {name}", exc) from exc
        raw = (cm.data or {}).get(ARCHIVE_KEY)
        where = f"ledger archive ConfigMap {self.namespace}/{name} ({ARCHIVE_KEY})"
        return parse_document(raw, where) if raw else None

    def prune(self, keep: set[str]) -> None:
        try:
            found = self.core.list_namespaced_config_map(
                self.namespace, label_selector=label_selector(self.archive_labels)
            )
            for cm in found.items:
                key = (cm.metadata.annotations or {}).get(ARCHIVE_KEY_ANNOTATION)
                if key not in keep:
                    self.core.delete_namespaced_config_map(cm.metadata.name, self.namespace)
        except ApiException as exc:
            raise api_error("pruning the ledger's archive", exc) from exc
