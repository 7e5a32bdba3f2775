"""The cache: Redis first, memory while Redis is away, tag invalidation that cannot go stale."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import anyio
import pytest
import redis

from app.cache import Cache, MemoryStore
from app.keys import KeySet
from app.metrics import Metrics
from tests.app.conftest import ADMIN, bearer, running_app, settings_for, token

pytestmark = pytest.mark.anyio

FAST_RECOVERY = {"PORTAL_REDIS_RETRY_MS": "100", "PORTAL_REDIS_TIMEOUT_MS": "200"}


async def health(client) -> tuple[int, dict[str, Any]]:
    r = await client.get("/api/health/advanced")
    return r.status_code, r.json()


async def wait_health(client, status: str, backend: str, timeout: float = 10) -> dict[str, Any]:
    deadline = anyio.current_time() + timeout
    while True:
        code, body = await health(client)
        if body["status"] == status and body["checks"]["cache"]["backend"] == backend:
            return body
        if anyio.current_time() > deadline:
            raise AssertionError(f"expected {status}/{backend}, last answer {code} {body}")
        await anyio.sleep(0.05)


async def test_redis_killed_mid_test_requests_are_still_served_and_health_is_degraded(
    portal_dsn, redis_factory
):
    server = redis_factory()
    settings = settings_for(portal_dsn, server.url, **FAST_RECOVERY)
    async with running_app(settings) as client:
        assert (await client.get("/api/users/10/dashboard")).status_code == 200
        assert (await client.get("/api/users/10/dashboard")).headers["x-cache-hit"] == "true"
        body = await wait_health(client, "healthy", "redis")
        assert body["checks"]["cache"]["hitRate"] == 0.5

        await anyio.to_thread.run_sync(server.kill)

        for _ in range(3):
            r = await client.get("/api/users/10/dashboard")
            assert r.status_code == 200, "a dead Redis must not fail requests"
        assert r.headers["x-cache-hit"] == "true", "the memory fallback serves hits"
        listed = await client.get("/api/users", params={"per_page": 5})
        assert listed.status_code == 200
        code, body = await health(client)
        assert code == 200 and body["status"] == "degraded"
        cache = body["checks"]["cache"]
        assert cache["status"] == "degraded" and cache["backend"] == "memory"
        assert "Redis" in cache["error"]
        assert body["checks"]["database"]["status"] == "healthy"

        await anyio.to_thread.run_sync(server.start)
        await wait_health(client, "healthy", "redis")
        r = await client.get("/api/users/10/dashboard")
        assert r.status_code == 200 and r.headers["x-cache-hit"] == "false"
        assert (await client.get("/api/users/10/dashboard")).headers["x-cache-hit"] == "true"
        metrics = (await client.get("/metrics")).text
    assert 'redis_operations_total{operation="get",status="error"' in metrics


async def test_invalidations_made_while_redis_was_away_are_replayed_when_it_returns(
    portal_dsn, redis_factory
):
    """Redis frozen (it keeps its data) while a user is updated: the old dashboard in Redis
    must not be served once Redis answers again."""
    server = redis_factory()
    settings = settings_for(portal_dsn, server.url, **FAST_RECOVERY)
    pid = server.process.pid
    async with running_app(settings) as client:
        before = (await client.get("/api/users/11/dashboard")).json()
        assert (await client.get("/api/users/11/dashboard")).headers["x-cache-hit"] == "true"
        os.kill(pid, signal.SIGSTOP)
        try:
            r = await client.patch("/api/users/11", json={"name": "Renamed While Away"})
            assert r.status_code == 200
            await wait_health(client, "degraded", "memory")
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_health(client, "healthy", "redis")
        after = await client.get("/api/users/11/dashboard")
    assert before["user"]["name"] != "Renamed While Away"
    assert after.headers["x-cache-hit"] == "false"
    assert after.json()["user"]["name"] == "Renamed While Away"


async def test_a_redis_that_stops_answering_costs_a_read_its_timeout_not_a_hang(
    portal_dsn, redis_factory, caplog
):
    """Redis frozen with connections open (no error, no answer): reads are answered from the
    database once PORTAL_REDIS_TIMEOUT_MS has passed, and the cache moves to memory."""
    server = redis_factory()
    settings = settings_for(portal_dsn, server.url, **FAST_RECOVERY)
    pid = server.process.pid
    async with running_app(settings) as client:
        assert (await client.get("/api/users/12/dashboard")).status_code == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(20):  # a read with no deadline would wait forever
                r = await client.get("/api/users/13/dashboard")
                assert r.status_code == 200 and r.headers["x-cache-hit"] == "false"
                again = await client.get("/api/users/13/dashboard")
                assert again.headers["x-cache-hit"] == "true", "the memory fallback took over"
        finally:
            os.kill(pid, signal.SIGCONT)
        await wait_health(client, "healthy", "redis")
    assert "Redis unreachable (no answer within 200 ms)" in caplog.text


async def test_without_redis_the_memory_cache_serves_and_health_is_healthy(portal_dsn):
    async with running_app(settings_for(portal_dsn)) as client:
        await client.get("/api/admin/stats")
        hit = await client.get("/api/admin/stats")
        code, body = await health(client)
    assert hit.headers["x-cache-hit"] == "true"
    assert code == 200 and body["status"] == "healthy"
    assert body["checks"]["cache"]["backend"] == "memory"


async def test_entries_expire_after_their_ttl_class(portal_dsn, redis_url):
    settings = settings_for(portal_dsn, redis_url, PORTAL_CACHE_TTL_SHORT="1")
    async with running_app(settings) as client:
        await client.get("/api/users")
        assert (await client.get("/api/users")).headers["x-cache-hit"] == "true"
        assert 0 < redis.Redis.from_url(redis_url).ttl("users:list:1:20") <= 1
        await anyio.sleep(1.2)
        assert (await client.get("/api/users")).headers["x-cache-hit"] == "false"


async def test_a_value_computed_during_an_invalidation_is_never_served_as_fresh(redis_url):
    settings = settings_for("postgresql://unused@127.0.0.1/x", redis_url)
    cache = Cache(settings, Metrics("t", "stable"))
    release = asyncio.Event()

    async def slow_old_value() -> bytes:
        await release.wait()
        return b'{"name": "old"}'

    try:
        task = asyncio.create_task(
            cache.get_or_compute("user:1:dashboard", "medium", slow_old_value, ("user:1",))
        )
        await asyncio.sleep(0.05)
        await cache.invalidate(("user:1",))  # the update commits while the read computes
        release.set()
        assert await task == (b'{"name": "old"}', False)

        async def new_value() -> bytes:
            return b'{"name": "new"}'

        value, hit = await cache.get_or_compute(
            "user:1:dashboard", "medium", new_value, ("user:1",)
        )
        assert (value, hit) == (b'{"name": "new"}', False), "the stale value must not be a hit"
        assert await cache.get_or_compute("user:1:dashboard", "medium", new_value, ("user:1",)) == (
            b'{"name": "new"}',
            True,
        )
    finally:
        await cache.close()


async def test_concurrent_misses_of_one_key_compute_once(redis_url):
    cache = Cache(
        settings_for("postgresql://unused@127.0.0.1/x", redis_url), Metrics("t", "stable")
    )
    calls = 0
    everyone_missed = asyncio.Event()

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        # the computation lasts until all ten have missed, however slow their Redis lookups
        await everyone_missed.wait()
        return b"[]"

    async def release() -> None:
        while cache.misses < 10:
            await asyncio.sleep(0.01)
        everyone_missed.set()

    try:
        async with asyncio.timeout(60):
            *results, _ = await asyncio.gather(
                *(cache.get_or_compute("plans:all", "long", compute) for _ in range(10)),
                release(),
            )
    finally:
        await cache.close()
    assert calls == 1 and all(v == b"[]" for v, _ in results)


async def test_admin_flush_deletes_matching_keys_in_redis_and_memory(portal_dsn, redis_url):
    async with running_app(settings_for(portal_dsn, redis_url)) as client:
        for uid in (1, 2, 3):
            await client.get(f"/api/users/{uid}/dashboard")
        await client.get("/api/users")
        r = await client.post("/api/admin/cache/flush", json={"pattern": "user:*"})
        assert r.status_code == 200, r.text
        assert r.json()["deleted"] == 3
        assert redis.Redis.from_url(redis_url).exists("users:list:1:20") == 1
        assert (await client.get("/api/users/1/dashboard")).headers["x-cache-hit"] == "false"
        assert (await client.get("/api/users")).headers["x-cache-hit"] == "true"

    async with running_app(settings_for(portal_dsn, None)) as client:
        await client.get("/api/users/1/dashboard")
        r = await client.post("/api/admin/cache/flush", json={"pattern": "user:1:*"})
        assert r.json()["deleted"] == 1 and r.json()["backend"] == "memory"


@pytest.mark.parametrize(
    "body",
    [
        {"pattern": ""},
        {"pattern": "user:[a-z]*"},
        {"pattern": "a b"},
        {"pattern": 5},
        {"pattern": "*" * 201},
        {"pattern": "user:*'; FLUSHALL"},
        {},
        {"pattern": "x", "y": 1},
    ],
)
async def test_admin_flush_refuses_a_bad_pattern(portal_dsn, redis_url, body):
    async with running_app(settings_for(portal_dsn, redis_url)) as client:
        await client.get("/api/users/1/dashboard")
        r = await client.post("/api/admin/cache/flush", json=body)
    assert r.status_code == 422 and r.json()["error"] == "invalid request"
    assert redis.Redis.from_url(redis_url).exists("user:1:dashboard") == 1


async def test_admin_operations_need_the_admin_scope(portal_dsn, redis_url):
    async with running_app(settings_for(portal_dsn, redis_url), headers=None) as client:
        await client.get("/api/users/1/dashboard", headers=ADMIN)
        cases = (
            ({}, 401),
            (bearer("not-a-token"), 401),
            ({"Authorization": token(service="x", scopes=("admin",))}, 401),
            (bearer(token(service="x", scopes=("admin",), keys=KeySet(()).with_new_key())), 401),
            (bearer(token(1)), 403),
            (bearer(token(service="scraper", scopes=("metrics",))), 403),
        )
        for headers, status in cases:
            r = await client.post("/api/admin/cache/flush", json={"pattern": "*"}, headers=headers)
            assert r.status_code == status, (headers, r.text)
            assert r.json()["error"] == ("unauthorized" if status == 401 else "forbidden")
            assert r.headers["www-authenticate"].startswith('Bearer realm="portal"')
        assert redis.Redis.from_url(redis_url).exists("user:1:dashboard") == 1
        r = await client.post("/api/admin/sentry", json={"enabled": False}, headers=ADMIN)
        assert r.status_code == 200
        assert r.json() == {"configured": False, "enabled": False}


def test_the_memory_store_expires_an_entry_after_its_ttl():
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    store.set("user:1:dashboard", b"{}", ttl=60)
    now[0] += 59.9
    assert store.get("user:1:dashboard") == b"{}"
    now[0] += 0.2
    assert store.get("user:1:dashboard") is None


def test_the_memory_store_drops_the_least_recently_used_entry_beyond_its_bound():
    store = MemoryStore(max_entries=2)
    store.set("a", b"1", ttl=60)
    store.set("b", b"2", ttl=60)
    assert store.get("a") == b"1"
    store.set("c", b"3", ttl=60)
    assert (store.get("a"), store.get("b"), store.get("c")) == (b"1", None, b"3")


def test_the_memory_store_bounds_its_tag_tokens_and_a_forgotten_one_is_never_reused():
    store = MemoryStore(max_entries=2)
    (first,) = store.tokens(["user:1"])
    store.tokens(["user:2"])
    store.tokens(["user:3"])  # user:1 is the least recently used: forgotten
    assert len(store.tags) == 2
    assert store.tokens(["user:1"]) != [first], "entries stored under the old token now miss"
