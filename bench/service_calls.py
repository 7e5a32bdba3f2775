"""The service benchmark's figure without noise: function calls per cache-warm dashboard read.

CPU per request side by side moves by several percent from one run to the next on a shared
2-core machine, more than the instrumentation's cost. A count of calls does not: each variant's
app is built in this process (``create_app``, on the benchmark's Postgres and Redis), reads are
sent through its ASGI interface with each user's own token, and a profile hook counts the
Python and C function calls they make. Not counted: uvicorn's HTTP parsing and writing, the same
for every variant.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvloop

from app.main import create_app
from app.settings import Settings
from bench.common import Report, app_env, progress, token

if TYPE_CHECKING:
    from bench.service import Variant

READS = 400


def report_calls(
    report: Report, variants: list[Variant], dsn: str, redis_url: str, users: int
) -> str | None:
    """Calls per read of the untraced variants of this checkout's service into ``report``; with
    ``instrumented`` and ``off`` among them, what the instrumentation adds (a summary line)."""
    counted = counted_variants(variants)
    if not counted:
        return None
    progress("service", f"counting calls per read in process: {', '.join(counted)}")
    calls = calls_per_read(counted, dsn, redis_url, users)
    for key, (python, c) in calls.items():
        report.figure(f"calls_per_read_{key}", python + c, "", f"{python:.0f} Python + {c:.0f} C")
    if not {"instrumented", "off"} <= calls.keys():
        return None
    on, off = sum(calls["instrumented"]), sum(calls["off"])
    report.figure("ratio_calls_instrumented_vs_off", on / off, "x", "calls per read, in process")
    return f"calls per read in process {on:.0f} instrumented vs {off:.0f} off ({on / off:.3f}x)"


def counted_variants(variants: list[Variant]) -> dict[str, Mapping[str, str]]:
    """{key: settings} of the variants whose work per read is counted: this checkout's service,
    untraced."""
    return {
        v.key: v.env for v in variants if v.env is not None and not v.traced and v.source is None
    }


def calls_per_read(
    variants: Mapping[str, Mapping[str, str]], dsn: str, redis_url: str, users: int
) -> dict[str, tuple[float, float]]:
    """{variant: (Python calls, C calls) per dashboard read} for each variant's settings."""
    return {
        key: uvloop.run(_count(app_env(dsn, redis_url, **env), min(users, READS)))
        for key, env in variants.items()
    }


async def _count(env: Mapping[str, str], users: int) -> tuple[float, float]:
    app = create_app(Settings.from_env(dict(env)))
    tokens = {u: f"Bearer {token(u)}".encode() for u in range(1, users + 1)}
    counts = {"call": 0, "c_call": 0}

    def hook(_frame: FrameType, event: str, _arg: Any) -> None:
        if event in counts:
            counts[event] += 1

    async with app.router.lifespan_context(app):
        for user in range(1, users + 1):  # warm: every entry cached, every token verified
            await _read(app, user, tokens[user])
        sys.setprofile(hook)
        try:
            for n in range(READS):
                user = n % users + 1
                await _read(app, user, tokens[user])
        finally:
            sys.setprofile(None)
    return counts["call"] / READS, counts["c_call"] / READS


async def _read(app: Any, user: int, bearer: bytes) -> None:
    path = f"/api/users/{user}/dashboard"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", bearer)],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"GET {path} answered {status} in process")
