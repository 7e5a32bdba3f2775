"""The security contexts every pod and container runs with (Kubernetes' restricted profile):
one definition for the components and the Jobs ``portalctl`` creates."""

from __future__ import annotations

from typing import Any


def container(uid: int | None = None) -> dict[str, Any]:
    """No privilege escalation, no capabilities, a read-only root filesystem, not root."""
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    if uid is not None:
        context["runAsUser"] = uid
    return context


def pod(uid: int, gid: int | None = None) -> dict[str, Any]:
    """Non-root pods with the runtime's default seccomp profile; volumes owned by ``gid``."""
    group = uid if gid is None else gid
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": group,
        "fsGroup": group,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
