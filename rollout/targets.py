"""Open the stack config and the target ``portalctl`` drives: a cluster, or the local stack."""

from __future__ import annotations

from pathlib import Path

from contract.config import StackConfig, load_stack
from rollout.ports import Target, TargetError


def open_target(
    stack: str | None,
    local: bool,
    project_dir: Path = Path("."),
    context: str | None = None,
    local_dir: Path | None = None,
) -> tuple[StackConfig, Target]:
    """``--local``: the local stack under ``local_dir`` (default
    ``<project_dir>/.portal/local``) with its config (``Pulumi.local.yaml`` there); otherwise
    the stack file ``Pulumi.<stack>.yaml`` and the cluster of the current kubeconfig context."""
    if local:
        from rollout.local.stack import LOCAL_DIR, LocalStack, local_config
        from rollout.local.target import local_target

        root = local_dir if local_dir is not None else project_dir / LOCAL_DIR
        return local_config(root), local_target(LocalStack(root))
    if not stack:
        raise TargetError("say which stack: --stack staging|prod (or --local)")
    cfg = load_stack(stack, project_dir)
    from rollout.k8s import from_kubeconfig

    return cfg, from_kubeconfig(cfg, context=context)
