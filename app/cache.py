"""The cache: Redis first, an in-process memory store while Redis is unreachable.

Values are the JSON bytes of a response, stored under readable keys (``user:42:dashboard``,
``users:list:1:20``, ``admin:stats``) with the TTL of their class (short, medium, long).

Tag invalidation uses tag tokens: every tag has a random token (Redis key ``tag:<tag>``); an
entry records the tokens of its tags when it was computed and is valid only while they are
unchanged. Invalidating a tag replaces its token: one write, whatever the number of entries,
and a value computed concurrently with an update can never be stored as fresh (it carries the
old token). Every entry also carries the ``__all__`` tag.

A lookup (the one ``MGET`` of a cache hit: the entry and its tags' tokens) goes over the
pipelined read connection of ``app.redis_link``; writes, tag tokens, flushes and pings over
redis-py's pooled client.

When a Redis call fails the cache switches to memory at once (requests are still served),
records which tags were invalidated meanwhile, tries Redis again after ``redis_retry_s`` and,
once Redis answers, replays those invalidations there before reading from it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from cachetools import LRUCache, TLRUCache
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.metrics import REDIS_BUCKETS, Metrics, observe
from app.redis_link import RedisLink
from app.settings import Settings

log = logging.getLogger("app.cache")

CacheClass = Literal["short", "medium", "long"]
ALL_TAG = "__all__"
TAG_PREFIX = "tag:"
# A flush pattern. The negative look-ahead ends the string in Python and in JSON Schema alike
# (``$`` would also let a trailing newline through in Python).
PATTERN = re.compile(r"^[A-Za-z0-9:_\-*?]{1,200}(?![\s\S])")
_MAX_PENDING_TAGS = 10_000


def dashboard_key(user_id: int) -> str:
    return f"user:{user_id}:dashboard"


def users_list_key(page: int, per_page: int) -> str:
    return f"users:list:{page}:{per_page}"


ADMIN_STATS_KEY = "admin:stats"
PLANS_KEY = "plans:all"


def user_tag(user_id: int) -> str:
    return f"user:{user_id}"


USERS_LIST_TAG = "users:list"
ADMIN_TAG = "admin"
PLANS_TAG = "plans"


class PatternError(ValueError):
    """A flush pattern is not a key glob we accept."""


def check_pattern(pattern: str) -> str:
    if not PATTERN.match(pattern):
        raise PatternError(
            "pattern must be 1-200 characters of letters, digits, ':', '_', '-' and the "
            "wildcards '*' and '?', e.g. \"user:*\""
        )
    return pattern


@dataclass
class CacheCheck:
    status: str
    backend: str
    response_time_ms: float
    hit_rate: float
    error: str | None = None


class MemoryStore:
    """The in-process store (the fallback while Redis is away, the only store without Redis),
    with the semantics of the Redis one: an entry expires after the TTL of its class, the least
    recently used entries go first beyond ``max_entries``, and so do the least recently used tag
    tokens (an entry whose token went is a miss, never stale)."""

    def __init__(
        self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.entries: TLRUCache[str, tuple[int, bytes]] = TLRUCache(
            max_entries, _expiry, timer=clock
        )
        self.tags: LRUCache[str, bytes] = LRUCache(max_entries)

    def get(self, key: str) -> bytes | None:
        item = self.entries.get(key)
        return None if item is None else item[1]

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.entries[key] = (ttl, value)

    def tokens(self, tags: Sequence[str]) -> list[bytes]:
        out = []
        for tag in tags:
            token = self.tags.get(tag)
            if token is None:
                token = self.tags[tag] = _new_token()
            out.append(token)
        return out

    def bump(self, tags: Sequence[str]) -> None:
        for tag in tags:
            self.tags[tag] = _new_token()

    def delete_pattern(self, pattern: str) -> int:
        doomed = [k for k in self.entries if fnmatch.fnmatchcase(k, pattern)]
        for k in doomed:
            self.entries.pop(k, None)
        return len(doomed)

    def clear(self) -> None:
        self.entries.clear()
        self.tags.clear()


def _expiry(_key: str, item: tuple[int, bytes], now: float) -> float:
    return now + item[0]


class Cache:
    def __init__(
        self, settings: Settings, metrics: Metrics, tracer_provider: Any | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.memory = MemoryStore()
        self.hits = 0
        self.misses = 0
        self._tag_ttl = 2 * max(
            settings.cache_ttl_short, settings.cache_ttl_medium, settings.cache_ttl_long
        )
        self._redis_up = False
        self._retry_at = 0.0
        self._pending: set[str] = set()
        self._pending_overflow = False
        self._recover_lock = asyncio.Lock()
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}
        self.redis: aioredis.Redis | None = None
        self.link: RedisLink | None = None
        """The reads' pipelined connection (``app.redis_link``): a cache hit's one round trip."""
        self._timeout_s = settings.redis_timeout_ms / 1000
        self._get_ok = metrics.redis_cell("get", True)
        """The series of a lookup's successful ``MGET``, kept: the hot path updates it in place."""
        if settings.redis_url:
            self.link = RedisLink(settings.redis_url, self._timeout_s, tracer_provider)
            # Each call gets its deadline from ``_deadline`` rather than ``socket_timeout``,
            # with which redis-py runs every command's write as a task of its own.
            self.redis = aioredis.Redis.from_url(
                settings.redis_url,
                socket_connect_timeout=self._timeout_s,
                socket_timeout=None,
                retry=Retry(NoBackoff(), 0),
                max_connections=64,
            )
            if tracer_provider is not None:
                from opentelemetry.instrumentation.redis import RedisInstrumentor

                RedisInstrumentor.instrument_client(self.redis, tracer_provider=tracer_provider)

    # ---------------------------------------------------------------------------- state

    @property
    def backend(self) -> str:
        return "redis" if self.redis is not None and self._redis_up else "memory"

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return round(self.hits / total, 4) if total else 0.0

    def connections_in_use(self) -> int:
        if self.redis is None:
            return 0
        in_use = getattr(self.redis.connection_pool, "_in_use_connections", ())
        return len(in_use) + int(self.link is not None and self.link.busy)

    async def close(self) -> None:
        if self.link is not None:
            self.link.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _redis_ready(self) -> aioredis.Redis | None:
        """The Redis client when it should be used now, else None (serve from memory)."""
        client = self.redis
        if client is None:
            return None
        if self._redis_up:
            return client
        if time.monotonic() < self._retry_at:
            return None
        return client if await self._recover(client) else None

    async def _recover(self, client: aioredis.Redis) -> bool:
        """Ping Redis and replay the invalidations made while it was away; True when back."""
        async with self._recover_lock:
            if self._redis_up:
                return True
            if time.monotonic() < self._retry_at:
                return False
            start = time.perf_counter()
            try:
                async with self._deadline():
                    await client.ping()
                pending = [ALL_TAG] if self._pending_overflow else sorted(self._pending)
                if pending:
                    await self._write_tokens(client, pending)
            except (RedisError, OSError) as exc:
                self._observe("ping", False, start)
                await self._mark_down(exc, log_it=self._retry_at == 0.0)
                return False
            self._observe("ping", True, start)
            first = self._retry_at == 0.0
            self._redis_up = True
            self._pending.clear()
            self._pending_overflow = False
            self.memory.clear()
            if first:
                log.info("cache: using Redis")
            else:
                log.warning(
                    "cache: Redis answers again; back from the in-memory fallback "
                    "(%d invalidations replayed)",
                    len(pending),
                )
            return True

    async def _mark_down(self, exc: BaseException, *, log_it: bool = True) -> None:
        was_up = self._redis_up
        self._redis_up = False
        self._retry_at = time.monotonic() + self.settings.redis_retry_s
        if was_up or log_it:
            log.warning(
                "cache: Redis unreachable (%s); serving from the in-memory fallback, "
                "retrying every %gs",
                self._describe(exc),
                self.settings.redis_retry_s,
            )
        if self.link is not None:
            self.link.close()
        if self.redis is not None:
            # Drop every pooled connection: after a restart they are all dead.
            with contextlib.suppress(RedisError, OSError):
                await self.redis.connection_pool.disconnect()

    def _deadline(self) -> asyncio.Timeout:
        """The time one Redis call may take (``PORTAL_REDIS_TIMEOUT_MS``); past it, the call is
        cancelled (redis-py drops the connection) and ``TimeoutError`` raised."""
        return asyncio.timeout(self._timeout_s)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"no answer within {self.settings.redis_timeout_ms} ms"
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

    def _observe(self, operation: str, ok: bool, start: float) -> None:
        self.metrics.observe_redis(operation, ok, time.perf_counter() - start)

    # ---------------------------------------------------------------------------- reads

    async def get_or_compute(
        self,
        key: str,
        cache_class: CacheClass,
        compute: Callable[[], Awaitable[bytes | None]],
        tags: Sequence[str] = (),
    ) -> tuple[bytes | None, bool]:
        """The cached value of ``key`` or, on a miss, ``compute()`` stored for its TTL class.

        Returns (value, hit). A ``None`` from ``compute`` (nothing found) is not cached.
        Concurrent misses of one key in this process share one computation.
        """
        if not self.settings.cache_enabled:  # PORTAL_CACHE=off (benchmarks): no lookup
            return await compute(), False
        all_tags = (ALL_TAG, *tags)
        value, tokens = await self._lookup(key, all_tags)
        if value is not None:
            self.hits += 1
            self.metrics.cache_lookup(cache_class, True)
            return value, True
        self.misses += 1
        self.metrics.cache_lookup(cache_class, False)
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting), False
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await compute()
            if value is not None:
                await self._store(key, value, self.settings.ttl(cache_class), tokens)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # consumed: waiters get it, nobody else must
            raise
        else:
            future.set_result(value)
        finally:
            del self._inflight[key]
        return value, False

    async def _lookup(self, key: str, tags: Sequence[str]) -> tuple[bytes | None, list[bytes]]:
        link = self.link
        client = self.redis if self._redis_up else await self._redis_ready()
        if client is not None and link is not None:
            timed = self._get_ok  # None while instrumentation is off: no clock reads either
            start = time.perf_counter() if timed is not None else 0.0
            try:
                # The link keeps the deadline (PORTAL_REDIS_TIMEOUT_MS) itself.
                found = await link.execute("MGET", key, *[TAG_PREFIX + t for t in tags])
                if timed is not None:
                    observe(timed, REDIS_BUCKETS, time.perf_counter() - start)
                raw, current = found[0], found[1:]
                if any(tok is None for tok in current):
                    current = await self._init_tokens(client, tags, current)
                tokens = [t if isinstance(t, bytes) else str(t).encode() for t in current]
                return _decode(raw, tokens), tokens
            except (RedisError, OSError) as exc:
                self._observe("get", False, start)
                await self._mark_down(exc)
        tokens = self.memory.tokens(tags)
        return _decode(self.memory.get(key), tokens), tokens

    async def _init_tokens(
        self, client: aioredis.Redis, tags: Sequence[str], current: list[Any]
    ) -> list[Any]:
        start = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        missing = [i for i, tok in enumerate(current) if tok is None]
        for i in missing:
            pipe.set(TAG_PREFIX + tags[i], _new_token(), nx=True, ex=self._tag_ttl)
            pipe.get(TAG_PREFIX + tags[i])
        try:
            async with self._deadline():
                replies = await pipe.execute()
        except (RedisError, OSError):
            self._observe("tag_init", False, start)
            raise
        self._observe("tag_init", True, start)
        current = list(current)
        for n, i in enumerate(missing):
            current[i] = replies[2 * n + 1]
        return current

    # ---------------------------------------------------------------------------- writes

    async def _store(self, key: str, value: bytes, ttl: int, tokens: list[bytes]) -> None:
        encoded = b" ".join(tokens) + b"\n" + value
        client = await self._redis_ready()
        if client is not None:
            start = time.perf_counter()
            try:
                async with self._deadline():
                    await client.set(key, encoded, ex=ttl)
                self._observe("set", True, start)
                return
            except (RedisError, OSError) as exc:
                self._observe("set", False, start)
                await self._mark_down(exc)
            # The tokens came from Redis; memory has its own, so do not store a stale mix.
            return
        self.memory.set(key, encoded, ttl)

    async def invalidate(self, tags: Sequence[str]) -> None:
        """Every entry carrying one of ``tags`` is stale from now on (Redis and memory)."""
        if not self.settings.cache_enabled:
            return
        self.memory.bump(tags)
        client = await self._redis_ready()
        if client is not None:
            start = time.perf_counter()
            try:
                await self._write_tokens(client, tags)
                self._observe("invalidate", True, start)
                return
            except (RedisError, OSError) as exc:
                self._observe("invalidate", False, start)
                await self._mark_down(exc)
        if self.redis is not None:
            self._pending.update(tags)
            if len(self._pending) > _MAX_PENDING_TAGS:
                self._pending_overflow = True
                self._pending.clear()

    async def _write_tokens(self, client: aioredis.Redis, tags: Sequence[str]) -> None:
        pipe = client.pipeline(transaction=False)
        for tag in tags:
            pipe.set(TAG_PREFIX + tag, _new_token(), ex=self._tag_ttl)
        async with self._deadline():
            await pipe.execute()

    async def flush(self, pattern: str) -> int:
        """Delete the keys matching ``pattern`` in Redis and in memory; the number deleted."""
        check_pattern(pattern)
        deleted = self.memory.delete_pattern(pattern)
        client = await self._redis_ready()
        if client is None:
            return deleted
        start = time.perf_counter()
        try:
            cursor = 0
            while True:
                async with self._deadline():
                    cursor, keys = await client.scan(cursor, match=pattern, count=1000)
                if keys:
                    async with self._deadline():
                        deleted += int(await client.unlink(*keys))
                if not cursor:
                    break
        except (RedisError, OSError) as exc:
            self._observe("flush", False, start)
            await self._mark_down(exc)
            raise
        self._observe("flush", True, start)
        return deleted

    # ---------------------------------------------------------------------------- health

    async def check(self) -> CacheCheck:
        """Ping Redis (which also brings the cache back to Redis when it returns)."""
        start = time.perf_counter()
        if self.redis is None:
            return CacheCheck("healthy", "memory", _ms(start), self.hit_rate)
        if not self._redis_up:
            self._retry_at = min(self._retry_at, time.monotonic())
            if await self._redis_ready() is None:
                return CacheCheck(
                    "degraded",
                    "memory",
                    _ms(start),
                    self.hit_rate,
                    "Redis unreachable; serving from the in-memory fallback",
                )
            return CacheCheck("healthy", "redis", _ms(start), self.hit_rate)
        try:
            async with self._deadline():
                await self.redis.ping()
            self._observe("ping", True, start)
        except (RedisError, OSError) as exc:
            self._observe("ping", False, start)
            await self._mark_down(exc)
            return CacheCheck(
                "degraded",
                "memory",
                _ms(start),
                self.hit_rate,
                f"Redis unreachable ({self._describe(exc)}); serving from memory",
            )
        return CacheCheck("healthy", "redis", _ms(start), self.hit_rate)


def _decode(raw: Any, tokens: list[bytes]) -> bytes | None:
    if raw is None:
        return None
    data = bytes(raw)
    header, sep, payload = data.partition(b"\n")
    if not sep or header.split(b" ") != tokens:
        return None
    return payload


def _new_token() -> bytes:
    return secrets.token_hex(8).encode()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
