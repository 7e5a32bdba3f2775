"""The one request middleware: timing, metrics, health statistics, headers, slow-request log.

A plain ASGI middleware (no per-request task or body buffering). It labels metrics with the
matched route TEMPLATE (``/api/users/{user_id}/dashboard``), or ``unmatched``, so a scan of
random URLs cannot explode the number of series. An exception that escapes a handler is logged,
reported to Sentry and answered as a JSON 500 here.
"""

from __future__ import annotations

import json
import logging
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import CURRENT as _CURRENT
from app.context import RequestContext, is_probe
from app.errors import request_id
from app.runtime import Runtime

log = logging.getLogger("app.http")

_INTERNAL_ERROR = {"error": "internal error", "detail": "the error was logged"}


_QUERY_COUNTS = tuple(b"%d" % n for n in range(64))
"""``X-Query-Count`` values, made once."""


class PortalMiddleware:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.stats = runtime.stats
        self.slow_s = runtime.settings.slow_request_ms / 1000
        self._routes: dict[int, tuple[str, bool]] = {}
        """Per matched route (by id; the app's routes live as long as it): its template, and
        whether it is a probe (made on first use)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        method: str = scope["method"]
        ctx = RequestContext(method, scope["path"])
        token = _CURRENT.set(ctx)
        status = 500
        started = False
        metrics = self.metrics
        metrics.inflight += 1

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                n = ctx.query_count
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-response-time-ms", b"%.2f" % ((perf_counter() - start) * 1000)),
                    (b"x-cache-hit", b"true" if ctx.cache_hit else b"false"),
                    (b"x-query-count", _QUERY_COUNTS[n] if n < 64 else b"%d" % n),
                ]
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
            elapsed = perf_counter() - start
            metrics.inflight -= 1
            _CURRENT.reset(token)
            route = scope.get("route")
            known = self._routes.get(id(route))  # routes define __eq__: not hashable
            if known is None:
                known = self._routes[id(route)] = _route_template(route)
            template, probe = known
            metrics.observe_request(method, template, status, elapsed)
            if not probe:
                self.stats.record(elapsed * 1000, status)
            if elapsed >= self.slow_s:
                log.warning(
                    "slow request: %s %s took %.0f ms (threshold %d ms), status %d, "
                    "%d queries, cache %s",
                    method,
                    template,
                    elapsed * 1000,
                    self.runtime.settings.slow_request_ms,
                    status,
                    ctx.query_count,
                    "hit" if ctx.cache_hit else "miss",
                )


def _route_template(route: object) -> tuple[str, bool]:
    """The matched route's template (``unmatched`` without one), and whether it is a probe."""
    path = getattr(route, "path", None)
    template = path if isinstance(path, str) and path else "unmatched"
    return template, is_probe(template)
