"""The release gates: pure functions from measurements to a verdict. No I/O here.

Each check round gives each gate one verdict: PASS, FAIL, INSUFFICIENT_DATA or PROVIDER_ERROR
(the last one is produced by the engine when Prometheus does not answer). The metrics gate
judges the readings of ``rollout.readings`` with the tests of ``rollout.evidence``, which say
how ``canary.alpha`` bounds the chance that a healthy canary is ever rolled back.


PASS at any check means "no evidence of a regression at alpha yet"; at the end of a step's
window it passes the step. ``minRequests`` is only a floor: below that many canary requests in
the step's window the verdict is INSUFFICIENT_DATA instead of PASS (a FAIL needs no minimum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from contract.config import CanaryConfig, Slo
from rollout.evidence import (
    QUANTILE,
    SHARES,
    difference_cs,
    error_test,
    latency_test,
)
from rollout.folded import Folded, ReleaseEvidence, release_evidence
from rollout.ports import HealthProbe
from rollout.readings import Snapshot, quantile_ms
from rollout.sequential import log_e_below, lower_bound, upper_bound

Verdict = Literal["PASS", "FAIL", "INSUFFICIENT_DATA", "PROVIDER_ERROR"]


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    value: float | None
    threshold: float | None
    baseline: float | None
    query: str
    detail: str
    evalue: float | None = None
    """The e-value against the limit that binds (FAIL once it reaches ``needed``)."""
    needed: float | None = None
    cs: tuple[float | None, float | None] | None = None
    """The confidence sequence at this check: canary - stable error rate, or the canary's p95
    (ms, between bucket bounds; ``None`` above: no bound sure yet)."""


@dataclass(frozen=True)
class GateResult:
    gate: str
    """``health`` or ``metrics``."""
    verdict: Verdict
    checks: tuple[Check, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "verdict": self.verdict,
            "reason": self.reason,
            "checks": [asdict(c) for c in self.checks],
        }

    def failing(self) -> Check | None:
        return next((c for c in self.checks if c.verdict == "FAIL"), None)


def judge_metrics(
    history: Sequence[Snapshot],
    canary: CanaryConfig,
    slo: Slo,
    *,
    queries: Mapping[str, str] | None = None,
    folded: Folded | None = None,
) -> tuple[GateResult, dict[str, float | None], dict[str, Any]]:
    """The metrics verdict on the release's readings so far (the last one is this check), after
    the evidence ``folded`` out of the ledger's oldest samples (``rollout.folded``).

    Returns the verdict, the step window's figures and the per-check statistics."""
    q = dict(queries or {})
    ev = release_evidence(history, folded)
    window = _window(ev)
    errors, error_stats = _error_check(ev, canary, slo, q.get("errors", ""))
    latency, latency_stats = _latency_check(ev, canary, slo, q.get("latency", ""), window)
    stats: dict[str, Any] = {
        "level": error_stats.pop("level"),
        "error_rate": error_stats,
        "p95_latency": latency_stats,
    }
    checks = (errors, latency)
    failing = next((c for c in checks if c.verdict == "FAIL"), None)
    if failing is not None:
        return GateResult("metrics", "FAIL", checks, failing.detail), window, stats
    n_window = float(ev.window_canary[0])
    if n_window < canary.min_requests:
        check = Check(
            "requests",
            "INSUFFICIENT_DATA",
            n_window,
            float(canary.min_requests),
            None,
            q.get("latency", ""),
            f"{n_window:.0f} canary requests in this step, fewer than minRequests "
            f"{canary.min_requests} (no regression evidence so far)",
        )
        return (
            GateResult("metrics", "INSUFFICIENT_DATA", (check, *checks), check.detail),
            window,
            stats,
        )
    return GateResult("metrics", "PASS", checks, "; ".join(c.detail for c in checks)), window, stats


def _totals(ev: ReleaseEvidence) -> tuple[float, float, float, float]:
    """Requests and errors of the release so far: canary, canary errors, stable, stable errors."""
    c, s = ev.canary, ev.stable
    return (float(c[0]), float(c[1]), float(s[0]), float(s[1]))


def _window(ev: ReleaseEvidence) -> dict[str, float | None]:
    """The current step window's figures (for display and ``minRequests``)."""
    wc, ws = ev.window_canary, ev.window_stable
    return {
        "canary_requests": float(wc[0]),
        "canary_errors": float(wc[1]),
        "stable_requests": float(ws[0]),
        "stable_errors": float(ws[1]),
        "canary_error_rate": float(wc[1] / wc[0]) if wc[0] > 0 else None,
        "stable_error_rate": float(ws[1] / ws[0]) if ws[0] > 0 else None,
        "canary_p95_ms": quantile_ms(QUANTILE, ev.bounds_s, wc[2:], float(wc[0])),
        "stable_p95_ms": quantile_ms(QUANTILE, ev.bounds_s, ws[2:], float(ws[0])),
    }


def _error_check(
    ev: ReleaseEvidence, canary: CanaryConfig, slo: Slo, query: str
) -> tuple[Check, dict[str, Any]]:
    """The error-rate check of the release so far, and its statistics for the ledger."""
    nc, ec, ns, es = _totals(ev)
    part = canary.alpha / SHARES
    guard_e = ev.error_share_log_e
    et = error_test(
        nc,
        ec,
        ns,
        es,
        guard_e,
        alpha=canary.alpha,
        slo_rate=slo.max_error_rate,
        margin=canary.max_error_rate_increase,
    )
    c_lo, c_hi = lower_bound(ec, nc, part), upper_bound(ec, nc, part)
    d_lo, d_hi = difference_cs(ec, nc, es, ns, canary.alpha)
    rate_c = ec / nc if nc > 0 else None
    rate_s = es / ns if ns > 0 else None
    limit = float(et.limit)
    by_slo = bool(et.from_slo)
    source = "slo.maxErrorRate" if by_slo else "stable + maxErrorRateIncrease"
    slo_e, rel_e, guard = (_e(x) for x in (et.slo_log_e, et.relative_log_e, guard_e))
    err_fail = bool(et.fail)
    if bool(et.fail_slo):
        how, e_val = f"surely over the SLO {slo.max_error_rate:.2%}", slo_e
    elif err_fail:
        how, e_val = f"surely more than {canary.max_error_rate_increase:.2%} over stable", rel_e
    else:
        how, e_val = f"not surely over the limit {limit:.2%} ({source})", slo_e if by_slo else rel_e
    detail = (
        f"canary error rate {_pct(rate_c)} ({ec:.0f}/{nc:.0f} this release) {how}: canary "
        f"{c_lo:.2%}..{c_hi:.2%}, canary - stable {d_lo:+.2%}..{d_hi:+.2%}; e-values: SLO "
        f"{_num(slo_e)}, margin {_num(rel_e)}, error share {_num(guard)} ({_num(et.level)} "
        f"needed); stable {_pct(rate_s)} ({es:.0f}/{ns:.0f})"
    )
    check = Check(
        "error_rate",
        "FAIL" if err_fail else "PASS",
        rate_c,
        limit,
        rate_s,
        query,
        detail,
        evalue=e_val,
        needed=et.level,
        cs=(d_lo, d_hi),
    )
    stats = {
        "level": et.level,
        "estimate": rate_c,
        "stable": rate_s,
        "difference": None if rate_c is None or rate_s is None else rate_c - rate_s,
        "cs": [d_lo, d_hi],
        "canary_cs": [float(c_lo), float(c_hi)],
        "limit": limit,
        "slo": slo.max_error_rate,
        "margin": canary.max_error_rate_increase,
        "evalue": {"slo": slo_e, "margin": rel_e, "share": guard},
    }
    return check, stats


def _latency_check(
    ev: ReleaseEvidence,
    canary: CanaryConfig,
    slo: Slo,
    query: str,
    window: Mapping[str, float | None],
) -> tuple[Check, dict[str, Any]]:
    """The p95 check of the release so far, and its statistics for the ledger."""
    nc, _ec, ns, _es = _totals(ev)
    bounds_ms = ev.bounds_s * 1000
    if bounds_ms.size == 0 or nc <= 0:
        check = Check(
            "p95_latency",
            "INSUFFICIENT_DATA",
            None,
            None,
            window["stable_p95_ms"],
            query,
            "no canary latency histogram in the release yet",
        )
        return check, {}
    le_c, le_s = ev.canary[2:], ev.stable[2:]
    guard_l = ev.latency_share_log_e
    lt = latency_test(
        le_c,
        nc,
        le_s,
        ns,
        bounds_ms,
        guard_l,
        alpha=canary.alpha,
        slo_ms=slo.max_p95_ms,
        canary=canary,
    )
    above = float(lt.canary_above_ms)
    # the top of the canary's p95 sequence: the first bound it is surely at most
    part = canary.alpha / SHARES
    under = np.asarray(log_e_below(1 - QUANTILE, nc - le_c, nc)) >= math.log(1 / part)
    c_hi_ms = float(np.min(np.where(under, bounds_ms, np.inf), initial=np.inf))
    top = None if math.isinf(c_hi_ms) else c_hi_ms
    p95_c = quantile_ms(QUANTILE, ev.bounds_s, le_c, nc)
    p95_s = quantile_ms(QUANTILE, ev.bounds_s, le_s, ns)
    limit = float(lt.limit_ms)
    if bool(lt.from_slo):
        source = "slo.maxP95Ms"
    else:
        source = (
            f"stable's p95 at most {float(lt.stable_at_most_ms):.0f} ms "
            "x maxP95Ratio, + minP95IncreaseMs"
        )
    slow = bool(lt.fail)
    lat_e = _e(lt.canary_log_e)
    sure = f"surely above {above:.0f} ms" if above > 0 else "nothing sure yet"
    check = Check(
        "p95_latency",
        "FAIL" if slow else "PASS",
        p95_c,
        limit,
        p95_s,
        query,
        f"canary p95 {_ms(p95_c)} ({sure}) {'over' if slow else 'not surely over'} the "
        f"limit {limit:.0f} ms ({source}); e-value {_num(lat_e)} of "
        f"{_num(lt.level)} needed, slow-request share {_num(_e(guard_l))}; stable p95 "
        f"{_ms(p95_s)}",
        evalue=lat_e,
        needed=lt.level,
        cs=(above, top),
    )
    stats = {
        "estimate": p95_c,
        "stable": p95_s,
        "cs": [above, top],
        "limit": limit,
        "evalue": lat_e,
        "share": _e(guard_l),
    }
    return check, stats


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def _e(log_e: Any) -> float:
    """An e-value from its logarithm, capped where a float would overflow."""
    return math.exp(min(float(log_e), 700.0))


def _num(value: float) -> str:
    """An e-value for people: 0.42, 3.1, 1,250, 2.4e+07."""
    if value >= 1e6:
        return f"{value:.2g}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2g}" if value < 10 else f"{value:.1f}"


def judge_health(
    probes: Sequence[HealthProbe],
    consecutive_failures: Mapping[str, int],
    canary: CanaryConfig,
) -> GateResult:
    """FAIL when no canary instance exists or one failed ``health_failures`` probes in a row.

    ``consecutive_failures`` is the caller's count per instance including this round.
    """
    if not probes:
        check = Check("health", "FAIL", 0, None, None, "", "no canary instance is running")
        return GateResult("health", "FAIL", (check,), check.detail)
    checks = []
    for p in probes:
        streak = consecutive_failures.get(p.instance, 0)
        failed = not p.ok and streak >= canary.health_failures
        detail = f"{p.instance}: {p.detail}"
        if not p.ok:
            detail += f" ({streak} in a row, fails at {canary.health_failures})"
        checks.append(
            Check(
                f"health:{p.instance}",
                "FAIL" if failed else "PASS",
                float(streak),
                float(canary.health_failures),
                None,
                "GET /api/health/advanced",
                detail,
            )
        )
    failing = next((c for c in checks if c.verdict == "FAIL"), None)
    if failing is not None:
        return GateResult("health", "FAIL", tuple(checks), failing.detail)
    return GateResult(
        "health",
        "PASS",
        tuple(checks),
        f"{sum(p.ok for p in probes)}/{len(probes)} canary instances healthy",
    )
