"""The cache's read link (app/redis_link.py) against a real Redis: replies matched to their
callers under both event loops the service runs on, errors as redis-py raises them, a stuck or
lost connection failing its commands in time and the next command connecting again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from app.redis_link import RedisLink

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


def _seed(url: str, n: int) -> None:
    client = redis.Redis.from_url(url)
    client.mset({f"k{i}": f"v{i}" for i in range(n)})
    client.close()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_concurrent_commands_on_one_connection_each_get_their_own_reply(redis_url, loop):
    _seed(redis_url, 500)

    async def scenario() -> None:
        link = RedisLink(redis_url, 2.0)
        try:
            replies = await asyncio.gather(
                *(link.execute("MGET", f"k{i}", f"k{(i + 1) % 500}", "absent") for i in range(500))
            )
        finally:
            link.close()
        for i, reply in enumerate(replies):
            assert reply == [f"v{i}".encode(), f"v{(i + 1) % 500}".encode(), None]

    LOOPS[loop](scenario())


def test_an_error_reply_is_a_response_error_and_the_connection_serves_the_next(redis_url):
    _seed(redis_url, 1)

    async def scenario() -> None:
        link = RedisLink(redis_url, 2.0)
        try:
            with pytest.raises(ResponseError, match="wrong number of arguments"):
                await link.execute("GET")
            assert await link.execute("GET", "k0") == b"v0"
        finally:
            link.close()

    uvloop.run(scenario())


def test_a_cancelled_caller_leaves_the_replies_of_the_others_matched(redis_url):
    _seed(redis_url, 1)

    async def scenario() -> None:
        link = RedisLink(redis_url, 5.0)
        try:
            # BLPOP holds the connection for 0.3 s; its caller gives up before the reply.
            blocked = asyncio.ensure_future(link.execute("BLPOP", "no-such-list", "0.3"))
            await asyncio.sleep(0.05)
            blocked.cancel()
            assert await link.execute("GET", "k0") == b"v0"
        finally:
            link.close()

    uvloop.run(scenario())


def test_a_redis_that_stops_answering_fails_every_waiting_command_in_time(redis_factory):
    server = redis_factory()
    assert server.process is not None and server.process.pid is not None
    pid = server.process.pid

    async def scenario() -> None:
        link = RedisLink(server.url, 0.2)
        try:
            assert await link.execute("PING") == b"PONG"
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                results = await asyncio.wait_for(
                    asyncio.gather(
                        *(link.execute("GET", "k") for _ in range(3)), return_exceptions=True
                    ),
                    timeout=10,
                )
                assert all(isinstance(r, TimeoutError) for r in results), results
                assert time.monotonic() - started >= 0.2
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await link.execute("PING") == b"PONG", "a new connection once Redis answers"
        finally:
            link.close()

    uvloop.run(scenario())


def test_a_lost_connection_is_a_connection_error_and_the_next_command_connects_again(
    redis_factory,
):
    server = redis_factory()

    async def scenario() -> None:
        link = RedisLink(server.url, 1.0)
        try:
            assert await link.execute("PING") == b"PONG"
            server.kill()
            with pytest.raises(RedisConnectionError):
                await link.execute("PING")
            with pytest.raises(RedisConnectionError, match="cannot connect to Redis"):
                await link.execute("PING")
            server.start()
            assert await link.execute("PING") == b"PONG"
        finally:
            link.close()

    uvloop.run(scenario())


def test_the_url_password_and_database_are_used_and_a_wrong_password_is_refused(redis_factory):
    server = redis_factory(password="s3cret")
    client = redis.Redis.from_url(server.url.replace("/0", "/3"))
    client.set("only-in-3", "yes")
    client.close()

    async def scenario() -> None:
        link = RedisLink(server.url.replace("/0", "/3"), 1.0)
        wrong = RedisLink(server.url.replace("s3cret", "wrong"), 1.0)
        try:
            assert await link.execute("GET", "only-in-3") == b"yes"
            with pytest.raises(RedisConnectionError, match="Redis refused the connection's setup"):
                await wrong.execute("PING")
        finally:
            link.close()
            wrong.close()

    uvloop.run(scenario())
