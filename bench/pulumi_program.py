"""The Pulumi program under the runtime's mocks, per stack: wall time and resources.

``components.render.run_stack`` runs ``__main__.py`` with ``Pulumi.<stack>.yaml`` under
``pulumi.runtime`` mocks (no engine exists here), exactly as ``make manifests`` and the tests do.
The first run in the process also pays for imports; it is reported apart from the median of
the following runs. Stacks are alternated run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

from bench.common import Report, median, positive_int, progress

NAME = "pulumi"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pulumi")
    g.add_argument(
        "--pulumi-runs", type=positive_int, default=7, help="runs per stack (after the first)"
    )
    g.add_argument("--pulumi-stacks", default="staging,prod", help="comma-separated stacks")


def run(args: argparse.Namespace) -> Report:
    from components.render import run_stack

    # The Pulumi runtime wants a current event loop; an earlier benchmark's asyncio.run() in
    # this process leaves none.
    asyncio.set_event_loop(asyncio.new_event_loop())
    stacks = [s.strip() for s in args.pulumi_stacks.split(",") if s.strip()]
    report = Report(NAME, params={"runs": args.pulumi_runs, "stacks": stacks})
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {s: [] for s in stacks}
    shape: dict[str, dict[str, Any]] = {}
    progress(NAME, f"{args.pulumi_runs + 1} runs per stack of {', '.join(stacks)}")
    for i in range(args.pulumi_runs + 1):
        for stack in stacks if i % 2 == 0 else reversed(stacks):
            started = time.perf_counter()
            result = run_stack(stack)
            elapsed = time.perf_counter() - started
            if stack not in first:
                first[stack] = elapsed
                kube = result.kubernetes()
                shape[stack] = {
                    "resources": len(result.resources),
                    "kubernetes_objects": len(kube),
                    "components": sum(not r.custom for r in result.resources),
                    "by_kind": dict(sorted(Counter(r.kind for r in kube).items())),
                    "outputs": len(result.outputs),
                }
            else:
                times[stack].append(elapsed)
    report.data = {"first_s": first, "times_s": times, "shape": shape}
    for stack in stacks:
        s = shape[stack]
        report.figure(
            f"wall_ms_{stack}",
            median(times[stack]) * 1000,
            "ms",
            f"median of {len(times[stack])} runs; first run {first[stack] * 1000:.0f} ms",
        )
        report.figure(
            f"resources_{stack}",
            s["resources"],
            "",
            f"{s['kubernetes_objects']} Kubernetes objects, {s['components']} "
            f"components, {s['outputs']} outputs",
        )
    if len(stacks) == 2:
        a, b = stacks
        report.figure(f"ratio_wall_{b}_vs_{a}", median(times[b]) / median(times[a]), "x")
    report.finish(
        "; ".join(
            f"{s}: {median(times[s]) * 1000:.0f} ms, {shape[s]['resources']} resources "
            f"({shape[s]['kubernetes_objects']} Kubernetes objects)"
            for s in stacks
        )
    )
    return report
