"""The stable and canary Deployments the Pulumi components created (names from the contract):
the canary's image, version label and replicas; the stable Deployment on promotion."""

from __future__ import annotations

from typing import Any

from contract.config import StackConfig
from contract.labels import VERSION, Track
from rollout.k8s.api import Deployments
from rollout.k8s.traffic import IngressRouter, ReplicaRouter
from rollout.ports import ReleaseSpec, TargetError, TargetState


def _image_of(dep: Any, container: str) -> str | None:
    for c in dep.spec.template.spec.containers:
        if c.name == container:
            return str(c.image)
    return None


class KubeWorkloads:
    def __init__(
        self, cfg: StackConfig, deployments: Deployments, router: IngressRouter | ReplicaRouter
    ) -> None:
        self.cfg = cfg
        self.names = cfg.names
        self.deployments = deployments
        self.router = router

    def _deployment(self, track: Track) -> str:
        return self.names.stable if track == "stable" else self.names.canary

    def state(self) -> TargetState:
        stable = self.deployments.read(self.names.stable)
        canary = self.deployments.read(self.names.canary)
        stable_labels = stable.spec.template.metadata.labels or {}
        canary_labels = canary.spec.template.metadata.labels or {}
        return TargetState(
            stable_version=str(stable_labels.get(VERSION, "")),
            stable_image=_image_of(stable, self.names.container),
            canary_version=canary_labels.get(VERSION),
            canary_image=_image_of(canary, self.names.container),
            canary_replicas=int(canary.spec.replicas or 0),
            canary_ready_replicas=int((canary.status and canary.status.ready_replicas) or 0),
            weight=self.router.weight(),
        )

    def _version_patch(self, image: str, version: str, replicas: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "spec": {
                "template": {
                    "metadata": {"labels": {VERSION: version}},
                    "spec": {"containers": [{"name": self.names.container, "image": image}]},
                }
            }
        }
        if replicas is not None:
            body["spec"]["replicas"] = replicas
        return body

    def deploy_canary(self, spec: ReleaseSpec, replicas: int) -> None:
        if not spec.image:
            raise TargetError("a cluster release needs an image (--image repo/name:tag)")
        self.deployments.patch(
            self.names.canary, self._version_patch(spec.image, spec.version, replicas)
        )
        self.deployments.wait_rollout(self.names.canary)

    def promote(self, spec: ReleaseSpec) -> None:
        if not spec.image:
            raise TargetError("a cluster release needs an image")
        self.set_stable(spec.version, spec.image)
        self.rollback()

    def rollback(self) -> None:
        self.router.all_to_stable()
        self.deployments.scale(self.names.canary, 0)

    def set_stable(self, version: str, image: str | None) -> None:
        if not image:
            raise TargetError(
                f"no image recorded for {version}; roll back with --to a release that has one"
            )
        self.deployments.patch(self.names.stable, self._version_patch(image, version, None))
        self.deployments.wait_rollout(self.names.stable)

    def replicas(self, track: Track) -> int:
        return self.deployments.replicas(self._deployment(track))

    def scale(self, track: Track, replicas: int) -> None:
        self.deployments.scale(self._deployment(track), replicas)
