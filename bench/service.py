"""Service throughput, and what each part of the instrumentation costs.

Side by side on one Postgres and one Redis, ``wrk`` drives the dashboard endpoint (cache warm,
user ids cycling) of several servers, the variants:

- ``instrumented``: metrics, request statistics, ``X-`` headers and logs
  (``PORTAL_INSTRUMENTATION=on``), no tracing: what the instrumentation target is about;
- ``traced``: the same with every request traced (the default ratio), spans exported over OTLP
  to a stand-in collector (``bench.collector``): the service as deployed;
- ``sampled``: the same with ``--service-sampled-ratio`` of the requests traced;
- ``otel``: tracing alone, every request (``PORTAL_INSTRUMENTATION=off``);
- ``off``: neither; ``bare``: ``bench.bare``, FastAPI on uvicorn answering a constant JSON:
  the framework's own cost, the ceiling the service is measured against;
- ``quiet``: ``instrumented`` without the ``X-`` response headers
  (``PORTAL_RESPONSE_HEADERS=off``): what the headers cost, uvicorn's checks of them included;
- ``noauth``: ``instrumented`` with authentication off (``PORTAL_AUTH=off``): what checking
  the callers' tokens costs. Every other variant of the service reads each dashboard with its
  user's own bearer token, as a member's client does (``wrk`` cycles through the users' tokens);
- ``against`` (with ``--service-against REV``): ``instrumented`` run from another git
  revision's ``app/``, to measure a code change side by side.

Each rotation runs every variant once, in rotated order. CPU per request (the server process's
CPU time over the requests it answered, exporter thread included) is the steady figure; req/s
moves with whatever else the machine runs. Each ratio is taken within a rotation and the median
over rotations reported, with the load average. Then an open-loop client offers a fixed rate
to ``traced`` and its p95 is compared with the target. Side by side CPU moves by several
percent between runs on a shared machine, so the untraced variants' work per read is also
counted: calls in process (``bench.service_calls``) and, with valgrind installed, the server
process's machine instructions (``bench.service_instructions``), the figure a small change can
be read from.
``--service-profile`` also records a
py-spy flame graph of every variant under the same load (``bench/results/service-<name>.svg``).

A new variant is one more entry in ``variants()``, and one more ``Comparison`` for its cost.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.collector import Collector
from bench.common import (
    REPO,
    BenchError,
    Report,
    Service,
    WrkResult,
    app_env,
    cpu_seconds,
    fraction,
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
from bench.service_calls import report_calls
from bench.service_instructions import report_instructions
from bench.service_runs import (
    DASHBOARD,
    P95_TARGET_MS,
    auth_path,
    checkout,
    fixed_rate,
    profile,
    tokens_for,
    warm,
)

NAME = "service"
MAX_COST = 0.05
MAX_BARE_RATIO = 2.0


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    env: Mapping[str, str] | None = None
    """The service's settings (beside the database and Redis); None: the bare endpoint."""
    traced: bool = False
    """Spans go to the stand-in collector (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Sent with every request (credentials, a ``traceparent``...)."""
    source: str | None = None
    """A git revision whose ``app/`` runs instead of this checkout's."""
    user_tokens: bool = True
    """Each request carries its user's own token (the service's variants)."""


@dataclass(frozen=True)
class Comparison:
    key: str
    numerator: str
    denominator: str
    label: str
    max_cpu_ratio: float | None = None
    """The target: CPU per request of the numerator over the denominator's, at most this."""


def variants(args: argparse.Namespace) -> list[Variant]:
    on, off = {"PORTAL_INSTRUMENTATION": "on"}, {"PORTAL_INSTRUMENTATION": "off"}
    ratio = args.service_trace_ratio
    every = {} if ratio is None else {"PORTAL_TRACE_SAMPLE_RATIO": f"{ratio:g}"}
    share = "every request" if ratio is None else f"{ratio:g} of requests"
    sampled = args.service_sampled_ratio
    out = [
        Variant("instrumented", "instrumented: metrics, statistics, headers, logs", on),
        Variant("traced", f"instrumented, {share} traced", {**on, **every}, traced=True),
        Variant(
            "sampled",
            f"instrumented, {sampled:g} of requests traced",
            {**on, "PORTAL_TRACE_SAMPLE_RATIO": f"{sampled:g}"},
            traced=True,
        ),
        Variant("otel", f"OpenTelemetry alone, {share} traced", {**off, **every}, traced=True),
        Variant("off", "uninstrumented", off),
        Variant(
            "quiet",
            "instrumented without the X- headers",
            {**on, "PORTAL_RESPONSE_HEADERS": "off"},
        ),
        Variant(
            "noauth",
            "instrumented, authentication off",
            {**on, "PORTAL_AUTH": "off"},
            user_tokens=False,
        ),
        Variant("bare", "bare FastAPI endpoint", user_tokens=False),
    ]
    rev = args.service_against
    if rev and args.service_against_traced:
        label = f"{rev}: instrumented, {share} traced"
        out.append(Variant("against", label, {**on, **every}, traced=True, source=rev))
    elif rev:
        out.append(Variant("against", f"{rev}: instrumented", on, source=rev))
    return out


def comparisons(args: argparse.Namespace) -> list[Comparison]:
    out = [
        Comparison("instrumented_vs_off", "instrumented", "off", "metrics alone", 1 + MAX_COST),
        Comparison(
            "auth_vs_noauth",
            "instrumented",
            "noauth",
            "authentication (a member's token per request)",
            1 + MAX_COST,
        ),
        Comparison("quiet_vs_off", "quiet", "off", "instrumentation without the X- headers"),
        Comparison("traced_vs_off", "traced", "off", "instrumented and traced"),
        Comparison("sampled_vs_off", "sampled", "off", "instrumented, sampled traces"),
        Comparison("otel_vs_off", "otel", "off", "OpenTelemetry alone"),
        Comparison(
            "instrumented_vs_bare", "instrumented", "bare", "dashboard vs bare", MAX_BARE_RATIO
        ),
        Comparison("traced_vs_bare", "traced", "bare", "traced dashboard vs bare"),
        Comparison("off_vs_bare", "off", "bare", "uninstrumented dashboard vs bare"),
    ]
    if args.service_against:
        rev = args.service_against
        ours = "traced" if args.service_against_traced else "instrumented"
        out.append(Comparison("vs_against", ours, "against", f"vs {rev}"))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("service")
    g.add_argument(
        "--service-users", type=positive_int, default=1000, help="users seeded and cycled"
    )
    g.add_argument("--service-reps", type=positive_int, default=5, help="rotations of the variants")
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
    g.add_argument(
        "--service-trace-ratio",
        type=fraction,
        default=None,
        help="PORTAL_TRACE_SAMPLE_RATIO of 'traced' and 'otel' (default: the service's, 1)",
    )
    g.add_argument(
        "--service-sampled-ratio",
        type=fraction,
        default=0.01,
        help="PORTAL_TRACE_SAMPLE_RATIO of the 'sampled' variant",
    )
    g.add_argument(
        "--service-against",
        metavar="REV",
        default=None,
        help="also run the instrumented service from this git revision (e.g. main)",
    )
    g.add_argument(
        "--service-against-traced",
        action="store_true",
        help="run the --service-against revision traced, beside 'traced', in the rotations and "
        "at the fixed rate (to measure a change to tracing)",
    )
    g.add_argument(
        "--service-variants",
        metavar="KEY,KEY",
        default=None,
        help="only these variants (e.g. instrumented,noauth: more rotations in the same time); "
        "the comparisons between them and, with traced, the fixed-rate run",
    )
    g.add_argument(
        "--service-profile",
        action="store_true",
        help="also record a py-spy flame graph of each variant (bench/results/service-*.svg)",
    )


def _start(variant: Variant, root: Path, dsn: str, redis_url: str, otlp: str) -> Service:
    if variant.env is None:
        return start_bare(root, variant.key)
    env = app_env(dsn, redis_url, **variant.env)
    if variant.traced:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp
    source = checkout(variant.source, root) if variant.source else REPO
    return start_app(root, f"app-{variant.key}", env, source=source)


@dataclass
class _Runs:
    wrk: list[WrkResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    spans: int = 0

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.wrk)


def _measure(
    variants: list[Variant],
    servers: dict[str, Service],
    collector: Collector,
    args: argparse.Namespace,
    root: Path,
) -> tuple[dict[str, _Runs], list[float]]:
    runs = {v.key: _Runs() for v in variants}
    loads: list[float] = []
    n = len(variants)
    for rep in range(args.service_reps):
        for v in variants[rep % n :] + variants[: rep % n]:
            progress(
                NAME, f"rep {rep + 1}/{args.service_reps}: wrk {args.service_seconds:g}s, {v.key}"
            )
            pid = servers[v.key].process.pid
            assert pid is not None
            spans, cpu = collector.spans, cpu_seconds(pid)
            result = wrk(
                servers[v.key].url,
                DASHBOARD,
                users=args.service_users,
                connections=args.service_connections,
                seconds=args.service_seconds,
                headers=v.headers,
                tokens=tokens_for(v, args, root),
                scratch=root,
            )
            r = runs[v.key]
            r.wrk.append(result)
            r.cpu_us.append((cpu_seconds(pid) - cpu) / max(1, result.requests) * 1e6)
            r.spans += collector.spans - spans
        loads.append(os.getloadavg()[0])
    return runs, loads


def _report_runs(
    report: Report, chosen: list[Variant], runs: dict[str, _Runs], args: argparse.Namespace
) -> None:
    reps, conns = args.service_reps, args.service_connections
    report.data["wrk_runs"] = {k: [w.to_dict() for w in r.wrk] for k, r in runs.items()}
    report.data["cpu_us_per_request"] = {k: r.cpu_us for k, r in runs.items()}
    for v in chosen:
        r = runs[v.key]
        bad = sum(w.errors + w.non2xx for w in r.wrk)
        note = f"{v.label}, median of {reps} x {args.service_seconds:g}s, -c{conns}"
        report.figure(
            f"rps_{v.key}",
            median([w.rps for w in r.wrk]),
            "req/s",
            note + (f", {bad} errors/non-2xx" if bad else ""),
        )
        report.figure(
            f"cpu_us_per_request_{v.key}",
            median(r.cpu_us),
            "us",
            f"{v.label}: server CPU time per request",
        )
        for q in ("p50", "p95", "p99"):
            report.figure(f"{q}_{v.key}", median([getattr(w, f"{q}_ms") for w in r.wrk]), "ms")
        if v.traced:
            report.figure(
                f"spans_per_request_{v.key}",
                r.spans / max(1, r.requests),
                "",
                "spans the collector received per request",
            )


def _report_ratios(
    report: Report, compared: list[Comparison], runs: dict[str, _Runs]
) -> dict[str, tuple[float, bool]]:
    """The CPU and req/s ratio of every comparison; {key: (CPU ratio, target met)}."""
    outcome: dict[str, tuple[float, bool]] = {}
    for c in compared:
        num, den = runs[c.numerator], runs[c.denominator]
        cpu = _paired(num.cpu_us, den.cpu_us)
        rps = _paired([w.rps for w in num.wrk], [w.rps for w in den.wrk])
        target = "" if c.max_cpu_ratio is None else f" (target <= {c.max_cpu_ratio:g}x)"
        report.figure(
            f"ratio_cpu_{c.key}",
            cpu,
            "x",
            f"{c.label}: CPU per request {c.numerator} / {c.denominator}{target}",
        )
        report.figure(f"ratio_rps_{c.key}", rps, "x", f"req/s {c.numerator} / {c.denominator}")
        outcome[c.key] = (cpu, c.max_cpu_ratio is None or cpu <= c.max_cpu_ratio)
    return outcome


def _summary(
    outcome: dict[str, tuple[float, bool]],
    runs: dict[str, _Runs],
    args: argparse.Namespace,
    p95: float,
    ok_p95: bool,
    loads: list[float],
) -> str:
    def met(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    def x(key: str) -> str:
        return f"{outcome[key][0]:.3f}x"

    cost, ok_cost = outcome["instrumented_vs_off"]
    auth, ok_auth = outcome["auth_vs_noauth"]
    path, _ = outcome["auth_path"]
    bare, ok_bare = outcome["instrumented_vs_bare"]
    share = _paired([w.rps for w in runs["instrumented"].wrk], [w.rps for w in runs["bare"].wrk])
    every = "every request" if args.service_trace_ratio is None else f"{args.service_trace_ratio:g}"
    text = (
        f"CPU per request vs uninstrumented: instrumented (metrics, statistics, headers, logs) "
        f"{cost:.3f}x (target <= {1 + MAX_COST:g}x: {met(ok_cost)}); authentication vs off "
        f"{auth:.3f}x (target <= {1 + MAX_COST:g}x: {met(ok_auth)}; its path timed in process "
        f"{path:.3f}x); with {every} traced "
        f"{x('traced_vs_off')}, with {args.service_sampled_ratio:g} traced "
        f"{x('sampled_vs_off')}, OpenTelemetry alone ({every} traced) {x('otel_vs_off')}; "
        f"dashboard vs bare endpoint {bare:.2f}x CPU, {share:.3f}x req/s (target <= "
        f"{MAX_BARE_RATIO:g}x CPU: {met(ok_bare)}; traced {outcome['traced_vs_bare'][0]:.2f}x); "
        f"p95 at {args.service_rate:g} req/s, traced {p95:.1f} ms (target < {P95_TARGET_MS:g} ms: "
        f"{met(ok_p95)}); load average {median(loads):.2f} ({min(loads):.2f}-{max(loads):.2f})"
    )
    if "vs_against" in outcome:
        text += f"; vs {args.service_against}: {x('vs_against')} CPU"
    return text


def _paired(a: list[float], b: list[float]) -> float:
    """Median over rotations of a[i] / b[i]: each ratio compares runs made minutes apart at most."""
    return median([x / y for x, y in zip(a, b, strict=True) if y])


def _auth_path(report: Report, runs: dict[str, _Runs], users: int) -> tuple[float, bool]:
    """The authentication path timed in process (little disturbed by the machine's load), as a
    share of the instrumented read's CPU measured above."""
    progress(NAME, "timing the authentication path in process")
    on, off = auth_path(users)
    share = (on - off) / median(runs["instrumented"].cpu_us)
    report.figure("auth_path_us", on, "us", "Authenticator.authorize, a member's cached token")
    report.figure("auth_path_off_us", off, "us", "the same call with authentication off")
    report.figure(
        "auth_path_share", share, "", "(on - off) / instrumented CPU per request (target <= 0.05)"
    )
    return 1 + share, share <= MAX_COST


def _selected(args: argparse.Namespace) -> tuple[list[Variant], list[Comparison]]:
    if args.service_against_traced and not args.service_against:
        raise BenchError("--service-against-traced: give the revision with --service-against REV")
    chosen, compared = variants(args), comparisons(args)
    if args.service_variants is None:
        return chosen, compared
    wanted = {k.strip() for k in args.service_variants.split(",") if k.strip()}
    unknown = wanted - {v.key for v in chosen}
    if unknown or not wanted:
        raise BenchError(
            f"--service-variants: {', '.join(sorted(unknown)) or 'none given'}; the variants are "
            f"{', '.join(v.key for v in chosen)}"
        )
    chosen = [v for v in chosen if v.key in wanted]
    compared = [c for c in compared if {c.numerator, c.denominator} <= wanted]
    return chosen, compared


def _partial_summary(outcome: dict[str, tuple[float, bool]], compared: list[Comparison]) -> str:
    parts = []
    if "auth_path" in outcome:
        share, ok = outcome["auth_path"]
        parts.append(
            f"authentication path timed in process {share:.3f}x of the instrumented read's CPU "
            f"(target <= {1 + MAX_COST:g}x: {'MET' if ok else 'MISSED'})"
        )
    for c in compared:
        cpu, ok = outcome[c.key]
        target = ""
        if c.max_cpu_ratio is not None:
            target = f" (target <= {c.max_cpu_ratio:g}x: {'MET' if ok else 'MISSED'})"
        parts.append(f"{c.label}: {c.numerator} / {c.denominator} CPU {cpu:.3f}x{target}")
    return "; ".join(parts) or "no comparison among the chosen variants"


def run(args: argparse.Namespace) -> Report:
    users, reps, seconds = args.service_users, args.service_reps, args.service_seconds
    chosen, compared = _selected(args)
    report = Report(
        NAME,
        params={
            "users": users,
            "reps": reps,
            "seconds": seconds,
            "connections": args.service_connections,
            "wrk_threads": 1,
            "rate": args.service_rate,
            "rate_seconds": args.service_rate_seconds,
            "trace_ratio": args.service_trace_ratio,
            "sampled_ratio": args.service_sampled_ratio,
            "against": args.service_against,
            "variants": {v.key: v.label for v in chosen},
            "load_average_at_start": os.getloadavg(),
        },
    )
    with (
        server_root(NAME) as root,
        postgres(root) as pg,
        redis(root) as rd,
        Collector() as collector,
    ):
        progress(NAME, f"seeding {users} users")
        dsn = seeded_database(pg, "portal", users)
        servers: dict[str, Service] = {}
        try:
            for v in chosen:
                servers[v.key] = _start(v, root, dsn, rd.url, collector.url)
            progress(NAME, "warming the cache and the servers")
            warm(next(servers[v.key] for v in chosen if v.env is not None), users)
            for v in chosen:
                wrk(
                    servers[v.key].url,
                    DASHBOARD,
                    users=users,
                    seconds=1,
                    headers=v.headers,
                    tokens=tokens_for(v, args, root),
                    connections=args.service_connections,
                    scratch=root,
                )
            runs, loads = _measure(chosen, servers, collector, args, root)
            _report_runs(report, chosen, runs, args)
            outcome = _report_ratios(report, compared, runs)
            report.figure(
                "load_average_1m_median",
                median(loads),
                "",
                f"min {min(loads):.2f}, max {max(loads):.2f} over the rotations",
            )
            if "auth_vs_noauth" in outcome:
                outcome["auth_path"] = _auth_path(report, runs, users)
            calls = report_calls(report, chosen, dsn, rd.url, users)
            instructions = report_instructions(report, chosen, dsn, rd.url, users, root)
            per_read = "; ".join(x for x in (instructions, calls) if x)
            traced = next((v for v in chosen if v.key == "traced"), None)
            if traced is not None:
                p95, failed = fixed_rate(report, servers[traced.key], traced, args)
            against = next((v for v in chosen if v.key == "against" and v.traced), None)
            if against is not None:
                fixed_rate(report, servers[against.key], against, args, "fixed_rate_against")
            if args.service_profile:
                profile(chosen, servers, args, root)
        finally:
            for s in servers.values():
                s.stop()
    if collector.bad_requests:
        raise BenchError(f"the collector received {collector.bad_requests} malformed exports")
    report.data["targets"] = {k: met for k, (_, met) in outcome.items()}
    load_note = f"load average {median(loads):.2f} ({min(loads):.2f}-{max(loads):.2f})"
    if per_read:
        load_note = f"{per_read}; {load_note}"
    if args.service_variants is not None:
        report.finish(f"{_partial_summary(outcome, compared)}; {load_note}")
        return report
    ok_p95 = p95 < P95_TARGET_MS and failed == 0
    report.data["targets"]["p95"] = ok_p95
    report.finish(
        _summary(outcome, runs, args, p95, ok_p95, loads) + (f"; {per_read}" if per_read else "")
    )
    return report
