"""Alertmanager and the local stack's alert receiver, on loopback like the other servers
(``rollout.local.servers``)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import alertmanager
from contract.config import StackConfig
from rollout.local.processes import (
    Process,
    ServerError,
    find_binary,
    http_ok,
    port_open,
    wait_until,
)


@dataclass
class AlertmanagerServer:
    """Alertmanager (Debian's ``prometheus-alertmanager``) with its config and templates written
    to ``directory``; no cluster gossip."""

    directory: Path
    port: int
    files: Mapping[str, str]
    """File name -> text: ``alertmanager.yml`` and its templates."""
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "alertmanager.yml"

    def write_config(self, files: Mapping[str, str] | None = None) -> None:
        if files is not None:
            self.files = files
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            tmp = (self.directory / name).with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.directory / name)

    def start(self, timeout: float = 30.0) -> AlertmanagerServer:
        self.write_config()
        argv = [
            find_binary("prometheus-alertmanager", ("/usr/bin/alertmanager",)),
            f"--config.file={self.config_path}",
            f"--storage.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
        self.process = Process("alertmanager", self.directory, argv, cwd=self.directory)
        self.process.start()
        wait_until(
            lambda: http_ok(f"{self.url}/-/ready"),
            timeout,
            f"Alertmanager on port {self.port}",
            self.process.log,
            self.process.alive,
        )
        return self

    def reload(self, files: Mapping[str, str] | None = None) -> None:
        """Write the config (when given) and have Alertmanager re-read it (POST /-/reload)."""
        if files is not None:
            self.write_config(files)
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise ServerError(f"Alertmanager refused its config: {detail}") from exc

    def stop(self) -> None:
        (self.process or Process("alertmanager", self.directory, [])).stop()

    def running(self) -> bool:
        return http_ok(f"{self.url}/-/ready")


@dataclass
class WebhookServer:
    """The alert receiver of the local stack (``rollout.local.webhook``): what Alertmanager
    sends it lands in ``out``, one JSON line per notification."""

    directory: Path
    port: int
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    @property
    def out(self) -> Path:
        return self.directory / "notifications.jsonl"

    def start(self, timeout: float = 20.0) -> WebhookServer:
        argv = [
            sys.executable,
            "-m",
            "rollout.local.webhook",
            "--port",
            str(self.port),
            "--out",
            str(self.out),
        ]
        project = Path(__file__).resolve().parents[2]
        self.process = Process("webhook", self.directory, argv, cwd=project)
        self.process.start()
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{self.port}/-/ready", timeout=2),
            timeout,
            f"the alert receiver on port {self.port}",
            self.process.log,
            self.process.alive,
        )
        return self

    def stop(self) -> None:
        (self.process or Process("webhook", self.directory, [])).stop()

    def running(self) -> bool:
        return port_open(self.port)


ALERTMANAGER_DIR = "alertmanager"
WEBHOOK_DIR = "alerts"
"""Under the stack's directory: ``alerts/notifications.jsonl`` is what the receiver got."""


def webhook_server(root: Path, state: Mapping[str, Any]) -> WebhookServer:
    return WebhookServer(root / WEBHOOK_DIR, int(state["ports"]["webhook"]))


def alertmanager_server(
    root: Path, cfg: StackConfig, state: Mapping[str, Any]
) -> AlertmanagerServer:
    """Alertmanager with the stack's routing and receivers, plus the local receiver."""
    hook = webhook_server(root, state)
    files = alertmanager.files(cfg, extra_webhooks=[hook.url])
    return AlertmanagerServer(root / ALERTMANAGER_DIR, int(state["ports"]["alertmanager"]), files)


def start(
    root: Path, cfg: StackConfig, state: Mapping[str, Any], progress: Callable[[str], None]
) -> None:
    """The receiver, then Alertmanager (before Prometheus, which sends to it)."""
    hook = webhook_server(root, state)
    if not hook.running():
        progress(f"starting the alert receiver on port {hook.port} (writes {hook.out})")
        hook.start()
    am = alertmanager_server(root, cfg, state)
    if not am.running():
        progress(f"starting Alertmanager on port {am.port}")
        am.start()
    else:
        am.reload(am.files)


def stop(root: Path) -> None:
    for name, folder in (("alertmanager", ALERTMANAGER_DIR), ("webhook", WEBHOOK_DIR)):
        Process(name, root / folder, []).stop()
