"""The one request middleware: timing, metrics, health statistics, headers, slow-request log.

A plain ASGI middleware (no per-request task or body buffering). It labels metrics with the
matched route TEMPLATE (``/api/users/{user_id}/dashboard``), or ``unmatched``, so a scan of
random URLs cannot explode the number of series. An exception that escapes a handler is logged,
reported to Sentry and answered as a JSON 500 here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import context
from app.errors import request_id
from app.runtime import Runtime

log = logging.getLogger("app.http")

_INTERNAL_ERROR = {"error": "internal error", "detail": "the error was logged"}


class PortalMiddleware:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.stats = runtime.stats
        self.slow_s = runtime.settings.slow_request_ms / 1000

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method: str = scope["method"]
        ctx, token = context.begin(method, scope["path"])
        status = 500
        started = False
        self.metrics.inflight += 1

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append(
                    (b"x-response-time-ms", b"%.2f" % ((time.perf_counter() - start) * 1000))
                )
                headers.append((b"x-cache-hit", b"true" if ctx.cache_hit else b"false"))
                headers.append((b"x-query-count", b"%d" % ctx.query_count))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            status = 500
            rid = request_id(scope)
            log.exception("unhandled error in %s %s [request %s]", method, scope["path"], rid)
            self.runtime.sentry.capture(exc)
            if not started:
                body = json.dumps({**_INTERNAL_ERROR, "requestId": rid}).encode()
                await send_with_headers(
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
                await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.inflight -= 1
            context.end(token)
            route = _route_template(scope)
            self.metrics.observe_request(method, route, status, elapsed)
            if not context.is_probe(route):
                self.stats.record(elapsed * 1000, status)
            if elapsed >= self.slow_s:
                log.warning(
                    "slow request: %s %s took %.0f ms (threshold %d ms), status %d, "
                    "%d queries, cache %s",
                    method,
                    route,
                    elapsed * 1000,
                    self.runtime.settings.slow_request_ms,
                    status,
                    ctx.query_count,
                    "hit" if ctx.cache_hit else "miss",
                )


def _route_template(scope: MutableMapping[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"
