"""The cache under a realistic user mix: hit rate, p95, and the database queries it saves.

10,000 seeded users are picked with a Zipf distribution (a few users are very active, most
rarely come back); 95% of requests read the user's dashboard (cached, medium TTL class), 5%
update the user (which invalidates that user's entries). The instrumented service with Redis
is first brought to a steady state (``wrk`` with the same Zipf mix of reads, not measured),
then an open-loop client offers a fixed rate and the hit rate is read from the service's own
``cache_hits_total`` / ``cache_misses_total`` (cross-checked by ``X-Cache-Hit``). The same mix
at the same rate is then offered to a second instance with ``PORTAL_CACHE=off`` on the same
database; ``db_queries_total`` per request of both runs gives the ratio.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import load
from bench.common import (
    BenchError,
    Report,
    Service,
    admin_headers,
    app_env,
    fraction,
    positive_float,
    positive_int,
    postgres,
    progress,
    redis,
    scrape,
    seeded_database,
    server_root,
    start_app,
)

NAME = "cache"
HIT_TARGET = 0.90

_ZIPF_LUA = """
local n = tonumber(os.getenv("BENCH_USERS"))
local s = tonumber(os.getenv("BENCH_ZIPF_S"))
local cum = {}
local total = 0
for k = 1, n do total = total + 1 / (k ^ s); cum[k] = total end
math.randomseed(tonumber(os.getenv("BENCH_SEED")))
local headers = {Authorization = os.getenv("BENCH_AUTHORIZATION")}
request = function()
  local x = math.random() * total
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cum[mid] < x then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/api/users/" .. lo .. "/dashboard", headers)
end
done = function(summary, latency, requests)
  io.write(string.format("BENCH_REQUESTS %d\\n", summary.requests))
end
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cache")
    g.add_argument("--cache-users", type=positive_int, default=10_000, help="users seeded")
    g.add_argument("--cache-zipf-s", type=positive_float, default=1.0, help="Zipf exponent")
    g.add_argument("--cache-write-share", type=fraction, default=0.05, help="share of updates")
    g.add_argument("--cache-rate", type=positive_float, default=300.0, help="offered rate (req/s)")
    g.add_argument("--cache-seconds", type=positive_float, default=30.0, help="measured run length")
    g.add_argument(
        "--cache-warm-seconds",
        type=positive_float,
        default=45.0,
        help="wrk warm-up with the read mix before measuring (cache on)",
    )


class Zipf:
    """User ids 1..n with P(id k) proportional to 1/k^s (the warm-up's Lua script draws the same
    distribution)."""

    def __init__(self, n: int, s: float) -> None:
        self.ids = list(range(1, n + 1))
        self.cum = list(itertools.accumulate(1 / (k**s) for k in range(1, n + 1)))

    def pick(self, rng: random.Random) -> int:
        return rng.choices(self.ids, cum_weights=self.cum)[0]


def _mix(zipf: Zipf, write_share: float) -> Callable[[random.Random], load.Call]:
    counter = itertools.count()

    def next_call(rng: random.Random) -> load.Call:
        uid = zipf.pick(rng)
        if rng.random() < write_share:
            return ("update", "PATCH", f"/api/users/{uid}", {"name": f"Member {next(counter)}"})
        return ("dashboard", "GET", f"/api/users/{uid}/dashboard", None)

    return next_call


def _warm(service: Service, users: int, s: float, seconds: float, scratch: Path) -> int:
    script = scratch / "zipf.lua"
    script.write_text(_ZIPF_LUA)
    env = dict(os.environ, BENCH_USERS=str(users), BENCH_ZIPF_S=str(s), BENCH_SEED="11")
    env["BENCH_AUTHORIZATION"] = admin_headers()["Authorization"]
    result = subprocess.run(
        ["wrk", "-t", "1", "-c", "32", "-d", f"{seconds:g}s", "-s", str(script), service.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_REQUESTS")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk warm-up failed: {result.stderr.strip()}")
    return int(line.split()[1])


def _measure(service: Service, args: argparse.Namespace, zipf: Zipf) -> dict[str, Any]:
    before = scrape(service.url)
    res = load.run(
        service.url,
        args.cache_rate,
        args.cache_seconds,
        _mix(zipf, args.cache_write_share),
        seed=3,
        headers=admin_headers(),  # an operator's token: any user's dashboard, any update
    )
    after = scrape(service.url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    reads = res.kinds.get("dashboard", load.KindStats())
    writes = res.kinds.get("update", load.KindStats())
    hits, misses = delta("cache_hits_total"), delta("cache_misses_total")
    return {
        "requests": res.sent,
        "reads": reads.count,
        "writes": writes.count,
        "failed": res.failed,
        "statuses": {k: v.statuses for k, v in res.kinds.items()},
        "client_errors": sum(k.errors for k in res.kinds.values()),
        "p50_ms": res.p(50),
        "p95_ms": res.p(95),
        "p99_ms": res.p(99),
        "read_p95_ms": reads.p(95),
        "write_p95_ms": writes.p(95),
        "cache_hits": hits,
        "cache_misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "header_hit_rate": reads.cache_hits / reads.count if reads.count else 0.0,
        "db_queries": delta("db_queries_total"),
        "db_queries_per_request": delta("db_queries_total") / res.sent if res.sent else 0.0,
        "max_send_lag_ms": res.max_send_lag_ms,
    }


def run(args: argparse.Namespace) -> Report:
    users, s = args.cache_users, args.cache_zipf_s
    report = Report(
        NAME,
        params={
            "users": users,
            "zipf_s": s,
            "write_share": args.cache_write_share,
            "rate": args.cache_rate,
            "seconds": args.cache_seconds,
            "warm_seconds": args.cache_warm_seconds,
        },
    )
    zipf = Zipf(users, s)
    with server_root(NAME) as root, postgres(root) as pg, redis(root) as rd:
        progress(NAME, f"seeding {users} users")
        dsn = seeded_database(pg, "portal", users)
        on = start_app(root, "app-cache-on", app_env(dsn, rd.url))
        off = start_app(root, "app-cache-off", app_env(dsn, rd.url, PORTAL_CACHE="off"))
        try:
            progress(NAME, f"warming the cache: wrk {args.cache_warm_seconds:g}s of Zipf reads")
            warm = _warm(on, users, s, args.cache_warm_seconds, root)
            progress(NAME, f"cache on: {args.cache_rate:g} req/s for {args.cache_seconds:g}s")
            with_cache = _measure(on, args, zipf)
            progress(NAME, f"cache off: {args.cache_rate:g} req/s for {args.cache_seconds:g}s")
            without = _measure(off, args, zipf)
        finally:
            on.stop()
            off.stop()
    report.data = {"warm_requests": warm, "with_cache": with_cache, "without_cache": without}
    mix = f"Zipf s={s:g} over {users} users, {args.cache_write_share:.0%} writes"
    report.figure(
        "hit_rate",
        with_cache["hit_rate"] * 100,
        "%",
        f"{mix}, {args.cache_rate:g} req/s after {warm} warm-up reads (target >= {HIT_TARGET:.0%})",
    )
    report.figure(
        "hit_rate_x_cache_hit_header",
        with_cache["header_hit_rate"] * 100,
        "%",
        "dashboard reads answered with X-Cache-Hit: true",
    )
    for label, m in (("cache", with_cache), ("nocache", without)):
        report.figure(
            f"p95_{label}",
            m["p95_ms"],
            "ms",
            f"all requests; reads {m['read_p95_ms']:.1f} ms, writes {m['write_p95_ms']:.1f} ms",
        )
        report.figure(f"p50_{label}", m["p50_ms"], "ms")
        report.figure(
            f"db_queries_per_request_{label}",
            m["db_queries_per_request"],
            "",
            f"{m['db_queries']:.0f} queries / {m['requests']} requests"
            + (f", {m['failed']} failed" if m["failed"] else ""),
        )
    ratio = (
        without["db_queries"] / with_cache["db_queries"]
        if with_cache["db_queries"]
        else float("inf")
    )
    report.figure("ratio_db_queries_without_vs_with", ratio, "x")
    report.figure("ratio_p95_without_vs_with", without["p95_ms"] / with_cache["p95_ms"], "x")
    met = with_cache["hit_rate"] >= HIT_TARGET
    report.finish(
        f"hit rate {with_cache['hit_rate']:.1%} (target >= 90%: {'MET' if met else 'MISSED'}), "
        f"p95 {with_cache['p95_ms']:.1f} ms with cache vs {without['p95_ms']:.1f} ms without; "
        f"{ratio:.1f}x the database queries without the cache"
    )
    return report
