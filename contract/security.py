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


# ------------------------------------------------------------------ scanner findings we accept

SKIP_ANNOTATION = "checkov.io/skip"
"""checkov reads ``checkov.io/skip<N>: <check>=<reason>`` on an object's metadata."""

UNPINNED_IMAGE = (
    "CKV_K8S_43",
    "pinned by tag because the stack config gives no digest for this image (README: pinning "
    "images by digest)",
)
API_READER = (
    "CKV_K8S_38",
    "reads the Kubernetes API (pod discovery or namespace state) with its ServiceAccount token",
)
POSTGRES_UID = (
    "CKV_K8S_40",
    "the official postgres alpine image runs initdb as its own postgres user (uid 70) and has "
    "no nss_wrapper to run it as another uid",
)


def has_digest(image: str) -> bool:
    return "@sha256:" in image


def pull_policy(image: str) -> str:
    """A digest names one image for ever; a tag is looked up at the registry at every start."""
    return "IfNotPresent" if has_digest(image) else "Always"


def skips(*findings: tuple[str, str] | None) -> dict[str, str]:
    """The checkov skip annotations of an object, one per accepted finding."""
    chosen = [f for f in findings if f is not None]
    for check, reason in chosen:
        if "=" in reason or "\n" in reason:
            raise ValueError(f"{check}: a skip reason is one line without '='")
    return {f"{SKIP_ANNOTATION}{i}": f"{c}={r}" for i, (c, r) in enumerate(chosen, start=1)}


def unpinned(*images: str) -> tuple[str, str] | None:
    """The digest finding when any of ``images`` is pinned by tag only."""
    return UNPINNED_IMAGE if not all(has_digest(i) for i in images) else None
