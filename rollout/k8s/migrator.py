"""Migrations on Kubernetes: one Job per version and phase (``contract.migration``), waited on
until it succeeds or its Failed condition says it will not."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contract.config import StackConfig
from contract.labels import PORTALCTL
from contract.migration import migration_job
from rollout.k8s.api import TimedApi, api_error
from rollout.ports import JobStatus, MigrationResult, Phase, ReleaseSpec, TargetError


class Jobs:
    """Read the Jobs (and their pods' logs) of one namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.batch: Any = TimedApi(client.BatchV1Api(api_client))
        self.core: Any = TimedApi(client.CoreV1Api(api_client))
        self.namespace = namespace

    def status(self, name: str) -> JobStatus | None:
        try:
            job = self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise api_error(f"reading Job {name}", exc) from exc
        st = job.status
        failed = next(
            (c for c in (st.conditions or []) if c.type == "Failed" and c.status == "True"), None
        )
        return JobStatus(
            name=name,
            active=int(st.active or 0),
            succeeded=int(st.succeeded or 0),
            failed=int(st.failed or 0),
            failed_condition=failed is not None,
            condition=failed.reason if failed else None,
            message=failed.message if failed else None,
        )

    def applied(self, job: str) -> tuple[str, ...]:
        """What the runner printed (``--json``) in the Job's pod log, when it can be read."""
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job}")
            for pod in pods.items:
                log = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace)
                for line in reversed(str(log).splitlines()):
                    if line.startswith("{"):
                        return tuple(json.loads(line).get("applied") or ())
        except (ApiException, TargetError, ValueError):
            pass  # what was applied is information, not the verdict: the Job's status is
        return ()


class JobMigrator:
    def __init__(
        self,
        cfg: StackConfig,
        jobs: Jobs,
        *,
        poll_s: float,
        timeout_s: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.cfg = cfg
        self.jobs = jobs
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.sleep = sleep

    def run(self, spec: ReleaseSpec, phase: Phase) -> MigrationResult:
        if not spec.image:
            raise TargetError("a cluster release needs an image to run its migrations")
        body = migration_job(self.cfg, spec.version, spec.image, phase, managed_by=PORTALCTL)
        name = body["metadata"]["name"]
        try:
            self.jobs.batch.create_namespaced_job(self.jobs.namespace, body)
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists: this version's Job ran (or runs): wait on it
                raise api_error(f"creating Job {name}", exc) from exc
        deadline = time.monotonic() + self.timeout_s
        while True:
            status = self.jobs.status(name)
            if status is not None and status.succeeded:
                applied = self.jobs.applied(name)
                return MigrationResult(phase, True, applied, f"Job {name} succeeded")
            if status is not None and status.failed_condition:
                detail = f"Job {name} failed: {status.message}"
                return MigrationResult(phase, False, self.jobs.applied(name), detail)
            if time.monotonic() >= deadline:
                detail = f"Job {name} still running after {self.timeout_s:g}s"
                return MigrationResult(phase, False, (), detail)
            self.sleep(self.poll_s)
