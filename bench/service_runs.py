"""The service benchmark's runs beside the rotations: the open-loop run at a fixed rate, the
flame graph of each variant (``--service-profile``), and the servers' preparation (another
revision's code, a warm cache)."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from app.auth import Access, Authenticator
from bench import load
from bench.common import (
    KEYS_FILE,
    REPO,
    RESULTS_DIR,
    BenchError,
    Report,
    Service,
    admin_headers,
    median,
    progress,
    token,
    user_tokens_file,
    wrk,
)

if TYPE_CHECKING:
    from bench.service import Variant

NAME = "service"
DASHBOARD = "/api/users/{id}/dashboard"
P95_TARGET_MS = 10.0


def tokens_for(variant: Variant, args: argparse.Namespace, root: Path) -> Path | None:
    """The users' own tokens for ``wrk`` (the service's variants), or none (bare, noauth)."""
    return user_tokens_file(root, args.service_users) if variant.user_tokens else None


def profile(
    variants: list[Variant], servers: dict[str, Service], args: argparse.Namespace, root: Path
) -> None:
    spy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    if spy is None:
        raise BenchError("--service-profile needs py-spy (in requirements.lock: run `make deps`)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    seconds = max(5, round(args.service_seconds * 2))
    for v in variants:
        out = RESULTS_DIR / f"{NAME}-{v.key}.svg"
        progress(NAME, f"profiling {v.key} for {seconds}s -> {out.relative_to(REPO)}")
        spy_proc = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(servers[v.key].process.pid),
                "--rate",
                "250",
                "--duration",
                str(seconds),
                "--nonblocking",
                "--format",
                "flamegraph",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wrk(
            servers[v.key].url,
            DASHBOARD,
            users=args.service_users,
            connections=args.service_connections,
            seconds=seconds + 1,
            headers=v.headers,
            tokens=tokens_for(v, args, root),
            scratch=root,
        )
        _, err = spy_proc.communicate(timeout=60)
        if spy_proc.returncode != 0:
            raise BenchError(f"py-spy failed on {v.key}: {err.decode().strip()[-300:]}")


def fixed_rate(
    report: Report,
    service: Service,
    variant: Variant,
    args: argparse.Namespace,
    name: str = "fixed_rate",
) -> tuple[float, int]:
    users, rate = args.service_users, args.service_rate
    progress(NAME, f"fixed rate {rate:g} req/s for {args.service_rate_seconds:g}s, {variant.key}")

    def dashboard(rng: random.Random) -> load.Call:
        return ("dashboard", "GET", f"/api/users/{rng.randint(1, users)}/dashboard", None)

    # one operator's token (the admin reads any dashboard) for this open-loop client
    fixed = load.run(
        service.url,
        rate,
        args.service_rate_seconds,
        dashboard,
        headers={**admin_headers(), **variant.headers},
    )
    report.data[name] = fixed.summary()
    p95 = fixed.p(95)
    report.figure(
        f"{name}_p50",
        fixed.p(50),
        "ms",
        f"{variant.label}, {rate:g} req/s open loop, {fixed.sent} requests",
    )
    report.figure(f"{name}_p95", p95, "ms", f"target < {P95_TARGET_MS:g} ms")
    report.figure(f"{name}_p99", fixed.p(99), "ms")
    report.figure(f"{name}_failed", fixed.failed, "requests")
    return p95, fixed.failed


def auth_path(users: int, reps: int = 7, calls: int = 20_000) -> tuple[float, float]:
    """What the service does for authentication on a dashboard read, timed in this process:
    ``Authenticator.authorize`` for a member's own record, with the headers ``wrk`` sends and each
    user's own (already verified) token, against the same call with authentication off. Rotated
    repetitions; (median us per call on, median us per call off)."""
    on = Authenticator(KEYS_FILE)
    on.load()
    off = Authenticator(None, enabled=False)
    scopes = [
        {
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"authorization", f"Bearer {token(u)}".encode()),
            ],
            "path_params": {"user_id": str(u)},
        }
        for u in range(1, users + 1)
    ]
    for scope in scopes:  # the first request of each token verifies it, as in the warm-up
        on.authorize(Access.OWN_RECORD, scope)
    timings: dict[str, list[float]] = {"on": [], "off": []}
    for rep in range(reps):
        for name in ("on", "off") if rep % 2 == 0 else ("off", "on"):
            authenticator = on if name == "on" else off
            batch = (scopes * (calls // len(scopes) + 1))[:calls]
            start = time.process_time()
            for scope in batch:
                authenticator.authorize(Access.OWN_RECORD, scope)
            timings[name].append((time.process_time() - start) / calls * 1e6)
    return median(timings["on"]), median(timings["off"])


def checkout(rev: str, root: Path) -> Path:
    """``app/`` of revision ``rev`` in a directory of its own."""
    dest = root / f"rev-{rev.replace('/', '_')}"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "app"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise BenchError(f"--service-against {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def warm(service: Service, users: int) -> None:
    admin = admin_headers()
    for uid in range(1, users + 1):
        request = urllib.request.Request(f"{service.url}/api/users/{uid}/dashboard", headers=admin)
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
