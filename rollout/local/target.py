"""The local stack as a ``Target``: every port, on this machine's real servers."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contract.labels import Track
from contract.migration import AWS_KEYS, DUMP_SCRIPT, UPLOAD_SCRIPT, upload_env
from rollout import health
from rollout.alerting import AlertmanagerClient
from rollout.ledger import FileLedgerStore
from rollout.local.processes import pid_alive
from rollout.local.stack import LocalStack, python
from rollout.local.workloads import LocalWorkloads, NginxRouter
from rollout.ports import (
    AdminAnswer,
    ClusterEvent,
    HealthProbe,
    Instance,
    JobStatus,
    MigrationResult,
    Phase,
    ReleaseSpec,
    Target,
    TargetError,
    Unavailable,
)
from rollout.telemetry import PrometheusTelemetry

NAME = "local"
RATE_WINDOW = "30s"
"""Enough 1-second scrapes for a rate; a cluster's 5m would hide a drill's faults."""
PROJECT_DIR = Path(__file__).resolve().parents[2]


class LocalMigrator:
    """The migration runner of this checkout, against the stack's database; with
    ``migrations.backup.enabled``, after the same backup the migration Job takes (the
    ``pg-dump`` and ``s3-upload`` steps of ``contract.migration``, with the AWS credentials of
    ``portalctl``'s environment): a failed backup and no migration runs."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def run(self, spec: ReleaseSpec, phase: Phase) -> MigrationResult:
        database_url = self.stack.load()["migrate_url"]
        failed = self._backup(spec.version, database_url)
        if failed is not None:
            return MigrationResult(phase, False, (), f"{failed}; the migrations did not run")
        env = {**os.environ, "PORTAL_DATABASE_URL": database_url}
        result = subprocess.run(
            [python(), "-m", "app", "migrate", "--phase", phase, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
            cwd=PROJECT_DIR,
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

    def _backup(self, version: str, database_url: str) -> str | None:
        """Take the pre-migration backup when the stack's config asks for one; why it failed."""
        cfg = self.stack.config()
        if not cfg.migrations.backup.enabled:
            return None
        url = urllib.parse.urlsplit(database_url)
        with tempfile.TemporaryDirectory(prefix="portal-backup-") as tmp:
            env = {
                "PATH": os.environ.get("PATH", ""),
                "PGHOST": url.hostname or "127.0.0.1",
                "PGPORT": str(url.port or 5432),
                "PGUSER": url.username or "postgres",
                "PGPASSWORD_FILE": f"{tmp}/pgpassword",
                "PGDATABASE": url.path.lstrip("/"),
                **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
                **upload_env(cfg, version, dump_file=f"{tmp}/portal.dump", home=tmp, aws_dir=tmp),
            }
            (Path(tmp) / "pgpassword").write_text(url.password or "")  # as the Job mounts it
            (Path(tmp) / "pgpassword").chmod(0o600)
            for key in AWS_KEYS:  # the files the Job mounts from credentialsSecret
                path = Path(tmp) / key
                path.write_text(os.environ.get(key, ""))
                path.chmod(0o600)
            for step, script in (("pg-dump", DUMP_SCRIPT), ("s3-upload", UPLOAD_SCRIPT)):
                done = subprocess.run(
                    ["sh", "-c", script],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                    check=False,
                )
                if done.returncode != 0:
                    said = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
                    return f"the pre-migration backup failed at {step}: {said[-1]}"
        return None


class LocalDiagnostics:
    """App processes instead of pods; no Kubernetes events or Jobs exist here."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def instances(self) -> list[Instance]:
        out = []
        for inst in self.stack.instances(self.stack.load()):
            alive = inst.pid is not None and pid_alive(inst.pid)
            detail = f"running, pid {inst.pid}" if alive else "is not running"
            out.append(Instance(inst.name, _track(inst.track), inst.version, alive, detail))
        return out

    def probe(self, track: Track | None = None) -> list[HealthProbe]:
        admin = self.stack.credentials().admin
        return [
            health.probe(i.name, i.url, track=_track(i.track), token=admin)
            for i in self.stack.instances(self.stack.load())
            if i.pid is not None and (track is None or i.track == track)
        ]

    def events(self, limit: int) -> list[ClusterEvent] | Unavailable:
        return Unavailable("the local stack has no Kubernetes events")

    def job(self, name: str) -> JobStatus | Unavailable | None:
        return Unavailable("the local stack runs migrations as processes, not Jobs")

    def database_url(self) -> str | Unavailable:
        return str(self.stack.load()["readonly_url"])

    def restart_hint(self) -> str | None:
        root = self.stack.root
        return f"On the local stack, `portalctl local up --dir {root}` restarts what is down."


class LocalAdmin:
    """``POST /api/admin/...`` on every running instance with a token of the admin scope."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def call(self, path: str, body: Mapping[str, Any]) -> list[AdminAnswer]:
        state = self.stack.load()
        admin = self.stack.credentials().admin
        answers = []
        for inst in self.stack.instances(state):
            if inst.pid is None or not pid_alive(inst.pid):
                continue
            req = urllib.request.Request(
                inst.url + path,
                data=json.dumps(body).encode(),
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {admin}",
                },
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    answers.append(AdminAnswer(inst.name, dict(json.loads(resp.read()))))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                raise TargetError(f"{inst.name} answered HTTP {exc.code}: {detail}") from exc
        return answers


def _track(track: str) -> Track | None:
    return "stable" if track == "stable" else "canary" if track == "canary" else None


DISCARD_PORT = 9
"""Where nothing listens (the discard service's port)."""


def local_target(stack: LocalStack) -> Target:
    """The local stack under ``stack.root`` (it must be up: a clear error otherwise)."""
    state = stack.load()
    return Target(
        name=NAME,
        workloads=LocalWorkloads(stack),
        router=NginxRouter(stack),
        migrator=LocalMigrator(stack),
        ledger=FileLedgerStore(stack.root / "ledger.json"),
        telemetry=PrometheusTelemetry(
            state["prometheus_url"], state["pushgateway_url"], rate_window=RATE_WINDOW
        ),
        diagnostics=LocalDiagnostics(stack),
        admin=LocalAdmin(stack),
        # a stack started before it ran Alertmanager has no URL for it until `portalctl local up`:
        # its notices go nowhere meanwhile (a failing Alertmanager never fails a release)
        alerting=AlertmanagerClient(
            state.get("alertmanager_url")
            or f"http://127.0.0.1:{state['ports'].get('alertmanager', DISCARD_PORT)}"
        ),
    )
