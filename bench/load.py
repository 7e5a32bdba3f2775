"""An open-loop load client: requests leave at a fixed rate whatever the server does.

Request ``i`` is due at ``start + i / rate``; its latency is measured from that due time, not
from when it was actually sent, so a server (or client) that falls behind shows up as latency
instead of silently lowering the offered load (no coordinated omission, as with wrk2).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

from bench.common import percentile

# (kind, method, path, json body or None)
Call = tuple[str, str, str, dict[str, object] | None]


@dataclass
class KindStats:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    cache_hits: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


@dataclass
class LoadResult:
    rate: float
    seconds: float
    sent: int
    kinds: dict[str, KindStats]
    max_send_lag_ms: float

    def all_latencies(self) -> list[float]:
        return [x for k in self.kinds.values() for x in k.latencies_ms]

    def p(self, q: float) -> float:
        return percentile(self.all_latencies(), q)

    @property
    def failed(self) -> int:
        return sum(
            k.errors + sum(n for s, n in k.statuses.items() if s >= 500)
            for k in self.kinds.values()
        )

    def summary(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "seconds": self.seconds,
            "sent": self.sent,
            "p50_ms": self.p(50),
            "p95_ms": self.p(95),
            "p99_ms": self.p(99),
            "failed": self.failed,
            "max_send_lag_ms": self.max_send_lag_ms,
            "kinds": {
                name: {
                    "count": k.count,
                    "p50_ms": k.p(50),
                    "p95_ms": k.p(95),
                    "p99_ms": k.p(99),
                    "statuses": {str(s): n for s, n in k.statuses.items()},
                    "errors": k.errors,
                    "cache_hits": k.cache_hits,
                }
                for name, k in self.kinds.items()
            },
        }


def run(
    base_url: str,
    rate: float,
    seconds: float,
    next_call: Callable[[random.Random], Call],
    *,
    seed: int = 1,
    timeout_s: float = 10.0,
    max_in_flight: int = 1000,
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """Offer ``rate`` requests/s for ``seconds``; ``next_call`` picks each request; ``headers``
    go with every request."""
    return asyncio.run(
        _run(base_url, rate, seconds, next_call, seed, timeout_s, max_in_flight, headers)
    )


async def _run(
    base_url: str,
    rate: float,
    seconds: float,
    next_call: Callable[[random.Random], Call],
    seed: int,
    timeout_s: float,
    max_in_flight: int,
    headers: Mapping[str, str] | None,
) -> LoadResult:
    rng = random.Random(seed)
    kinds: dict[str, KindStats] = {}
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=max_in_flight, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    tasks: set[asyncio.Task[None]] = set()
    max_lag = 0.0

    async with aiohttp.ClientSession(
        base_url, connector=connector, timeout=timeout, headers=dict(headers or {})
    ) as session:

        async def one(call: Call, due: float) -> None:
            kind, method, path, body = call
            stats = kinds.setdefault(kind, KindStats())
            try:
                async with session.request(method, path, json=body) as resp:
                    await resp.read()
                    status = resp.status
                    hit = resp.headers.get("x-cache-hit") == "true"
            except (aiohttp.ClientError, TimeoutError):
                stats.errors += 1
                stats.latencies_ms.append((time.perf_counter() - due) * 1000)
                return
            stats.latencies_ms.append((time.perf_counter() - due) * 1000)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            stats.cache_hits += hit

        start = time.perf_counter() + 0.05
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            task = asyncio.create_task(one(next_call(rng), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return LoadResult(
        rate=rate, seconds=seconds, sent=total, kinds=kinds, max_send_lag_ms=max_lag * 1000
    )
