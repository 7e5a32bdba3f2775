"""The cache's read link to Redis: one connection on which every request's ``MGET`` is
pipelined, its replies matched to their callers in order.

A cache hit is one Redis round trip, and redis-py's pooled client costs several times the round
trip's own CPU per command (a connection checked out and back, retry and event machinery, stream
buffering). The link keeps the round trip to what it must be: the command packed and the reply
parsed by ``hiredis`` (redis-py's own C parser), written to and read from a plain
``asyncio.Protocol``. Every other cache operation (writes, tag tokens, flushes, pings) stays on
redis-py.

Same URL, credentials, database and TLS settings as the redis-py client (read by redis-py's own
``parse_url``). The same errors too: a reply error is ``redis.exceptions.ResponseError``, a
connection that fails or is lost is ``redis.exceptions.ConnectionError`` for every command still
waiting on it, and the next command connects again. The deadline (``PORTAL_REDIS_TIMEOUT_MS``)
is kept by the link with one timer, not one per command: a command without its reply in time
means the connection is stuck, and every command on it fails with ``TimeoutError``. A caller
that is cancelled only gives up its own wait: its reply, when it comes, is read and dropped, so
the replies of the others stay matched.

Traced requests get a client span per command, as the redis-py instrumentation gives them
(``db.system`` ``redis``, the command as its name, arguments elided).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import hiredis
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

_CLIENT = SpanKind.CLIENT


class _Link(asyncio.Protocol):
    """One connection: commands written in order, replies given to their waiters in order.

    Every command must have its reply within ``timeout_s``. Replies come in order, so the oldest
    command waiting is the first to be late: one timer watches it (not one per command). When
    it is late the connection is stuck; every command waiting on it fails with ``TimeoutError``
    and the connection is dropped.
    """

    def __init__(self, timeout_s: float) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        """Each command sent and not yet answered: its caller's future, and its deadline."""
        self.transport: asyncio.WriteTransport | None = None
        self.lost = False
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self.watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def send(self, args: tuple[str | bytes, ...]) -> asyncio.Future[Any]:
        """Write one command; the future of its reply."""
        transport = self.transport
        assert transport is not None
        loop = self.loop
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self.timeout_s
        self.waiting.append((future, deadline))
        if self.watchdog is None:
            self.watchdog = loop.call_at(deadline, self._watch)
        transport.write(hiredis.pack_command(args))  # type: ignore[arg-type]  # its stub says one item
        return future

    def _watch(self) -> None:
        self.watchdog = None
        if not self.waiting:
            return
        deadline = self.waiting[0][1]
        if deadline <= self.loop.time():
            self.abort(TimeoutError())
            self.close()
        else:
            self.watchdog = self.loop.call_at(deadline, self._watch)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(f"Redis sent a malformed reply ({exc})")
                return
            if reply is False:
                return
            if not waiting:
                self._fail("Redis sent a reply nobody asked for")
                return
            future = waiting.popleft()[0]
            if future.done():  # its caller is gone (cancelled): drop the reply
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        reason = f": {exc}" if exc else ""
        self.abort(RedisConnectionError(f"the connection to Redis was lost{reason}"))

    def _fail(self, reason: str) -> None:
        self.abort(RedisConnectionError(reason))
        self.close()

    def abort(self, error: BaseException) -> None:
        """Fail every command still waiting with ``error``."""
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        self.lost = True
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.transport is not None:
            self.transport.close()


class RedisLink:
    """The pipelined read connection to the Redis of ``url`` (``redis``, ``rediss`` or ``unix``).

    Connects on first use and again after a loss. ``timeout_s`` bounds a connection attempt (its
    handshake included) and each command: a command without its reply by then fails with
    ``TimeoutError``, and so does every other command waiting on the connection, which is
    dropped (the next command connects again).
    """

    def __init__(self, url: str, timeout_s: float, tracer_provider: Any | None = None) -> None:
        options = parse_url(url)
        kind = options.pop("connection_class", None)
        self._password: str | None = options.get("password")
        self._username: str | None = options.get("username")
        self._db = int(options.get("db") or 0)
        self._path: str | None = options.get("path") if kind is UnixDomainSocketConnection else None
        self._host: str = options.get("host") or "localhost"
        self._port = int(options.get("port") or 6379)
        self._ssl: ssl.SSLContext | None = None
        if kind is SSLConnection:
            self._ssl = SSLConnection(**options).ssl_context.get()
        self._timeout_s = timeout_s
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()
        self._tracer = (
            None if tracer_provider is None else tracer_provider.get_tracer("app.redis_link")
        )
        self._span_attributes: dict[str, Any] = {
            "db.system": "redis",
            "db.redis.database_index": self._db,
        }
        if self._path is None:
            self._span_attributes |= {"net.peer.name": self._host, "net.peer.port": self._port}
        else:
            self._span_attributes["net.peer.name"] = self._path

    @property
    def busy(self) -> bool:
        """A command is waiting for its reply."""
        link = self._link
        return link is not None and bool(link.waiting)

    async def execute(self, *args: str | bytes) -> Any:
        """Send one command and return its reply (``ResponseError`` for an error reply)."""
        if self._tracer is not None and is_instrumentation_enabled():
            name = str(args[0]).upper()
            attributes = {**self._span_attributes, "db.statement": _statement(name, len(args))}
            with self._tracer.start_as_current_span(name, kind=_CLIENT, attributes=attributes):
                return await self._execute(args)
        return await self._execute(args)

    async def _execute(self, args: tuple[str | bytes, ...]) -> Any:
        link = self._link
        if link is None or link.lost:
            link = await self._connect()
        return await link.send(args)

    async def _connect(self) -> _Link:
        async with self._connecting:
            link = self._link
            if link is not None and not link.lost:
                return link
            loop = asyncio.get_running_loop()
            fresh: _Link | None = None
            try:
                async with asyncio.timeout(self._timeout_s):
                    if self._path is not None:
                        transport, fresh = await loop.create_unix_connection(
                            lambda: _Link(self._timeout_s), self._path
                        )
                    else:
                        transport, fresh = await loop.create_connection(
                            lambda: _Link(self._timeout_s), self._host, self._port, ssl=self._ssl
                        )
                    fresh.transport = transport  # connection_made may not have run yet (uvloop)
                    await self._handshake(fresh)
            except BaseException as exc:
                if fresh is not None:
                    fresh.close()
                if isinstance(exc, TimeoutError):
                    raise RedisConnectionError(
                        f"no connection to Redis within {self._timeout_s:g}s"
                    ) from None
                if isinstance(exc, OSError):
                    raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
                raise
            self._link = fresh
            return fresh

    async def _handshake(self, link: _Link) -> None:
        try:
            if self._password is not None:
                if self._username:
                    await link.send(("AUTH", self._username, self._password))
                else:
                    await link.send(("AUTH", self._password))
            if self._db:
                await link.send(("SELECT", str(self._db)))
        except ResponseError as exc:
            raise RedisConnectionError(f"Redis refused the connection's setup: {exc}") from exc

    def close(self) -> None:
        """Drop the connection (the next command connects again); its waiters get
        ``ConnectionError``."""
        link, self._link = self._link, None
        if link is not None:
            link.abort(RedisConnectionError("the connection to Redis was closed"))
            link.close()


def _statement(name: str, argc: int) -> str:
    return " ".join((name, *("?" * (argc - 1))))
