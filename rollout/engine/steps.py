"""One canary step: set the weight, let it settle, then check every interval until the analysis
window ends. Each check round gives each gate one verdict, recorded in the ledger; a FAIL, an
operator's request or a verdict policy's limit ends the step early with a ``Stop``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from contract.config import Step, VerdictPolicy
from rollout.analysis import Check, GateResult, judge_health, judge_metrics
from rollout.engine.compaction import add_rounds
from rollout.engine.context import Context
from rollout.engine.outcome import Stop, StopKind
from rollout.folded import Folded
from rollout.ledger import Action, LedgerDoc, Request, require
from rollout.ledger.model import RequestRecord, Sample, TransitionArgs, VerdictRecord
from rollout.ports import ReleaseSpec, TargetError
from rollout.prometheus import PrometheusError
from rollout.readings import MetricsSample, Snapshot, queries, snapshots_of, track_counts

UNAVAILABLE = {"metrics": "Prometheus", "health": "the health probes", "ledger": "the ledger"}
"""What a gate's PROVIDER_ERROR means, in the reason of a policy's hold or rollback."""
Transition = Callable[[str, Action, TransitionArgs, Callable[[], None]], None]


@dataclass
class _Window:
    """The clock of one analysis window, and since when each non-verdict has lasted."""

    start: float
    since: dict[str, float] = field(default_factory=dict)


class StepRunner:
    def __init__(self, ctx: Context, transition: Transition) -> None:
        self.ctx = ctx
        self.canary = ctx.cfg.canary
        self.transition = transition
        self._unsaved: list[tuple[Sample, list[VerdictRecord]]] = []

    def run(self, release_id: str, spec: ReleaseSpec, index: int, step: Step) -> None:
        total = len(self.canary.steps)
        if step.pause:
            self.ctx.emit(
                "paused",
                release_id,
                f"step {index + 1}/{total}: paused for approval - "
                "`portalctl release promote` to continue, `abort` to roll back",
                step=index,
            )
            raise Stop(StopKind.PAUSE, "paused for approval")
        weight = int(step.weight or 0)
        self.ctx.emit(
            "step_started",
            release_id,
            f"step {index + 1}/{total}: {step.describe()}",
            step=index,
            weight=weight,
        )
        self.transition(
            release_id,
            Action.SET_WEIGHT,
            TransitionArgs(weight=weight, step=index),
            lambda: self.ctx.target.router.set_weight(weight),
        )
        self.ctx.emit(
            "weight_set", release_id, f"canary weight {weight}%", step=index, weight=weight
        )
        self._analyse(release_id, spec, index, step, weight)

    def _analyse(
        self, release_id: str, spec: ReleaseSpec, index: int, step: Step, weight: int
    ) -> None:
        ctx, c = self.ctx, self.canary
        streaks: dict[str, int] = {}
        settle_until = ctx.clock() + c.settle_s
        while ctx.clock() < settle_until:
            ctx.sleep(min(c.interval_s, max(0.0, settle_until - ctx.clock())))
            self._between_checks(release_id)
            self._health(streaks, settling=True)
        window = _Window(start=ctx.clock())
        # the readings of the release so far: the evidence keeps growing across steps
        release = require(ctx.act(release_id, "reading the ledger", ctx.ledger.read), release_id)
        history = snapshots_of([s.model_dump(mode="json") for s in release.samples])
        folded = Folded.from_dict(release.folded) if release.folded else None
        opened = False
        while True:
            ctx.sleep(c.interval_s)
            self._between_checks(release_id)
            now = ctx.clock()
            elapsed = now - window.start
            health = self._health(streaks, settling=False)
            metrics, sample = self._metrics(
                spec, index, now, None if opened else window.start, history, folded
            )
            if sample is not None:
                history.extend(sample.snapshots)
                opened = True
            results = [health, metrics]
            keep = elapsed >= step.analysis_s or any(r.verdict != "PASS" for r in results)
            saved = self._record(release_id, index, weight, elapsed, results, sample, keep)
            for result in results:
                ctx.emit(
                    "verdict",
                    release_id,
                    f"{result.gate}: {result.verdict} - {result.reason}",
                    step=index,
                    weight=weight,
                    data={"elapsed_s": elapsed, "window_s": step.analysis_s, **result.to_dict()},
                )
            if self._judge(window, now, results, saved) and elapsed >= step.analysis_s:
                ctx.emit(
                    "info",
                    release_id,
                    f"step {index + 1} passed at {weight}%",
                    step=index,
                    weight=weight,
                )
                return

    def _judge(self, window: _Window, now: float, results: list[GateResult], saved: bool) -> bool:
        """True when this round counts towards passing; a ``Stop`` when the release must end.
        A verdict that is neither PASS nor FAIL (of either gate, or a round whose readings the
        ledger could not take) keeps the weight until its policy's limit."""
        c = self.canary
        for result in results:
            if result.verdict == "FAIL":
                raise Stop(
                    StopKind.ROLL_BACK, f"{result.gate} gate failed: {result.reason}", result
                )
        waiting = [r for r in results if r.verdict == "PROVIDER_ERROR"]
        if not saved:
            check = Check("ledger", "PROVIDER_ERROR", None, None, None, "", "ledger out of reach")
            waiting.append(GateResult("ledger", "PROVIDER_ERROR", (check,), check.detail))
        if not waiting:
            waiting = [r for r in results if r.verdict == "INSUFFICIENT_DATA"]
        verdict = waiting[0].verdict if waiting else "PASS"
        if verdict != "PROVIDER_ERROR":
            window.since.pop("PROVIDER_ERROR", None)
        if verdict == "PASS":
            window.since.clear()
            return True
        policy: VerdictPolicy = c.on_insufficient_data
        what, key = "insufficient data", "onInsufficientData"
        if verdict == "PROVIDER_ERROR":
            gate = waiting[0].gate
            what = f"{UNAVAILABLE.get(gate, gate)} unavailable"
            policy, key = c.on_provider_error, "onProviderError"
        lasted = now - window.since.setdefault(verdict, now)
        _apply_policy(policy, key, what, lasted, waiting[0])
        return False

    def _between_checks(self, release_id: str) -> None:
        """Act on promote/abort requests written to the ledger meanwhile (the lease is renewed
        in the background; ``LeaseLost`` here when another holder has it)."""
        ctx = self.ctx
        try:
            doc = ctx.ledger.read()
        except TargetError as exc:
            if not ctx.coming_back(exc):
                raise
            return  # the ledger is out of reach: this round's record will say so
        ctx.lease.check(doc)
        if all(r.handled for r in require(doc, release_id).requests):
            return
        found: RequestRecord | None = None

        def handle(doc: LedgerDoc) -> None:
            nonlocal found
            for req in require(doc, release_id).requests:
                if not req.handled:
                    req.handled = True
                    found = req.model_copy()
                    break

        try:
            ctx.write(handle)
        except TargetError as exc:
            if not ctx.coming_back(exc):
                raise
            return
        if found is None:
            return
        if found.action is Request.ABORT:
            raise Stop(StopKind.ROLL_BACK, f"aborted by {found.by}")
        raise Stop(StopKind.PROMOTE_NOW, f"promoted by {found.by} (remaining steps skipped)")

    def _health(self, streaks: dict[str, int], settling: bool) -> GateResult:
        try:
            probes = self.ctx.target.diagnostics.probe("canary")
        except TargetError as exc:
            self.ctx.coming_back(exc)  # notes a target that does not answer
            check = Check("health", "PROVIDER_ERROR", None, None, None, "", str(exc))
            return GateResult("health", "PROVIDER_ERROR", (check,), str(exc))
        for p in probes:
            streaks[p.instance] = 0 if p.ok else streaks.get(p.instance, 0) + 1
        result = judge_health(probes, streaks, self.canary)
        if result.verdict == "FAIL" and settling:
            reason = f"health gate failed while settling: {result.reason}"
            raise Stop(StopKind.ROLL_BACK, reason, result)
        return result

    def _metrics(
        self,
        spec: ReleaseSpec,
        index: int,
        now: float,
        window_start: float | None,
        history: list[Snapshot],
        folded: Folded | None,
    ) -> tuple[GateResult, MetricsSample | None]:
        """Read both tracks' counters (and, at a step's first check, as they were at
        ``window_start``) and judge the release's readings so far."""
        q = queries(spec.version)
        prom = self.ctx.target.telemetry.prometheus

        def read(at: float | None, opens: bool) -> Snapshot:
            errors = [(e.labels, e.value) for e in prom.query(q["errors"], at)]
            buckets = [(b.labels, b.value) for b in prom.query(q["latency"], at)]
            return Snapshot(
                at or now,
                index,
                track_counts("canary", errors, buckets),
                track_counts("stable", errors, buckets),
                opens,
            )

        try:
            first = [read(window_start, True)] if window_start is not None else []
            taken = [*first, read(None, False)]
        except PrometheusError as exc:
            check = Check("prometheus", "PROVIDER_ERROR", None, None, None, q["latency"], str(exc))
            return GateResult("metrics", "PROVIDER_ERROR", (check,), str(exc)), None
        result, window, stats = judge_metrics(
            [*history, *taken], self.canary, self.ctx.cfg.slo, queries=q, folded=folded
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
    ) -> bool:
        """Add this round to the ledger (with the rounds an unreachable ledger could not take
        before it); whether it was written."""
        ctx = self.ctx
        now = ctx.clock()
        point = Sample.model_validate(
            {"at": now, "weight": weight, "step": index}
            | (sample.to_dict() if sample is not None else {})
            | {"verdicts": {r.gate: r.verdict for r in results}}
        )
        verdicts = [
            VerdictRecord.model_validate(
                {"step": index, "weight": weight, "at": now, "elapsed_s": round(elapsed, 3)}
                | r.to_dict()
            )
            for r in results
        ]

        self._unsaved.append((point, verdicts if keep else []))

        def add(doc: LedgerDoc) -> None:
            release = require(doc, release_id)
            add_rounds(release, self._unsaved)

        try:
            ctx.write(add)
        except TargetError as exc:
            if not ctx.coming_back(exc):
                raise
            ctx.emit(
                "provider_error",
                release_id,
                f"the ledger is out of reach ({exc}): {len(self._unsaved)} round(s) of "
                "readings kept here, written with the next round that reaches it",
            )
            return False
        self._unsaved.clear()
        return True


def _apply_policy(
    policy: VerdictPolicy, key: str, what: str, lasted_s: float, result: GateResult
) -> None:
    """Once a verdict that is neither PASS nor FAIL has lasted its limit: hold or roll back."""
    if lasted_s >= policy.limit_s:
        raise Stop(
            StopKind.HOLD if policy.then == "hold" else StopKind.ROLL_BACK,
            f"{what} for {lasted_s:.0f}s ({key}: {policy.then}): {result.reason}",
            result,
        )
