"""Strict validation of Kubernetes objects against the official schemas (no Pulumi import).

Every rendered object (``make manifests``, ``python -m components.render``) passes it before it is
written, so a typo in a component fails offline, before any cluster sees it; the tests also apply
the same objects to a real API server (``tests/cluster/``).
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate

KUBERNETES_VERSION = "1.37"
"""Schemas the objects are validated against (the newest kubernetes-validate ships)."""


class InvalidManifest(ValueError):
    """An object failed schema validation; the message names it, the field and the problem."""


def validate(manifest: dict[str, Any], version: str = KUBERNETES_VERSION) -> None:
    """Strict schema validation of one object."""
    where = f"{manifest.get('kind')} {manifest.get('metadata', {}).get('name')!r}"
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "(top level)"
        raise InvalidManifest(f"{where}: {path}: {exc.message}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise InvalidManifest(f"{where}: {exc.message}") from None


def invalid(manifests: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> list[str]:
    """Why each of ``manifests`` that ``validate`` refuses is invalid (empty: all valid)."""
    errors = []
    for manifest in manifests:
        try:
            validate(manifest, version)
        except InvalidManifest as exc:
            errors.append(str(exc))
    return errors
