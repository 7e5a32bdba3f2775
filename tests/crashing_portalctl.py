"""``portalctl`` that crashes at a named point: what a SIGKILL there, or a target failing there,
looks like. Only tests run it (``python -m tests.crashing_portalctl POINT ARGS...``); the product
has no such hook.

Points after a ledger write (the write is on disk, then the process dies):
``promote:intent``, ``promote:done``, ``rollback:intent``, ``rollback:done``, ``scripted:intent``,
``scripted:done``. Points inside an action on the local stack's workloads:
``promote:stable`` (stable runs the new version, the canary still runs), ``rollback:weight0``
(the canary has no traffic but still runs), ``scripted:stable`` (stable runs the goal, the
ledger not yet told). ``promote:fail`` does not kill: stable is rolled to the new version and
then the promotion fails, as a rollout that gets stuck halfway does. The same inside the
Kubernetes target's actions: ``k8s-promote:stable`` (the stable Deployment rolled out to the new
version, the canary still scaled up), ``k8s-rollback:weight0`` (the canary Ingress at weight 0,
the canary still scaled up).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from rollout.ledger import Action, Ledger, LedgerDoc, ReleaseStatus, TransitionState
from rollout.local import workloads
from rollout.ports import ReleaseSpec, TargetError


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _last(doc: LedgerDoc, action: Action, state: TransitionState) -> bool:
    release = doc.latest()
    if release is None or not release.transitions:
        return False
    last = release.transitions[-1]
    return last.action is action and last.state is state


AFTER_WRITE: dict[str, Callable[[LedgerDoc], bool]] = {
    "promote:intent": lambda d: _last(d, Action.PROMOTE, TransitionState.INTENT),
    "promote:done": lambda d: (
        d.latest() is not None and d.latest().status is ReleaseStatus.PROMOTED
    ),
    "rollback:intent": lambda d: _last(d, Action.ROLLBACK, TransitionState.INTENT),
    "rollback:done": lambda d: (
        d.latest() is not None and d.latest().status is ReleaseStatus.ABORTED
    ),
    "scripted:intent": lambda d: (
        bool(d.rollbacks) and d.rollbacks[-1].state is TransitionState.INTENT
    ),
    "scripted:done": lambda d: bool(d.rollbacks) and d.rollbacks[-1].state is TransitionState.DONE,
}


def _after_write(check: Callable[[LedgerDoc], bool]) -> None:
    update = Ledger.update

    def crashing(self: Ledger, fn: Any, attempts: int = 20) -> Any:
        result = update(self, fn, attempts)
        if check(self.read()):
            die()
        return result

    Ledger.update = crashing  # type: ignore[method-assign]


def _inside_kubernetes_actions(point: str) -> None:
    from rollout.k8s.workloads import KubeWorkloads

    if point == "k8s-promote:stable":

        def promote(self: Any, spec: ReleaseSpec) -> None:
            self.set_stable(spec.version, spec.image)
            die()

        KubeWorkloads.promote = promote  # type: ignore[method-assign]
    elif point == "k8s-rollback:weight0":

        def rollback(self: Any) -> None:
            self.router.all_to_stable()
            die()

        KubeWorkloads.rollback = rollback  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {point!r}")


def _inside_actions(point: str) -> None:
    if point.startswith("k8s-"):
        _inside_kubernetes_actions(point)
        return
    cls = workloads.LocalWorkloads
    if point == "promote:stable":

        def promote(self: Any, spec: ReleaseSpec) -> None:
            self._roll_stable(spec.version)
            die()

        cls.promote = promote  # type: ignore[method-assign]
    elif point == "promote:fail":

        def failing(self: Any, spec: ReleaseSpec) -> None:
            self._roll_stable(spec.version)
            raise TargetError(f"stable did not roll out to {spec.version} (stuck halfway)")

        cls.promote = failing  # type: ignore[method-assign]
    elif point == "rollback:weight0":

        def rollback(self: Any) -> None:
            state = self.stack.load()
            state["weight"] = 0
            workloads.publish_routes(self.stack, state)
            die()

        cls.rollback = rollback  # type: ignore[method-assign]
    elif point == "scripted:stable":
        set_stable = cls.set_stable

        def crashing(self: Any, version: str, image: str | None) -> None:
            set_stable(self, version, image)
            die()

        cls.set_stable = crashing  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {point!r}")


def main() -> None:
    point, args = sys.argv[1], sys.argv[2:]
    if point in AFTER_WRITE:
        _after_write(AFTER_WRITE[point])
    else:
        _inside_actions(point)
    from rollout.cli import main as portalctl

    sys.argv = ["portalctl", *args]
    portalctl()


if __name__ == "__main__":
    main()
