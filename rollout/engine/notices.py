"""Release events as notifications: started, step passed, promoted, aborted (with the gate, the
values and the report) and held (a human must act), posted to Alertmanager as alerts named
``PortalReleaseEvent`` so they reach the stack's receivers like any alert.

Sending never holds up or fails a release: notifications go out from a background thread, in
order, each retried a bounded number of times by the ``Alerting`` port; a notification that
still fails is reported on the event sink and dropped. ``portal:alerts.releaseEvents: false``
turns them off for a stack.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

from contract import alertmanager
from contract.panels import ALERT_PANELS
from rollout.engine.context import Context
from rollout.engine.records import RUNBOOK
from rollout.ledger import Release
from rollout.ports import AlertingError, Notification

LIFETIME_S = 600.0
"""How long Alertmanager keeps a release event (it is sent once; never as "resolved")."""
FLUSH_S = 30.0
"""How long the end of a run waits for notifications still being retried."""


class Outbox:
    """Notifications sent one after another by a daemon thread."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._queue: deque[tuple[str, str, Notification]] = deque()
        self._busy = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def send(self, release_id: str, event: str, notification: Notification) -> None:
        with self._cond:
            self._queue.append((release_id, event, notification))
            self._busy += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="release-notices", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    return
                release_id, event, notification = self._queue.popleft()
            try:
                self.ctx.target.alerting.notify([notification])
            except AlertingError as exc:
                self.ctx.emit("info", release_id, f"release notification '{event}' not sent: {exc}")
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def flush(self, timeout_s: float = FLUSH_S) -> None:
        """Until every notification was sent or given up on (at most ``timeout_s``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._busy == 0, timeout=timeout_s):
                self.ctx.emit(
                    "info", "", f"{self._busy} release notification(s) still unsent; dropped"
                )


def _values(check: str | None, values: Mapping[str, float | None]) -> str:
    """``canary 21.4%, stable 0.4%, threshold 3%`` (error rates), ``canary 395 ms, ...``
    (latencies), else the numbers."""

    def show(v: float) -> str:
        if check and "error" in check:
            return f"{v * 100:.3g}%"
        if check and "latency" in check:
            return f"{v:.0f} ms"
        return f"{v:.4g}"

    return ", ".join(f"{k} {show(v)}" for k, v in values.items() if v is not None)


class Notices:
    """What each release event says."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.enabled = ctx.cfg.alerts.release_events
        self.outbox = Outbox(ctx)

    def _post(
        self,
        release: Release,
        event: str,
        severity: str,
        annotations: dict[str, str],
        step: int | None = None,
    ) -> None:
        if not self.enabled:
            return
        cfg = self.ctx.cfg
        labels = {
            "alertname": alertmanager.RELEASE_EVENT,
            "event": event,
            "severity": severity,
            "stack": cfg.stack,
            "environment": cfg.environment,
            "namespace": cfg.namespace,
            "release": release.id,
            "version": release.version,
        }
        if step is not None:
            labels["step"] = str(step + 1)
        panel = ALERT_PANELS["PortalReleaseAborted"]
        annotations = {
            "dashboard_url": cfg.alerts.grafana_url + panel.path,
            "target": self.ctx.target.name,
            **annotations,
        }
        if release.report:
            annotations["report"] = release.report
        now = self.ctx.clock()
        notification = Notification(labels, annotations, now, now + LIFETIME_S)
        self.outbox.send(release.id, event, notification)

    def started(self, release: Release) -> None:
        stable = release.previous_stable.version if release.previous_stable else "?"
        where = self.ctx.target.name
        self._post(
            release,
            "started",
            "info",
            {
                "summary": f"Release {release.id}: {release.version} started on {where}",
                "description": f"Canary steps {', '.join(release.steps)}; stable runs {stable}.",
            },
        )

    def step_passed(self, release: Release, index: int) -> None:
        total = len(release.steps)
        last = next((v for v in reversed(release.verdicts) if v.gate == "metrics"), None)
        self._post(
            release,
            "step_passed",
            "info",
            {
                "summary": f"Release {release.id}: step {index + 1}/{total} passed "
                f"({release.steps[index]})",
                "description": last.reason if last else "every gate passed",
            },
            step=index,
        )

    def promoted(self, release: Release) -> None:
        self._post(
            release,
            "promoted",
            "info",
            {
                "summary": f"Release {release.id}: {release.version} promoted",
                "description": release.reason or "",
            },
        )

    def aborted(self, release: Release) -> None:
        incident = release.incident
        annotations = {
            "summary": f"Release {release.id}: {release.version} rolled back",
            "description": release.reason or "",
            "runbook_url": self.ctx.cfg.alerts.runbook_url(RUNBOOK),
        }
        if incident is not None:
            annotations["gate"] = " / ".join(g for g in (incident.gate, incident.check) if g)
            annotations["value"] = _values(incident.check, incident.values)
        self._post(release, "aborted", "warning", annotations)

    def held(self, release: Release) -> None:
        where = f"--stack {self.ctx.cfg.stack}"
        self._post(
            release,
            "held",
            "warning",
            {
                "summary": f"Release {release.id}: {release.version} waits for a human "
                f"({release.status.value.lower()} at step {release.step + 1}/{len(release.steps)}, "
                f"canary at {release.weight}%)",
                "description": f"{release.reason or ''}. `portalctl release promote|abort|resume "
                f"{where}`",
            },
        )

    def flush(self) -> None:
        if self.enabled:
            self.outbox.flush()
