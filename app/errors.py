"""Every error answer is JSON ``{"error": "...", "detail": ...}`` with a 4xx or 503 status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.cache import PatternError
from app.db import DatabaseUnavailable
from app.runtime import Runtime

log = logging.getLogger("app.http")

_REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "request body too large",
    415: "unsupported media type",
    422: "invalid request",
    503: "service unavailable",
}


class FaultInjected(RuntimeError):
    """Raised by the fault switch (``PORTAL_FAULT_ERROR_RATE``); answered 500."""


class CacheUnavailable(RuntimeError):
    """Redis failed during an admin operation that must reach it."""


def error(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


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
        message = _REASONS.get(exc.status_code, "error")
        response = error(exc.status_code, message, exc.detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = _validation_detail(exc)
        if any(d["type"] == "json_invalid" for d in detail):
            return error(422, "invalid JSON body", detail)
        return error(422, "invalid request", detail)

    async def on_database(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable in %s %s: %s", request.method, request.url.path, exc)
        return error(503, "database unavailable", str(exc))

    async def on_cache(request: Request, exc: Exception) -> JSONResponse:
        return error(503, "cache unavailable", str(exc))

    async def on_pattern(request: Request, exc: Exception) -> JSONResponse:
        return error(422, "invalid request", str(exc))

    async def on_fault(request: Request, exc: Exception) -> JSONResponse:
        runtime.sentry.capture(exc)
        return error(
            500, "injected fault", "PORTAL_FAULT_ERROR_RATE is set: this failure is a drill"
        )

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(DatabaseUnavailable, on_database)
    app.add_exception_handler(CacheUnavailable, on_cache)
    app.add_exception_handler(PatternError, on_pattern)
    app.add_exception_handler(FaultInjected, on_fault)
