"""The release engine: canary steps gated by health and metrics, rollback, promotion, resume.

Every transition is written to the ledger as an ``intent`` before the target is touched and
marked ``done`` after; a ``portalctl`` killed at any point is resumed by performing the last
unfinished transition again (target methods are idempotent) and continuing from the step the
release was on, never repeating a finished step or skipping one. A lease in the ledger keeps
one release per stack at a time; a holder that stops renewing it loses it after
``canary.leaseTtl``.
"""

from __future__ import annotations

import contextlib
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from contract.config import StackConfig, Step, VerdictPolicy
from rollout.analysis import (
    Check,
    GateResult,
    MetricsSample,
    Snapshot,
    judge_health,
    judge_metrics,
    queries,
    snapshots_of,
    track_counts,
)
from rollout.events import Event, EventKind, EventSink, ignore
from rollout.ledger import (
    ACTIVE,
    Ledger,
    LedgerError,
    ReleaseInProgress,
    active_release,
    find_release,
    lease_live,
    new_holder,
)
from rollout.prometheus import Prometheus, PrometheusError
from rollout.target import ReleaseSpec, Target, TargetError

RUNBOOK = "release-aborted"
KEEP_RELEASES = 50
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class ReleaseError(RuntimeError):
    """A release cannot be started, resumed or changed; the message says why."""


@dataclass(frozen=True)
class Outcome:
    status: str
    """``PROMOTED``, ``ABORTED`` or ``HELD`` (a human must act)."""
    release_id: str
    reason: str
    incident: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return {"PROMOTED": 0, "ABORTED": 1, "HELD": 3}.get(self.status, 1)


class _Stop(Exception):
    def __init__(self, outcome: str, reason: str, result: GateResult | None = None) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.result = result


def release_id_for(version: str, now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{version}"


class ReleaseEngine:
    def __init__(
        self,
        cfg: StackConfig,
        target: Target,
        *,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        holder: str | None = None,
        stackfile: Path | None = None,
        pushgateway_url: str | None = None,
        prometheus: Prometheus | None = None,
    ) -> None:
        self.cfg = cfg
        self.canary = cfg.canary
        self.target = target
        self.emit = events or ignore
        self.clock = clock
        self.sleep = sleep
        self.holder = holder or new_holder()
        self.stackfile = stackfile
        self.pushgateway_url = pushgateway_url
        self.prom = prometheus or Prometheus(target.prometheus_url)
        self.ledger = Ledger(target.ledger(), cfg.stack, target.name)

    # =========================================================================== public

    def start(self, spec: ReleaseSpec) -> Outcome:
        if not VERSION_RE.match(spec.version):
            raise ReleaseError(
                f"version {spec.version!r} is not a valid label (1-64 of A-Za-z0-9._+-)"
            )
        state = self.target.state()
        now = self.clock()
        release_id = spec.release_id or release_id_for(spec.version, now)
        spec = ReleaseSpec(release_id, spec.version, spec.image, spec.env)

        def begin(doc: dict[str, Any]) -> None:
            self._take_lease(doc, release_id)
            active = active_release(doc)
            if active is not None:
                raise ReleaseInProgress(
                    f"release {active['id']} ({active['version']}) is {active['status']}: "
                    "resume, promote or abort it first"
                )
            if doc.get("stable") is None:
                doc["stable"] = {
                    "version": state.stable_version,
                    "image": state.stable_image,
                    "release_id": None,
                    "at": now,
                }
                doc["stable_history"] = [doc["stable"]]
            if spec.version == doc["stable"]["version"] and spec.image == doc["stable"]["image"]:
                raise ReleaseError(f"{spec.version} is already the stable version")
            doc["releases"].append(
                {
                    "id": release_id,
                    "version": spec.version,
                    "image": spec.image,
                    "env": dict(spec.env),
                    "status": "PROGRESSING",
                    "created_at": now,
                    "ended_at": None,
                    "step": 0,
                    "weight": 0,
                    "steps": [s.describe() for s in self.canary.steps],
                    "previous_stable": dict(doc["stable"]),
                    "transitions": [],
                    "verdicts": [],
                    "samples": [],
                    "requests": [],
                    "incident": None,
                    "holder": self.holder,
                }
            )
            del doc["releases"][:-KEEP_RELEASES]

        self.ledger.update(begin)
        self._emit(
            "started",
            release_id,
            f"release {release_id}: {spec.version} "
            f"on {self.target.name}, steps " + ", ".join(s.describe() for s in self.canary.steps),
        )
        self._push(release_id, spec.version, 0)
        return self._run(release_id)

    def resume(self) -> Outcome:
        """Continue the release in flight whose ``portalctl`` died (or that was held)."""
        release_id = ""

        def take(doc: dict[str, Any]) -> None:
            nonlocal release_id
            active = active_release(doc)
            if active is None:
                raise ReleaseError("no release in flight to resume")
            if active["status"] == "PAUSED":
                raise ReleaseError(
                    f"release {active['id']} is paused for approval: "
                    "`portalctl release promote` or `portalctl release abort`"
                )
            release_id = active["id"]
            self._take_lease(doc, release_id)
            active["status"] = "PROGRESSING"
            active["holder"] = self.holder

        self.ledger.update(take)
        self._emit("info", release_id, f"resuming release {release_id}")
        return self._run(release_id)

    def request(self, action: str, by: str) -> Outcome | None:
        """Record a promote or abort. A live ``portalctl`` running the release acts on it within
        one check interval (returns ``None``); with none, this call acts itself."""
        if action not in ("promote", "abort"):
            raise ReleaseError(f"unknown request {action!r} (promote | abort)")
        now = self.clock()
        acting = False
        release_id = ""

        def record(doc: dict[str, Any]) -> None:
            nonlocal acting, release_id
            active = active_release(doc)
            if active is None:
                raise ReleaseError("no release in flight")
            release_id = active["id"]
            live_other = lease_live(doc, now) and doc["lease"]["holder"] != self.holder
            acting = not live_other
            active["requests"].append({"action": action, "by": by, "at": now, "handled": acting})
            if acting:
                self._take_lease(doc, release_id)

        self.ledger.update(record)
        self._emit("request", release_id, f"{action} requested by {by}")
        if not acting:
            return None
        try:
            if action == "abort":
                return self._rollback(release_id, _Stop("ABORTED", f"aborted by {by}"))
            return self._promote(release_id, f"promoted by {by}")
        finally:
            self._drop_lease()

    def status(self) -> dict[str, Any]:
        doc = self.ledger.read()
        return {
            "stack": doc.get("stack"),
            "target": doc.get("target"),
            "stable": doc.get("stable"),
            "lease": doc.get("lease"),
            "lease_live": lease_live(doc, self.clock()),
            "active": active_release(doc),
            "releases": doc.get("releases") or [],
            "contract_migrations": doc.get("contract_migrations") or [],
        }

    def rollback(self, to: str | None = None, force: bool = False) -> Outcome:
        """Scripted rollback of stable to the last known-good release, or ``to`` (a release id
        or version). Refused where a contract migration ran since, unless ``force``."""
        doc = self.ledger.read()
        if active_release(doc) is not None and lease_live(doc, self.clock()):
            raise ReleaseInProgress("a release is in flight: `portalctl release abort` it first")
        history = doc.get("stable_history") or []
        current = doc.get("stable")
        if current is None or not history:
            raise ReleaseError("the ledger has no stable history yet: nothing to roll back to")
        if to is None:
            older = [h for h in history[:-1] if h["version"] != current["version"]]
            if not older:
                raise ReleaseError(f"{current['version']} is the only known-good version")
            goal = older[-1]
        else:
            matches = [h for h in history if to in (h.get("release_id"), h.get("version"))]
            if not matches:
                known = ", ".join(sorted({h["version"] for h in history}))
                raise ReleaseError(f"{to!r} is not a known-good release (known: {known})")
            goal = matches[-1]
        if goal["version"] == current["version"] and goal.get("image") == current.get("image"):
            raise ReleaseError(f"{goal['version']} is already the stable version")
        since = [c for c in doc.get("contract_migrations") or [] if c["at"] > goal["at"]]
        if since and not force:
            applied = ", ".join(m for c in since for m in c.get("applied", [])) or "?"
            raise ReleaseError(
                f"cannot roll back to {goal['version']}: contract migration(s) {applied} ran "
                "since, so its code may not work with the schema; use --force to roll back anyway"
            )
        now = self.clock()
        rid = f"rollback-{release_id_for(goal['version'], now)}"

        def begin(d: dict[str, Any]) -> None:
            self._take_lease(d, rid)
            d.setdefault("rollbacks", []).append(
                {
                    "id": rid,
                    "from": current,
                    "to": goal,
                    "at": now,
                    "forced": bool(since),
                    "state": "intent",
                }
            )

        self.ledger.update(begin)
        try:
            self.target.set_stable(goal["version"], goal.get("image"))

            def done(d: dict[str, Any]) -> None:
                d["rollbacks"][-1]["state"] = "done"
                d["stable"] = {
                    "version": goal["version"],
                    "image": goal.get("image"),
                    "release_id": goal.get("release_id"),
                    "at": self.clock(),
                }
                d["stable_history"].append(d["stable"])

            self.ledger.update(done)
            self._update_stackfile(goal["version"], goal.get("image"))
        finally:
            self._drop_lease()
        reason = f"stable rolled back from {current['version']} to {goal['version']}"
        self._emit("rolled_back", rid, reason)
        return Outcome("PROMOTED", rid, reason)

    def contract(self, by: str) -> list[str]:
        """Run the contract migrations of the stable version (once no older version runs) and
        record them: from now on a rollback to a release before them is refused."""
        doc = self.ledger.read()
        if active_release(doc) is not None:
            raise ReleaseError("a release is in flight: contract migrations wait until it ends")
        stable = doc.get("stable") or {}
        version = stable.get("version") or self.target.state().stable_version
        spec = ReleaseSpec(str(stable.get("release_id") or "stable"), version, stable.get("image"))
        result = self.target.run_migrations(spec, "contract")
        if not result.ok:
            raise ReleaseError(f"contract migration failed: {result.detail}")
        if result.applied:
            now = self.clock()
            self.ledger.update(
                lambda d: d.setdefault("contract_migrations", []).append(
                    {
                        "release_id": spec.release_id,
                        "version": version,
                        "at": now,
                        "applied": list(result.applied),
                        "by": by,
                    }
                )
            )
        return list(result.applied)

    # ========================================================================= the run

    def _run(self, release_id: str) -> Outcome:
        try:
            return self._drive(release_id)
        finally:
            self._drop_lease()

    def _release(self, release_id: str) -> dict[str, Any]:
        release = self.ledger.find(release_id)
        if release is None:
            raise LedgerError(f"release {release_id} vanished from the ledger")
        return release

    def _drive(self, release_id: str) -> Outcome:
        release = self._release(release_id)
        spec = ReleaseSpec(
            release["id"], release["version"], release.get("image"), release.get("env") or {}
        )
        transitions = release["transitions"]
        done = {t["action"] for t in transitions if t["state"] == "done"}
        pending = transitions[-1] if transitions and transitions[-1]["state"] == "intent" else None
        if pending is not None:
            self._emit("info", release_id, f"redoing unfinished transition {pending['action']}")
            if pending["action"] == "rollback":
                return self._rollback(
                    release_id,
                    _Stop("ABORTED", release.get("reason") or "rollback interrupted; finished now"),
                )
            if pending["action"] == "promote":
                return self._promote(release_id, "promotion interrupted; finished now")

        try:
            if "migrate_expand" not in done:
                self._transition(release_id, "migrate_expand", {}, lambda: self._migrate(spec))
            if "deploy_canary" not in done:
                replicas = self.cfg.app.canary_replicas
                self._transition(
                    release_id,
                    "deploy_canary",
                    {"replicas": replicas},
                    lambda: self.target.deploy_canary(spec, replicas),
                )
                self._emit(
                    "canary_deployed",
                    release_id,
                    f"canary {spec.version} running ({replicas} instance(s)), no traffic",
                )
            steps = self.canary.steps
            for index in range(int(release["step"]), len(steps)):
                self._run_step(release_id, spec, index, steps[index])
                self.ledger.update(partial(_set, release_id=release_id, step=index + 1))
        except _Stop as stop:
            if stop.outcome == "PROMOTE":
                return self._promote(release_id, stop.reason)
            if stop.outcome == "HELD":
                return self._hold(release_id, stop)
            return self._rollback(release_id, stop)
        return self._promote(release_id, "every step passed")

    def _migrate(self, spec: ReleaseSpec) -> None:
        result = self.target.run_migrations(spec, "expand")
        if not result.ok:
            raise _Stop(
                "ABORTED",
                f"expand migration failed: {result.detail}",
                GateResult(
                    "migration",
                    "FAIL",
                    (Check("migration", "FAIL", None, None, None, "", result.detail),),
                    result.detail,
                ),
            )
        applied = ", ".join(result.applied) or "nothing new"
        self._emit("migration", spec.release_id, f"expand migrations: {applied}")

    def _transition(
        self, release_id: str, action: str, args: dict[str, Any], act: Callable[[], None]
    ) -> None:
        now = self.clock()

        def intent(doc: dict[str, Any]) -> None:
            self._check_lease(doc)
            _intent(_find(doc, release_id), action, args, now)

        self.ledger.update(intent)
        try:
            act()
        except TargetError as exc:
            raise _Stop(
                "ABORTED",
                f"{action} failed: {exc}",
                GateResult(
                    "target",
                    "FAIL",
                    (Check(action, "FAIL", None, None, None, "", str(exc)),),
                    str(exc),
                ),
            ) from exc

        def finish(doc: dict[str, Any]) -> None:
            release = _find(doc, release_id)
            _done(release, self.clock())
            if action == "set_weight":
                release["weight"] = args["weight"]

        self.ledger.update(finish)

    # ------------------------------------------------------------------------ one step

    def _run_step(self, release_id: str, spec: ReleaseSpec, index: int, step: Step) -> None:
        total = len(self.canary.steps)
        if step.pause:
            self.ledger.update(lambda d: _set(d, release_id, status="PAUSED"))
            self._emit(
                "paused",
                release_id,
                f"step {index + 1}/{total}: paused for approval - "
                "`portalctl release promote` to continue, `abort` to roll back",
                step=index,
            )
            raise _Stop("HELD", "paused for approval")
        weight = int(step.weight or 0)
        self._emit(
            "step_started",
            release_id,
            f"step {index + 1}/{total}: {step.describe()}",
            step=index,
            weight=weight,
        )
        self._transition(
            release_id,
            "set_weight",
            {"weight": weight, "step": index},
            lambda: self.target.set_weight(weight),
        )
        self._emit("weight_set", release_id, f"canary weight {weight}%", step=index, weight=weight)
        self._analyse(release_id, spec, index, step, weight)

    def _analyse(
        self, release_id: str, spec: ReleaseSpec, index: int, step: Step, weight: int
    ) -> None:
        c = self.canary
        settle_until = self.clock() + c.settle_s
        streaks: dict[str, int] = {}
        while self.clock() < settle_until:
            self.sleep(min(c.interval_s, max(0.0, settle_until - self.clock())))
            self._between_checks(release_id)
            self._health(release_id, index, weight, streaks, record=False)
        window_start = self.clock()
        # the readings of the release so far: the evidence keeps growing across steps
        history = snapshots_of(self._release(release_id)["samples"])
        opened = False
        no_data_since: float | None = None
        provider_since: float | None = None
        while True:
            self.sleep(c.interval_s)
            self._between_checks(release_id)
            now = self.clock()
            elapsed = now - window_start
            final = elapsed >= step.analysis_s
            health = self._health(release_id, index, weight, streaks, record=True)
            metrics, sample = self._metrics(
                spec, index, now, None if opened else window_start, history
            )
            if sample is not None:
                history.extend(sample.snapshots)
                opened = True
            self._record(
                release_id,
                index,
                weight,
                elapsed,
                [health, metrics],
                sample,
                keep=final or metrics.verdict != "PASS" or health.verdict != "PASS",
            )
            for result in (health, metrics):
                self._emit(
                    "verdict",
                    release_id,
                    f"{result.gate}: {result.verdict} - {result.reason}",
                    step=index,
                    weight=weight,
                    data={"elapsed_s": elapsed, "window_s": step.analysis_s, **result.to_dict()},
                )
            if health.verdict == "FAIL":
                raise _Stop("ABORTED", f"health gate failed: {health.reason}", health)
            if metrics.verdict == "FAIL":
                raise _Stop("ABORTED", f"metrics gate failed: {metrics.reason}", metrics)
            if metrics.verdict == "PROVIDER_ERROR":
                provider_since = provider_since if provider_since is not None else now
                _apply_policy(
                    c.on_provider_error,
                    "onProviderError",
                    "Prometheus unavailable",
                    now - provider_since,
                    metrics,
                )
                continue
            provider_since = None
            if metrics.verdict == "INSUFFICIENT_DATA":
                no_data_since = no_data_since if no_data_since is not None else now
                _apply_policy(
                    c.on_insufficient_data,
                    "onInsufficientData",
                    "insufficient data",
                    now - no_data_since,
                    metrics,
                )
                continue
            no_data_since = None
            if final:
                self._emit(
                    "info",
                    release_id,
                    f"step {index + 1} passed at {weight}%",
                    step=index,
                    weight=weight,
                )
                return

    def _between_checks(self, release_id: str) -> None:
        """Act on promote/abort requests, and renew the lease when it runs low (each recorded
        check round renews it too, so most rounds only read here)."""
        now = self.clock()
        doc = self.ledger.read()
        self._check_lease(doc)
        pending = any(not r["handled"] for r in _find(doc, release_id)["requests"])
        left = float(doc["lease"]["expires_at"]) - now
        if not pending and left > self.canary.lease_ttl_s / 2 + self.canary.interval_s:
            return
        found: dict[str, Any] | None = None

        def renew(doc: dict[str, Any]) -> None:
            nonlocal found
            self._renew_lease(doc, now)
            release = _find(doc, release_id)
            for req in release["requests"]:
                if not req["handled"]:
                    req["handled"] = True
                    found = dict(req)
                    break

        self.ledger.update(renew)
        if found is not None:
            if found["action"] == "abort":
                raise _Stop("ABORTED", f"aborted by {found['by']}")
            raise _Stop("PROMOTE", f"promoted by {found['by']} (remaining steps skipped)")

    def _health(
        self, release_id: str, index: int, weight: int, streaks: dict[str, int], record: bool
    ) -> GateResult:
        try:
            probes = self.target.probe_canary()
        except TargetError as exc:
            check = Check("health", "PROVIDER_ERROR", None, None, None, "", str(exc))
            return GateResult("health", "PROVIDER_ERROR", (check,), str(exc))
        for p in probes:
            streaks[p.instance] = 0 if p.ok else streaks.get(p.instance, 0) + 1
        result = judge_health(probes, streaks, self.canary)
        if result.verdict == "FAIL" and not record:
            raise _Stop("ABORTED", f"health gate failed while settling: {result.reason}", result)
        return result

    def _metrics(
        self,
        spec: ReleaseSpec,
        index: int,
        now: float,
        window_start: float | None,
        history: list[Snapshot],
    ) -> tuple[GateResult, MetricsSample | None]:
        """Read both tracks' counters (and, at a step's first check, as they were at
        ``window_start``) and judge the release's readings so far."""
        q = queries(spec.version)

        def read(at: float | None, opens: bool) -> Snapshot:
            errors = [(e.labels, e.value) for e in self.prom.query(q["errors"], at)]
            buckets = [(b.labels, b.value) for b in self.prom.query(q["latency"], at)]
            return Snapshot(
                at or now,
                index,
                track_counts("canary", errors, buckets),
                track_counts("stable", errors, buckets),
                opens,
            )

        try:
            taken = ([read(window_start, True)] if window_start is not None else []) + [
                read(None, False)
            ]
        except PrometheusError as exc:
            check = Check("prometheus", "PROVIDER_ERROR", None, None, None, q["latency"], str(exc))
            return GateResult("metrics", "PROVIDER_ERROR", (check,), str(exc)), None
        result, window, stats = judge_metrics(
            [*history, *taken], self.canary, self.cfg.slo, queries=q
        )
        return result, MetricsSample(tuple(taken), window, stats)

    def _record(
        self,
        release_id: str,
        index: int,
        weight: int,
        elapsed: float,
        results: list[GateResult],
        sample: MetricsSample | None,
        keep: bool,
    ) -> None:
        now = self.clock()

        def add(doc: dict[str, Any]) -> None:
            self._renew_lease(doc, now)
            release = _find(doc, release_id)
            point: dict[str, Any] = {"at": now, "weight": weight, "step": index}
            if sample is not None:
                point.update({k: v for k, v in sample.to_dict().items()})
            point["verdicts"] = {r.gate: r.verdict for r in results}
            release["samples"].append(point)
            if keep:
                for r in results:
                    release["verdicts"].append(
                        {
                            "step": index,
                            "weight": weight,
                            "at": now,
                            "elapsed_s": round(elapsed, 3),
                            **r.to_dict(),
                        }
                    )

        self.ledger.update(add)

    # ------------------------------------------------------------------ endings

    def _rollback(self, release_id: str, stop: _Stop) -> Outcome:
        now = self.clock()
        incident = _incident(self._release(release_id), stop, now)

        def intent(doc: dict[str, Any]) -> None:
            release = _find(doc, release_id)
            release["reason"] = stop.reason
            _intent(release, "rollback", {}, now, redo_last=True)
            if release.get("incident") is None:
                release["incident"] = incident

        self.ledger.update(intent)
        self.target.rollback()

        def done(doc: dict[str, Any]) -> None:
            release = _find(doc, release_id)
            _done(release, self.clock())
            release.update(status="ABORTED", weight=0, ended_at=self.clock())

        self.ledger.update(done)
        release = self._release(release_id)
        self._push(release_id, release["version"], 2, aborted_at=now)
        self._emit(
            "rolled_back",
            release_id,
            f"rolled back: {stop.reason}",
            data={"incident": release.get("incident")},
        )
        return Outcome("ABORTED", release_id, stop.reason, release.get("incident"))

    def _promote(self, release_id: str, reason: str) -> Outcome:
        release = self._release(release_id)
        spec = ReleaseSpec(
            release["id"], release["version"], release.get("image"), release.get("env") or {}
        )
        now = self.clock()

        def intent(doc: dict[str, Any]) -> None:
            _intent(_find(doc, release_id), "promote", {}, now, redo_last=True)

        self.ledger.update(intent)
        try:
            self.target.promote(spec)
        except TargetError as exc:
            return self._rollback(release_id, _Stop("ABORTED", f"promotion failed: {exc}"))

        def done(doc: dict[str, Any]) -> None:
            r = _find(doc, release_id)
            _done(r, self.clock())
            r.update(status="PROMOTED", weight=0, ended_at=self.clock(), reason=reason)
            doc["stable"] = {
                "version": spec.version,
                "image": spec.image,
                "release_id": release_id,
                "at": self.clock(),
            }
            doc.setdefault("stable_history", []).append(doc["stable"])

        self.ledger.update(done)
        self._update_stackfile(spec.version, spec.image)
        self._push(release_id, spec.version, 1)
        self._emit("promoted", release_id, f"{spec.version} promoted: {reason}")
        return Outcome("PROMOTED", release_id, reason)

    def _hold(self, release_id: str, stop: _Stop) -> Outcome:
        status = "PAUSED" if stop.reason == "paused for approval" else "HELD"
        self.ledger.update(lambda d: _set(d, release_id, status=status, reason=stop.reason))
        if status == "HELD":
            self._emit(
                "held",
                release_id,
                f"held: {stop.reason} - `portalctl release resume`, `promote` or `abort`",
            )
        return Outcome("HELD", release_id, stop.reason)

    # --------------------------------------------------------------------- plumbing

    def _take_lease(self, doc: dict[str, Any], release_id: str) -> None:
        now = self.clock()
        lease = doc.get("lease")
        if lease and lease_live(doc, now) and lease["holder"] != self.holder:
            left = float(lease["expires_at"]) - now
            raise ReleaseInProgress(
                f"stack {self.cfg.stack} is held by {lease['holder']} for release "
                f"{lease.get('release_id')} (lease expires in {left:.0f}s if that portalctl died)"
            )
        doc["lease"] = {
            "holder": self.holder,
            "release_id": release_id,
            "expires_at": now + self.canary.lease_ttl_s,
        }

    def _check_lease(self, doc: dict[str, Any]) -> None:
        lease = doc.get("lease")
        if not lease or lease.get("holder") != self.holder:
            holder = lease.get("holder") if lease else "nobody"
            raise ReleaseInProgress(f"this portalctl lost the lease (now held by {holder})")

    def _renew_lease(self, doc: dict[str, Any], now: float) -> None:
        self._check_lease(doc)
        doc["lease"]["expires_at"] = now + self.canary.lease_ttl_s

    def _drop_lease(self) -> None:
        def drop(doc: dict[str, Any]) -> None:
            lease = doc.get("lease")
            if lease and lease.get("holder") == self.holder:
                doc["lease"] = None

        with contextlib.suppress(LedgerError, OSError):  # it expires on its own
            self.ledger.update(drop)

    def _update_stackfile(self, version: str, image: str | None) -> None:
        if self.stackfile is None:
            return
        from rollout.stackfile import set_app_version

        set_app_version(self.stackfile, version, image)

    def _push(
        self, release_id: str, version: str, status: int, aborted_at: float | None = None
    ) -> None:
        """Publish the release's state to the Pushgateway (best effort: never fails a release)."""
        if not self.pushgateway_url:
            return
        body = (
            "# TYPE portal_release_status gauge\n"
            f'portal_release_status{{version="{version}"}} {status}\n'
        )
        if aborted_at is not None:
            body += (
                "# TYPE portal_release_aborted_timestamp_seconds gauge\n"
                f'portal_release_aborted_timestamp_seconds{{version="{version}"}} '
                f"{aborted_at:.3f}\n"
            )
        url = (
            f"{self.pushgateway_url.rstrip('/')}/metrics/job/portal_release/"
            f"stack/{self.cfg.stack}/release/{release_id}"
        )
        # Through the API server's service proxy a push needs the same credentials as queries.
        same_host = url.split("/api/", 1)[0] == self.prom.base_url.split("/api/", 1)[0]
        headers = {"Content-Type": "text/plain; version=0.0.4"}
        if same_host:
            headers.update(self.prom.headers)
        req = urllib.request.Request(url, data=body.encode(), method="PUT", headers=headers)
        try:
            context = self.prom.ssl_context if same_host else None
            urllib.request.urlopen(req, timeout=3, context=context).close()
        except (urllib.error.URLError, OSError) as exc:
            self._emit("info", release_id, f"could not push release state to {url}: {exc}")

    def _emit(
        self,
        kind: EventKind,
        release_id: str,
        message: str,
        *,
        step: int | None = None,
        weight: int | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.emit(Event(kind, release_id, message, step, weight, data or {}))


def _find(doc: dict[str, Any], release_id: str) -> dict[str, Any]:
    release = find_release(doc, release_id)
    if release is None:
        raise LedgerError(f"release {release_id} is not in the ledger")
    return release


def _intent(
    release: dict[str, Any],
    action: str,
    args: dict[str, Any],
    now: float,
    redo_last: bool = False,
) -> None:
    """Record ``action`` as about to happen (write-ahead). ``redo_last``: when the last record
    is already this action (a crash interrupted it), that record is performed again."""
    transitions = release["transitions"]
    if redo_last and transitions and transitions[-1]["action"] == action:
        return
    transitions.append(
        {"seq": len(transitions) + 1, "action": action, "args": args, "state": "intent", "at": now}
    )


def _done(release: dict[str, Any], at: float) -> None:
    release["transitions"][-1].update(state="done", done_at=at)


def _apply_policy(
    policy: VerdictPolicy, key: str, what: str, lasted_s: float, result: GateResult
) -> None:
    """Once a verdict that is neither PASS nor FAIL has lasted its limit: hold or roll back."""
    if lasted_s >= policy.limit_s:
        raise _Stop(
            "HELD" if policy.then == "hold" else "ABORTED",
            f"{what} for {lasted_s:.0f}s ({key}: {policy.then}): {result.reason}",
            result,
        )


def _set(doc: dict[str, Any], release_id: str, **fields: Any) -> None:
    _find(doc, release_id).update(fields)


def _incident(release: dict[str, Any], stop: _Stop, now: float) -> dict[str, Any]:
    result = stop.result
    check = result.failing() if result is not None else None
    if check is None and result is not None and result.checks:
        check = result.checks[0]
    return {
        "release_id": release["id"],
        "version": release["version"],
        "opened_at": now,
        "gate": result.gate if result is not None else "manual",
        "check": check.name if check else None,
        "query": check.query if check else None,
        "values": {"canary": check.value, "stable": check.baseline, "threshold": check.threshold}
        if check
        else {},
        "reason": stop.reason,
        "runbook": RUNBOOK,
        "actions": [],
    }


__all__ = ["ACTIVE", "Outcome", "ReleaseEngine", "ReleaseError", "ReleaseInProgress"]
