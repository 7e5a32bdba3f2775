"""The local stack's workloads and traffic: app processes behind nginx upstream weights.

Every method re-reads ``state.json`` and writes it back, so a ``portalctl`` started later (or
after a crash) sees what the previous one did. Every method is idempotent.
"""

from __future__ import annotations

import time
from typing import Any

from contract.labels import Track
from rollout.local.processes import ServerError, free_port, pid_alive
from rollout.local.stack import Instance, LocalStack
from rollout.ports import ReleaseSpec, TargetError, TargetState

DRAIN_S = 1.0
"""After nginx is told to stop sending to an instance, how long its old workers may still do so
(a reload is asynchronous) before the instance is stopped."""


def publish_routes(stack: LocalStack, state: dict[str, Any]) -> None:
    """Save ``state`` and hand its instances and weight to nginx and Prometheus."""
    stack.save(state)
    try:
        stack.write_routes(state)
    except ServerError as exc:
        raise TargetError(f"nginx did not take the new routes: {exc}") from exc


class NginxRouter:
    """The canary's share as nginx upstream weights."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def set_weight(self, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise TargetError(f"weight {weight} is not a percentage (0..100)")
        state = self.stack.load()
        state["weight"] = weight
        publish_routes(self.stack, state)

    def weight(self) -> int:
        return int(self.stack.load().get("weight", 0))


class LocalWorkloads:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def state(self) -> TargetState:
        s = self.stack.load()
        canary = [i for i in self.stack.instances(s) if i.track == "canary" and i.pid]
        ready = [i for i in canary if pid_alive(i.pid or 0)]
        return TargetState(
            stable_version=s["stable_version"],
            stable_image=None,
            canary_version=s.get("canary_version"),
            canary_image=None,
            canary_replicas=len(canary),
            canary_ready_replicas=len(ready),
            weight=int(s.get("weight", 0)),
        )

    def _start(self, state: dict[str, Any], inst: Instance, what: str) -> Instance:
        try:
            return self.stack.start_instance(state, inst)
        except ServerError as exc:
            self.stack.stop_instance(inst)
            raise TargetError(f"{what} did not start: {exc}") from exc

    def deploy_canary(self, spec: ReleaseSpec, replicas: int) -> None:
        s = self.stack.load()
        env = self.stack.version_env(s, spec.version)
        instances = self.stack.instances(s)
        canary = [i for i in instances if i.track == "canary"]
        keep = [
            i
            for i in canary
            if i.version == spec.version
            and (i.env or {}) == env
            and i.pid is not None
            and pid_alive(i.pid)
        ]
        for inst in canary:
            if inst not in keep:
                self.stack.stop_instance(inst)
        others = [i for i in instances if i.track != "canary"]
        fresh = []
        for n in range(len(keep), replicas):
            inst = Instance(f"canary-{n + 1}", "canary", spec.version, free_port(), env=env)
            fresh.append(self._start(s, inst, f"canary {spec.version}"))
        s["instances"] = [i.to_dict() for i in (*others, *keep[:replicas], *fresh)]
        s["canary_version"] = spec.version
        publish_routes(self.stack, s)

    def promote(self, spec: ReleaseSpec) -> None:
        """Stable instances restart on the new version one at a time (each healthy before the
        next), then the canary gets no traffic and stops."""
        self._roll_stable(spec.version)
        self.rollback()

    def rollback(self) -> None:
        s = self.stack.load()
        s["weight"] = 0
        publish_routes(self.stack, s)
        time.sleep(DRAIN_S)
        for inst in self.stack.instances(s):
            if inst.track == "canary":
                self.stack.stop_instance(inst)
        s["instances"] = [d for d in s["instances"] if d["track"] != "canary"]
        s["canary_version"] = None
        publish_routes(self.stack, s)

    def set_stable(self, version: str, image: str | None) -> None:
        self._roll_stable(version)

    def replicas(self, track: Track) -> int:
        return sum(1 for i in self.stack.instances(self.stack.load()) if i.track == track)

    def scale(self, track: Track, replicas: int) -> None:
        """More instances of the version ``track`` runs (started and healthy before they get
        traffic), or fewer (taken out of nginx before they stop)."""
        s = self.stack.load()
        mine = [i for i in self.stack.instances(s) if i.track == track]
        if not mine:
            raise TargetError(f"no {track} instance runs: nothing to scale")
        version = mine[0].version
        for extra in mine[replicas:]:
            s["instances"] = [d for d in s["instances"] if d["name"] != extra.name]
            publish_routes(self.stack, s)
            time.sleep(DRAIN_S)
            self.stack.stop_instance(extra)
        names = {d["name"] for d in s["instances"]}
        for _ in range(len(mine), replicas):
            n = 1 + max(int(i.name.rsplit("-", 1)[-1]) for i in mine)
            while f"{track}-{n}" in names:
                n += 1
            env = self.stack.version_env(s, version)
            inst = self._start(
                s, Instance(f"{track}-{n}", track, version, free_port(), env=env), track
            )
            mine.append(inst)
            names.add(inst.name)
            s["instances"].append(inst.to_dict())
            publish_routes(self.stack, s)

    def _roll_stable(self, version: str) -> None:
        s = self.stack.load()
        env = self.stack.version_env(s, version)
        for idx, inst in enumerate(self.stack.instances(s)):
            if inst.track != "stable":
                continue
            if inst.version == version and inst.pid is not None and pid_alive(inst.pid):
                continue
            # Take it out of nginx first so no request lands on a stopping process.
            s["instances"][idx]["pid"] = None
            publish_routes(self.stack, s)
            time.sleep(DRAIN_S)
            self.stack.stop_instance(inst)
            inst.version, inst.env, inst.port = version, env, free_port()
            self._start(s, inst, f"stable {inst.name} on {version}")
            s["instances"][idx] = inst.to_dict()
            publish_routes(self.stack, s)
        s["stable_version"] = version
        self.stack.save(s)
