"""Every error answer is JSON ``{"error": "...", "detail": ..., "requestId": "..."}`` with a 4xx or
5xx status and an ``X-Request-Id`` header.

A client gets a generic message for a server-side failure (never a database error or a stack
trace) and the request id; the details go to the log line with that id and, on a traced request,
to its span (whose trace id is then the request id).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry.trace import get_current_span
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import Scope

from app.cache import PatternError
from app.db import DatabaseTimeout, DatabaseUnavailable
from app.runtime import Runtime

log = logging.getLogger("app.http")

REQUEST_ID = "portal.request_id"
"""ASGI scope key of the request id, once an error needed one."""
REQUEST_ID_HEADER = "x-request-id"
_UNPARSEABLE = "There was an error parsing the body"
_CALLER_ID = re.compile(rb"^[A-Za-z0-9._:-]{8,128}$")

REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "request body too large",
    415: "unsupported media type",
    422: "invalid request",
    500: "internal error",
    503: "service unavailable",
}


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="What went wrong, in a few words")
    detail: Any = Field(
        default=None,
        description="What to change (a 4xx), or a generic note (a 5xx: the details are logged)",
    )
    requestId: str = Field(
        description="Quote it when reporting a problem: it finds the log lines and the trace"
    )


class FaultInjected(RuntimeError):
    """Raised by the fault switch (``PORTAL_FAULT_ERROR_RATE``); answered 500."""


class CacheUnavailable(RuntimeError):
    """Redis failed during an admin operation that must reach it."""


def request_id(scope: Scope) -> str:
    """The request's id: the caller's ``X-Request-Id`` when it is a sensible one (an ingress sets
    it), else the trace id of a traced request, else a new random one. Made once per request, and
    only when needed (an error), so a successful request pays nothing for it."""
    known: str | None = scope.get(REQUEST_ID)
    if known is not None:
        return known
    rid = None
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and _CALLER_ID.match(value):
            rid = value.decode()
            break
    if rid is None:
        context = get_current_span().get_span_context()
        rid = format(context.trace_id, "032x") if context.is_valid else secrets.token_hex(16)
    scope[REQUEST_ID] = rid
    return rid


def error(
    scope: Scope,
    status: int,
    message: str,
    detail: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    rid = request_id(scope)
    return JSONResponse(
        {"error": message, "detail": detail, "requestId": rid},
        status_code=status,
        headers={**(headers or {}), "X-Request-Id": rid},
    )


def server_error(
    scope: Scope, exc: BaseException, status: int, message: str, note: str
) -> JSONResponse:
    """A 5xx: the details to the log and the span, a generic answer to the client."""
    response = error(scope, status, message, note)
    rid = response.headers["x-request-id"]
    span = get_current_span()
    if span.is_recording():
        span.record_exception(exc)
        span.set_attribute("portal.request_id", rid)
    log.warning(
        "%s %s -> %d %s [request %s]: %s: %s",
        scope.get("method", "?"),
        scope.get("path", "?"),
        status,
        message,
        rid,
        type(exc).__name__,
        _one_line(exc),
    )
    return response


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:500] if lines else ""


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors():
        out.append(
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
        )
    return out


def install(app: FastAPI, runtime: Runtime) -> None:
    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400 and exc.detail == _UNPARSEABLE:
            # FastAPI's answer to a body it cannot even decode (not UTF-8, say): malformed
            # input like any invalid JSON, so the same 422.
            return error(request.scope, 422, "invalid JSON body", "the body is not UTF-8 JSON")
        message = REASONS.get(exc.status_code, "error")
        if exc.status_code in (401, 403):
            log.info(
                "%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail
            )
        return error(request.scope, exc.status_code, message, exc.detail, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = _validation_detail(exc)
        if any(d["type"] == "json_invalid" for d in detail):
            return error(request.scope, 422, "invalid JSON body", detail)
        return error(request.scope, 422, "invalid request", detail)

    async def on_database(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DatabaseTimeout):
            note = "the request took too long in the database; try again shortly"
            return server_error(request.scope, exc, 503, "database timeout", note)
        note = "the database is unavailable; try again shortly"
        return server_error(request.scope, exc, 503, "database unavailable", note)

    async def on_cache(request: Request, exc: Exception) -> JSONResponse:
        note = "the cache is unavailable; try again shortly"
        return server_error(request.scope, exc, 503, "cache unavailable", note)

    async def on_pattern(request: Request, exc: Exception) -> JSONResponse:
        return error(request.scope, 422, "invalid request", str(exc))

    async def on_fault(request: Request, exc: Exception) -> JSONResponse:
        runtime.sentry.capture(exc)
        return error(
            request.scope,
            500,
            "injected fault",
            "PORTAL_FAULT_ERROR_RATE is set: this failure is a drill",
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware calls this for an error no other handler took, then
        # raises it again: ``RequestObserver.failed`` (or, with instrumentation off, uvicorn)
        # logs its traceback.
        runtime.sentry.capture(exc)
        return server_error(request.scope, exc, 500, "internal error", "the error was logged")

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(DatabaseUnavailable, on_database)
    app.add_exception_handler(CacheUnavailable, on_cache)
    app.add_exception_handler(PatternError, on_pattern)
    app.add_exception_handler(FaultInjected, on_fault)
    app.add_exception_handler(Exception, on_unexpected)
