"""Service throughput and what the instrumentation costs.

Three servers side by side, on one Postgres and one Redis: the portal with instrumentation on
(the default), the same with ``PORTAL_INSTRUMENTATION=off``, and ``bench.bare`` (FastAPI on
uvicorn answering a constant JSON). ``wrk`` drives the dashboard endpoint (cache warm, user ids
cycling) with the same connections and duration; the three runs are rotated within each
repetition and the medians compared. Then an open-loop client offers a fixed rate to the
instrumented service and its p95 is compared with the target.
"""

from __future__ import annotations

import argparse
import random
import urllib.request

from bench import load
from bench.common import (
    Report,
    Service,
    WrkResult,
    app_env,
    cpu_seconds,
    median,
    positive_float,
    positive_int,
    postgres,
    progress,
    redis,
    seeded_database,
    server_root,
    start_app,
    start_bare,
    wrk,
)

NAME = "service"
DASHBOARD = "/api/users/{id}/dashboard"
MAX_COST = 0.05
P95_TARGET_MS = 50.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("service")
    g.add_argument(
        "--service-users", type=positive_int, default=1000, help="users seeded and cycled"
    )
    g.add_argument("--service-reps", type=positive_int, default=5, help="rotations of on/off/bare")
    g.add_argument(
        "--service-seconds", type=positive_float, default=4.0, help="length of one wrk run"
    )
    g.add_argument("--service-connections", type=positive_int, default=32, help="wrk connections")
    g.add_argument("--service-rate", type=positive_float, default=300.0, help="fixed rate (req/s)")
    g.add_argument(
        "--service-rate-seconds",
        type=positive_float,
        default=20.0,
        help="length of the fixed-rate run",
    )


def _warm(service: Service, users: int) -> None:
    for uid in range(1, users + 1):
        with urllib.request.urlopen(f"{service.url}/api/users/{uid}/dashboard", timeout=10) as resp:
            resp.read()


def run(args: argparse.Namespace) -> Report:
    users, reps = args.service_users, args.service_reps
    seconds, conns = args.service_seconds, args.service_connections
    report = Report(
        NAME,
        params={
            "users": users,
            "reps": reps,
            "seconds": seconds,
            "connections": conns,
            "wrk_threads": 1,
            "rate": args.service_rate,
            "rate_seconds": args.service_rate_seconds,
        },
    )
    with server_root(NAME) as root, postgres(root) as pg, redis(root) as rd:
        progress(NAME, f"seeding {users} users")
        dsn = seeded_database(pg, "portal", users)
        servers = {
            "on": start_app(root, "app-on", app_env(dsn, rd.url, PORTAL_INSTRUMENTATION="on")),
            "off": start_app(root, "app-off", app_env(dsn, rd.url, PORTAL_INSTRUMENTATION="off")),
            "bare": start_bare(root),
        }
        try:
            progress(NAME, "warming the cache and the servers")
            _warm(servers["on"], users)
            for s in servers.values():
                wrk(s.url, DASHBOARD, users=users, connections=conns, seconds=1, scratch=root)
            runs: dict[str, list[WrkResult]] = {k: [] for k in servers}
            cpu: dict[str, list[float]] = {k: [] for k in servers}
            order = list(servers)
            for rep in range(reps):
                rotated = order[rep % 3 :] + order[: rep % 3]
                for key in rotated:
                    progress(NAME, f"rep {rep + 1}/{reps}: wrk {seconds:g}s against {key}")
                    pid = servers[key].process.pid
                    assert pid is not None
                    cpu_before = cpu_seconds(pid)
                    result = wrk(
                        servers[key].url,
                        DASHBOARD,
                        users=users,
                        connections=conns,
                        seconds=seconds,
                        scratch=root,
                    )
                    runs[key].append(result)
                    cpu[key].append((cpu_seconds(pid) - cpu_before) / max(1, result.requests))
            med: dict[str, dict[str, float]] = {
                k: {
                    f: median([getattr(r, f) for r in rs])
                    for f in ("rps", "p50_ms", "p95_ms", "p99_ms")
                }
                for k, rs in runs.items()
            }
            bad = {k: sum(r.errors + r.non2xx for r in rs) for k, rs in runs.items()}
            report.data["wrk_runs"] = {k: [r.to_dict() for r in rs] for k, rs in runs.items()}
            report.data["medians"] = med
            labels = {"on": "instrumented", "off": "uninstrumented", "bare": "bare endpoint"}
            for k in ("on", "off", "bare"):
                m = med[k]
                report.figure(
                    f"rps_{k}",
                    m["rps"],
                    "req/s",
                    f"{labels[k]}, median of {reps} x {seconds:g}s, -c{conns}"
                    + (f", {bad[k]} errors/non-2xx" if bad[k] else ""),
                )
                for q in ("p50", "p95", "p99"):
                    report.figure(f"{q}_{k}", m[f"{q}_ms"], "ms", labels[k])
            cpu_us = {k: median(v) * 1e6 for k, v in cpu.items()}
            report.data["cpu_us_per_request"] = {k: [x * 1e6 for x in v] for k, v in cpu.items()}
            for k in ("on", "off", "bare"):
                report.figure(
                    f"cpu_us_per_request_{k}",
                    cpu_us[k],
                    "us",
                    f"{labels[k]}: server CPU time per request, median",
                )
            ratio_on_off = med["on"]["rps"] / med["off"]["rps"]
            ratio_on_bare = med["on"]["rps"] / med["bare"]["rps"]
            cost = 1 - ratio_on_off
            report.figure(
                "ratio_rps_on_vs_off",
                ratio_on_off,
                "x",
                f"instrumentation cost {cost:.1%} (target <= {MAX_COST:.0%})",
            )
            report.figure(
                "ratio_rps_on_vs_bare",
                ratio_on_bare,
                "x",
                "the service's share of the framework's ceiling",
            )
            cpu_ratio = cpu_us["on"] / cpu_us["off"]
            report.figure(
                "ratio_cpu_per_request_on_vs_off",
                cpu_ratio,
                "x",
                f"instrumentation CPU cost {cpu_ratio - 1:.1%} per request "
                "(steadier than req/s on a shared machine)",
            )
            report.figure("ratio_p99_on_vs_off", med["on"]["p99_ms"] / med["off"]["p99_ms"], "x")

            progress(
                NAME,
                f"fixed rate {args.service_rate:g} req/s for "
                f"{args.service_rate_seconds:g}s against the instrumented service",
            )

            def dashboard(rng: random.Random) -> load.Call:
                return ("dashboard", "GET", f"/api/users/{rng.randint(1, users)}/dashboard", None)

            fixed = load.run(
                servers["on"].url, args.service_rate, args.service_rate_seconds, dashboard
            )
            report.data["fixed_rate"] = fixed.summary()
            p95 = fixed.p(95)
            report.figure(
                "fixed_rate_p50",
                fixed.p(50),
                "ms",
                f"{args.service_rate:g} req/s open loop, {fixed.sent} requests",
            )
            report.figure("fixed_rate_p95", p95, "ms", f"target < {P95_TARGET_MS:g} ms")
            report.figure("fixed_rate_p99", fixed.p(99), "ms")
            report.figure("fixed_rate_failed", fixed.failed, "requests")
        finally:
            for s in servers.values():
                s.stop()
    ok_cost = cost <= MAX_COST
    ok_p95 = p95 < P95_TARGET_MS and fixed.failed == 0
    summary = (
        f"instrumented {med['on']['rps']:.0f} req/s = {ratio_on_off:.3f}x uninstrumented "
        f"(cost {cost:.1%}, target <= 5%: {'MET' if ok_cost else 'MISSED'}; CPU per request "
        f"{cpu_ratio:.3f}x), "
        f"{ratio_on_bare:.3f}x bare; p95 at {args.service_rate:g} req/s {p95:.1f} ms "
        f"(target < 50 ms: {'MET' if ok_p95 else 'MISSED'})"
    )
    report.data["targets"] = {"cost_met": ok_cost, "p95_met": ok_p95}
    report.finish(summary)
    return report
