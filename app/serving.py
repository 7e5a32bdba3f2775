"""Every HTTP request observed: timing, metrics, health statistics, headers, slow-request log.

Not a middleware layer of its own: ``ServiceApp.__call__``, the service's ASGI entry, observes
each request inline, around FastAPI's own handling (and the head sampler's decision). A layer
of its own cost every request a coroutine frame that each ``await`` of the request passes
through twice: about 4k of the 46k instructions instrumentation added to a cache-warm read
before (the README's service figures).

Metrics are labelled with the matched route TEMPLATE (``/api/users/{user_id}/dashboard``), or
``unmatched``, so a scan of random URLs cannot explode the number of series. An exception that
escapes the app is answered by the app's handler for ``Exception`` (a JSON 500, reported to
Sentry); it is logged here with its traceback, once.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left
from collections.abc import Awaitable
from time import perf_counter
from typing import Any

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from app import telemetry
from app.context import CURRENT, RequestContext, is_probe
from app.errors import request_id
from app.metrics import HTTP_BUCKETS
from app.runtime import Runtime

log = logging.getLogger("app.http")

_INTERNAL_ERROR = {"error": "internal error", "detail": "the error was logged"}


_QUERY_COUNTS = tuple((b"x-query-count", b"%d" % n) for n in range(64))
_CACHE_HIT = ((b"x-cache-hit", b"false"), (b"x-cache-hit", b"true"))
"""The ``X-Query-Count`` and ``X-Cache-Hit`` headers a request can have, made once."""

Series = tuple[list[Any], str, bool]
"""A request series: its ``http_requests`` cell, its route template, whether it is a probe."""


class _Served(RequestContext):
    """A request being served: its context, and what its response headers need."""

    send: Send
    start = 0.0

    def respond(self, message: Message) -> Awaitable[None]:
        """The app's ``send``: the ``X-`` headers added to the response's start. Not a coroutine
        itself: it hands back ``send``'s, which the caller awaits."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            n = self.query_count
            message["headers"] = [
                *message.get("headers", ()),
                (b"x-response-time-ms", b"%.2f" % ((perf_counter() - self.start) * 1000)),
                _CACHE_HIT[self.cache_hit],
                _QUERY_COUNTS[n] if n < 64 else (b"x-query-count", b"%d" % n),
            ]
        return self.send(message)


class _ServedQuietly(_Served):
    """A request served without the ``X-`` headers (``PORTAL_RESPONSE_HEADERS=off``)."""

    def respond(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        return self.send(message)


class RequestObserver:
    """What observing requests needs: the metrics, the statistics, the series made so far."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.stats = runtime.stats
        self.slow_s = runtime.settings.slow_request_ms / 1000
        self.served = _Served if runtime.settings.response_headers else _ServedQuietly
        """What each request is served as: with the ``X-`` headers, or without."""
        self.series: dict[tuple[int, str, int], Series] = {}
        """Per (matched route by id, method, status), made on first use. The app's routes live as
        long as it, and define __eq__, so they are not hashable themselves."""

    def new_series(self, route: object, method: str, status: int) -> Series:
        template, probe = _route_template(route)
        series = self.series[id(route), method, status] = (
            self.metrics.request_cell(method, template, status),
            template,
            probe,
        )
        return series

    async def failed(self, served: _Served, exc: Exception) -> None:
        """An exception escaped the app. The app's handler for ``Exception`` has answered it
        (and reported it) unless the response could not begin; then it is reported and answered
        here. Logged with its traceback either way, and counted as a 500."""
        started = served.status != 0
        served.status = 500
        scope = served.scope or {}
        rid = request_id(scope)
        log.exception("unhandled error in %s %s [request %s]", served.method, served.path, rid)
        if started:
            return
        self.runtime.sentry.capture(exc)
        body = json.dumps({**_INTERNAL_ERROR, "requestId": rid}).encode()
        await served.respond(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                    (b"x-request-id", rid.encode()),
                ],
            }
        )
        await served.send({"type": "http.response.body", "body": body})

    def slow(self, served: _Served, template: str, elapsed: float) -> None:
        log.warning(
            "slow request: %s %s took %.0f ms (threshold %d ms), status %d, %d queries, cache %s",
            served.method,
            template,
            elapsed * 1000,
            self.runtime.settings.slow_request_ms,
            served.status,
            served.query_count,
            "hit" if served.cache_hit else "miss",
        )


class ServiceApp(FastAPI):
    """FastAPI whose HTTP requests are observed (``observer``) and pass through ``head_sampler``
    (when tracing is on), both in this one entry."""

    head_sampler: telemetry.HeadSampler | None = None
    observer: RequestObserver | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        observer = self.observer
        if observer is None or scope["type"] != "http":
            await self._sampled(scope, receive, send)
            return
        # The hot path of every request: kept inline (each Python call here would cost about
        # as much as the work it does).
        start = perf_counter()
        served = observer.served()
        served.scope = scope
        served.send = send
        served.start = start
        respond = served.respond
        token = CURRENT.set(served)
        metrics = observer.metrics
        metrics.inflight += 1
        try:
            if self.head_sampler is None:
                await super().__call__(scope, receive, respond)
            else:
                await self._sampled(scope, receive, respond)
        except Exception as exc:
            await observer.failed(served, exc)
        finally:
            elapsed = perf_counter() - start
            metrics.inflight -= 1
            CURRENT.reset(token)
            status = served.status or 500  # no response begun: uvicorn answers 500
            route = scope.get("route")
            method = scope["method"]
            cell, template, probe = observer.series.get(
                (id(route), method, status)
            ) or observer.new_series(route, method, status)
            cell[0] += 1
            row = cell[1]
            row[bisect_left(HTTP_BUCKETS, elapsed)] += 1
            row[-1] += elapsed
            if not probe:
                observer.stats.record(elapsed * 1000, status)
            if elapsed >= observer.slow_s:
                observer.slow(served, template, elapsed)

    def _sampled(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """FastAPI's handling of the request, traced if the head sampler says so."""
        sampler = self.head_sampler
        if sampler is None or scope["type"] != "http":
            return super().__call__(scope, receive, send)
        return telemetry.sampled(sampler, super().__call__, scope, receive, send)


def _route_template(route: object) -> tuple[str, bool]:
    """The matched route's template (``unmatched`` without one), and whether it is a probe."""
    path = getattr(route, "path", None)
    template = path if isinstance(path, str) and path else "unmatched"
    return template, is_probe(template)
