"""The local target: app processes behind nginx on this machine, driven like a cluster.

Every method re-reads ``state.json`` and writes it back, so a ``portalctl`` started later (or
after a crash) sees what the previous one did. Every method is idempotent.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from rollout import health
from rollout.ledger import FileLedgerStore
from rollout.local.servers import ServerError, free_port, pid_alive
from rollout.local.stack import LOCAL_DIR, Instance, LocalStack, _python
from rollout.target import (
    HealthProbe,
    LedgerStore,
    MigrationResult,
    Phase,
    ReleaseSpec,
    TargetError,
    TargetState,
)

DRAIN_S = 1.0
"""After nginx is told to stop sending to an instance, how long its old workers may still do so
(a reload is asynchronous) before the instance is stopped."""


class LocalTarget:
    def __init__(self, stack: LocalStack, canary_replicas: int | None = None) -> None:
        self.stack = stack
        self.canary_replicas = canary_replicas

    @classmethod
    def from_state(cls, root: Path = LOCAL_DIR) -> LocalTarget:
        stack = LocalStack(root)
        stack.load()  # a clear error when the stack was never brought up
        return cls(stack)

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        return "local"

    @property
    def state_data(self) -> dict[str, Any]:
        return self.stack.load()

    @property
    def prometheus_url(self) -> str:
        return str(self.state_data["prometheus_url"])

    @property
    def nginx_url(self) -> str:
        return str(self.state_data["nginx_url"])

    @property
    def pushgateway_url(self) -> str:
        return str(self.state_data["pushgateway_url"])

    @property
    def database_url(self) -> str:
        return str(self.state_data["database_url"])

    @property
    def redis_url(self) -> str:
        return str(self.state_data["redis_url"])

    @property
    def admin_token(self) -> str:
        return str(self.state_data["admin_token"])

    def ledger(self) -> LedgerStore:
        return FileLedgerStore(self.stack.root / "ledger.json")

    def app_instances(self) -> list[tuple[str, str, str]]:
        """``(instance name, track, base URL)`` of every running app instance."""
        return [
            (i.name, i.track, i.url)
            for i in self.stack.instances(self.state_data)
            if i.pid is not None and pid_alive(i.pid)
        ]

    # ------------------------------------------------------------------ Target

    def state(self) -> TargetState:
        s = self.state_data
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

    def run_migrations(self, spec: ReleaseSpec, phase: Phase) -> MigrationResult:
        env = {**os.environ, "PORTAL_DATABASE_URL": self.database_url}
        result = subprocess.run(
            [_python(), "-m", "app", "migrate", "--phase", phase, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            report = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {}
        applied = tuple(report.get("applied") or ())
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["migration runner failed"])[-1]
            return MigrationResult(phase, False, applied, detail)
        return MigrationResult(phase, True, applied, f"applied {len(applied)}")

    def deploy_canary(self, spec: ReleaseSpec, replicas: int) -> None:
        s = self.state_data
        instances = self.stack.instances(s)
        canary = [i for i in instances if i.track == "canary"]
        keep = [
            i
            for i in canary
            if i.version == spec.version
            and (i.env or {}) == dict(spec.env)
            and i.pid is not None
            and pid_alive(i.pid)
        ]
        for inst in canary:
            if inst not in keep:
                self.stack.stop_instance(inst)
        others = [i for i in instances if i.track != "canary"]
        fresh = []
        for n in range(len(keep), replicas):
            inst = Instance(
                f"canary-{n + 1}", "canary", spec.version, free_port(), env=dict(spec.env)
            )
            try:
                self.stack.start_instance(s, inst)
            except ServerError as exc:
                self.stack.stop_instance(inst)
                raise TargetError(f"canary {spec.version} did not start: {exc}") from exc
            fresh.append(inst)
        s["instances"] = [i.to_dict() for i in (*others, *keep[:replicas], *fresh)]
        s["canary_version"] = spec.version
        self._save_routes(s)

    def set_weight(self, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise TargetError(f"weight {weight} is not a percentage (0..100)")
        s = self.state_data
        s["weight"] = weight
        self._save_routes(s)

    def probe_canary(self) -> list[HealthProbe]:
        s = self.state_data
        return [
            health.probe(i.name, i.url)
            for i in self.stack.instances(s)
            if i.track == "canary" and i.pid is not None
        ]

    def promote(self, spec: ReleaseSpec) -> None:
        """Stable instances restart on the new version one at a time (each healthy before the
        next), then the canary gets no traffic and stops."""
        self._roll_stable(spec.version, dict(spec.env))
        self.rollback()

    def rollback(self) -> None:
        s = self.state_data
        s["weight"] = 0
        self._save_routes(s)
        time.sleep(DRAIN_S)
        for inst in self.stack.instances(s):
            if inst.track == "canary":
                self.stack.stop_instance(inst)
        s["instances"] = [d for d in s["instances"] if d["track"] != "canary"]
        s["canary_version"] = None
        self._save_routes(s)

    def set_stable(self, version: str, image: str | None) -> None:
        self._roll_stable(version, {})

    # ------------------------------------------------------------------ extras

    def kill_canary(self) -> None:
        """SIGKILL every canary process (drills and tests: what a crash looks like)."""
        for inst in self.stack.instances(self.state_data):
            if inst.track == "canary" and inst.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(inst.pid, 9)

    def stop_redis(self) -> None:
        self.stack.redis(self.state_data).stop()

    def start_redis(self) -> None:
        self.stack.redis(self.state_data).start()

    # ------------------------------------------------------------------ internals

    def _roll_stable(self, version: str, env: dict[str, str]) -> None:
        s = self.state_data
        instances = self.stack.instances(s)
        for idx, inst in enumerate(instances):
            if inst.track != "stable":
                continue
            if inst.version == version and inst.pid is not None and pid_alive(inst.pid):
                continue
            # Take it out of nginx first so no request lands on a stopping process.
            s["instances"][idx]["pid"] = None
            self._save_routes(s)
            time.sleep(DRAIN_S)
            self.stack.stop_instance(inst)
            inst.version = version
            inst.env = env
            inst.port = free_port()
            try:
                self.stack.start_instance(s, inst)
            except ServerError as exc:
                raise TargetError(f"stable {inst.name} did not start on {version}: {exc}") from exc
            s["instances"][idx] = inst.to_dict()
            self._save_routes(s)
        s["stable_version"] = version
        self.stack.save(s)

    def _save_routes(self, s: dict[str, Any]) -> None:
        self.stack.save(s)
        try:
            self.stack.write_routes(s)
        except ServerError as exc:
            raise TargetError(f"nginx did not take the new routes: {exc}") from exc
