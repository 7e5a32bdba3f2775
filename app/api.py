"""HTTP routes. Business routes answer JSON built by Postgres, cached as bytes, never re-parsed."""

from __future__ import annotations

import asyncio
import json
import random
from enum import Enum
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Depends, FastAPI, Path, Request, Response, params
from fastapi import Query as Param
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException

from app import context, health, queries
from app.auth import ADMIN, Access, forbidden
from app.cache import (
    ADMIN_STATS_KEY,
    ADMIN_TAG,
    PATTERN,
    PLANS_KEY,
    PLANS_TAG,
    USERS_LIST_TAG,
    CacheClass,
    dashboard_key,
    user_tag,
    users_list_key,
)
from app.db import Query
from app.errors import CacheUnavailable, ErrorBody, FaultInjected
from app.gate import guard, principal_of
from app.runtime import Runtime
from app.settings import Faults

MAX_ID = 2**63 - 1
MAX_PAGE = 100_000
MAX_PER_PAGE = 100
MAX_BODY_BYTES = 16 * 1024
JSON = "application/json"
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="The user's numeric id")]

# The input rules are regular expressions, declared as such in the OpenAPI document and applied
# as they are declared (Python's ``re``: \w is Unicode), so the document and the service accept
# the same strings. ``(?![\s\S])`` ends the string (``$`` would let a trailing newline through).
END = r"(?![\s\S])"
NAME_PATTERN = r"^[^\W\d_](?:[^\W_]|[.'’]|-(?!-)| (?! ))*(?<! )" + END
"""A letter first; then letters, digits and . ' ’ - and single spaces; no "--", no trailing
space: ``Zoë O'Neil-Smith`` is a name, ``Robert'); DROP TABLE users;--`` is not."""
EMAIL_PATTERN = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+" + END
FLUSH_PATTERN = PATTERN.pattern


def _no_defaults(schema: dict[str, Any]) -> None:
    """Optional fields that may not be null: no ``default: null`` in the document, and at least
    one field."""
    for field in schema.get("properties", {}).values():
        field.pop("default", None)
    schema["minProperties"] = 1


class UserUpdate(BaseModel):
    """PATCH /api/users/{id}: one or more of name, email, status; nothing else, never null.
    Changing ``status`` needs the admin scope."""

    model_config = ConfigDict(
        extra="forbid", strict=True, regex_engine="python-re", json_schema_extra=_no_defaults
    )

    name: Annotated[str, Field(min_length=1, max_length=200, pattern=NAME_PATTERN)] = None  # type: ignore[assignment]
    email: Annotated[
        str,
        Field(
            min_length=3,
            max_length=254,
            pattern=EMAIL_PATTERN,
            description="Stored in lower case; must not belong to another user",
        ),
    ] = None  # type: ignore[assignment]
    status: Literal["active", "pending", "suspended", "deleted"] = None  # type: ignore[assignment]

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _some_field(self) -> UserUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to update: send at least one of name, email, status")
        return self


class FlushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")
    pattern: Annotated[
        str,
        Field(
            pattern=FLUSH_PATTERN,
            description="A key glob: letters, digits, ':', '_', '-', '*' and '?', e.g. user:*",
        ),
    ]


class HealthStatus(BaseModel):
    """GET /api/health/advanced: the status for anyone; checks and figures with the admin scope."""

    model_config = ConfigDict(extra="allow")
    status: Literal["healthy", "degraded", "unhealthy"]


class SentryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """Error answers a route declares beside those of its access rule (app/openapi.py)."""
    notes = {
        404: "No such user",
        409: "The email belongs to another user",
        503: "The database (or, for a flush, Redis) is unavailable or timed out; try again",
    }
    return {c: {"model": ErrorBody, "description": notes.get(c, "")} for c in codes}


ACCESS = {
    "dashboard": Access.OWN_RECORD,
    "get_user": Access.OWN_RECORD,
    "activity": Access.OWN_RECORD,
    "update_user": Access.OWN_RECORD,
    "plans": Access.MEMBER,
    "list_users": Access.ADMIN,
    "admin_stats": Access.ADMIN,
    "flush": Access.ADMIN,
    "sentry": Access.ADMIN,
    "liveness": Access.PUBLIC,
    "readiness": Access.OPTIONAL,
    "metrics": Access.METRICS,
}
"""Who may call each route, by endpoint name (see app/SECURITY.md)."""
MAX_BODY = {"update_user": MAX_BODY_BYTES, "flush": MAX_BODY_BYTES, "sentry": MAX_BODY_BYTES}


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=JSON)


def add_routes(app: FastAPI, rt: Runtime) -> None:
    """Declare every route on the app itself, business routes first (the busiest are matched
    first). Routes of an included ``APIRouter`` cost a second route match on every request."""
    faults = _fault_switch(rt.settings.faults)
    _user_routes(app, rt, faults)
    _catalogue_routes(app, rt, faults)
    _update_route(app, rt, faults)
    _operations_routes(app, rt)
    _probe_routes(app, rt)
    guard(app.router.routes, rt.auth, ACCESS, MAX_BODY)


def _fault_switch(faults: Faults) -> list[params.Depends]:
    """The drill fault switch as a dependency of the business routes, when any is set (see
    app/README.md); otherwise nothing, so a request pays nothing for it."""
    if not (faults.error_rate or (faults.latency_ms and faults.latency_rate)):
        return []

    async def fault_switch() -> None:
        if faults.latency_ms and faults.latency_rate and random.random() < faults.latency_rate:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.error_rate and random.random() < faults.error_rate:
            raise FaultInjected("injected fault (PORTAL_FAULT_ERROR_RATE)")

    return [Depends(fault_switch)]


async def _cached(
    rt: Runtime,
    key: str,
    cache_class: CacheClass,
    query: Query,
    params: Any,
    tags: tuple[str, ...],
) -> bytes | None:
    """The JSON body ``query`` builds, from the cache when it holds it; notes a hit on the
    request (``X-Cache-Hit``)."""

    async def compute() -> bytes | None:
        row = await rt.db.run(query, params)
        return row[0].encode() if row and row[0] is not None else None

    body, hit = await rt.cache.get_or_compute(key, cache_class, compute, tags)
    ctx = context.CURRENT.get()
    if ctx is not None:
        ctx.cache_hit = hit
    return body


def _not_found(user_id: int) -> HTTPException:
    return HTTPException(404, f"user {user_id} does not exist")


BUSINESS: list[str | Enum] = ["portal"]


def _user_routes(app: FastAPI, rt: Runtime, deps: list[params.Depends]) -> None:
    db, faults, tags = rt.db, rt.settings.faults, BUSINESS

    @app.get(
        "/api/users/{user_id}/dashboard",
        tags=tags,
        dependencies=deps,
        summary="User, profile, active subscriptions and unexpired tokens, in one query",
        responses=_errors(404, 503),
    )
    async def dashboard(user_id: UserId) -> Response:
        if faults.db_sleep_ms:
            # Drill: the slow statement runs on every request (no cache) so it shows.
            row = await db.run(queries.DASHBOARD_WITH_SLEEP, (faults.db_sleep_ms / 1000, user_id))
            body = row[0].encode() if row else None
        else:
            body = await _cached(
                rt,
                dashboard_key(user_id),
                "medium",
                queries.DASHBOARD,
                (user_id,),
                (user_tag(user_id),),
            )
        if body is None:
            raise _not_found(user_id)
        return _json(body)

    @app.get(
        "/api/users",
        tags=tags,
        dependencies=deps,
        summary="A page of users, by id (admin)",
        responses=_errors(503),
    )
    async def list_users(
        page: Annotated[int, Param(ge=1, le=MAX_PAGE)] = 1,
        per_page: Annotated[int, Param(ge=1, le=MAX_PER_PAGE)] = 20,
    ) -> Response:
        params = {"limit": per_page, "offset": (page - 1) * per_page, "page": page}
        body = await _cached(
            rt,
            users_list_key(page, per_page),
            "short",
            queries.USERS_PAGE,
            params,
            (USERS_LIST_TAG,),
        )
        assert body is not None
        return _json(body)

    @app.get(
        "/api/users/{user_id}",
        tags=tags,
        dependencies=deps,
        summary="One user",
        responses=_errors(404, 503),
    )
    async def get_user(user_id: UserId) -> Response:
        row = await db.run(queries.USER, (user_id,))
        if not row:
            raise _not_found(user_id)
        return _json(row[0].encode())

    @app.get(
        "/api/users/{user_id}/activity",
        tags=tags,
        dependencies=deps,
        summary="The user's latest activity",
        responses=_errors(404, 503),
    )
    async def activity(
        user_id: UserId, limit: Annotated[int, Param(ge=1, le=MAX_PER_PAGE)] = 20
    ) -> Response:
        row = await db.run(queries.USER_ACTIVITY, {"id": user_id, "limit": limit})
        if not row or row[0] is None:
            raise _not_found(user_id)
        return _json(row[0].encode())


def _catalogue_routes(app: FastAPI, rt: Runtime, deps: list[params.Depends]) -> None:
    tags = BUSINESS

    @app.get(
        "/api/plans",
        tags=tags,
        dependencies=deps,
        summary="The plan catalogue",
        responses=_errors(503),
    )
    async def plans() -> Response:
        body = await _cached(rt, PLANS_KEY, "long", queries.PLANS, None, (PLANS_TAG,))
        assert body is not None
        return _json(body)

    @app.get(
        "/api/admin/stats",
        tags=tags,
        dependencies=deps,
        summary="Aggregates over users, subscriptions, tokens, activity (admin)",
        responses=_errors(503),
    )
    async def admin_stats() -> Response:
        body = await _cached(rt, ADMIN_STATS_KEY, "medium", queries.ADMIN_STATS, None, (ADMIN_TAG,))
        assert body is not None
        return _json(body)


def _update_route(app: FastAPI, rt: Runtime, deps: list[params.Depends]) -> None:
    db, tags = rt.db, BUSINESS

    @app.patch(
        "/api/users/{user_id}",
        tags=tags,
        dependencies=deps,
        summary="Change name, email or status (status: admin); invalidates the user's cache",
        responses=_errors(404, 409, 503),
    )
    async def update_user(request: Request, user_id: UserId, update: UserUpdate) -> Response:
        if update.status is not None:
            caller = principal_of(request.scope)
            if caller is None or not caller.admin:
                raise forbidden("changing a user's status needs the admin scope", ADMIN)
        fields = sorted(update.model_fields_set)
        params = {
            "id": user_id,
            "name": update.name,
            "email": update.email,
            "status": update.status,
            "details": json.dumps({"fields": fields}),
        }
        try:
            row = await db.run(queries.UPDATE_USER, params)
        except psycopg.errors.UniqueViolation:
            raise HTTPException(409, f"email {update.email} belongs to another user") from None
        if not row:
            raise _not_found(user_id)
        await rt.cache.invalidate((user_tag(user_id), USERS_LIST_TAG, ADMIN_TAG))
        return _json(row[0].encode())


def _operations_routes(app: FastAPI, rt: Runtime) -> None:
    """Admin scope only; never subject to faults (the runbooks use them during incidents and
    drills)."""
    cache = rt.cache
    tags: list[str | Enum] = ["operations"]

    @app.post(
        "/api/admin/cache/flush",
        tags=tags,
        summary='Delete cache keys matching a glob, e.g. {"pattern": "user:*"}',
        responses=_errors(503),
    )
    async def flush(body: FlushRequest) -> JSONResponse:
        try:
            deleted = await cache.flush(body.pattern)
        except Exception as exc:
            if isinstance(exc, ValueError):
                raise
            raise CacheUnavailable(f"Redis failed during the flush: {exc}") from exc
        return JSONResponse({"deleted": deleted, "pattern": body.pattern, "backend": cache.backend})

    @app.post(
        "/api/admin/sentry",
        tags=tags,
        summary="Switch Sentry error reporting on or off at runtime",
    )
    async def sentry(body: SentryRequest) -> JSONResponse:
        rt.sentry.set_enabled(body.enabled)
        return JSONResponse(rt.sentry.state())


def _probe_routes(app: FastAPI, rt: Runtime) -> None:
    settings, db, cache = rt.settings, rt.db, rt.cache
    tags: list[str | Enum] = ["health"]

    @app.get("/api/health", tags=tags, summary="Liveness: answers without touching any dependency")
    async def liveness() -> JSONResponse:
        return JSONResponse({"status": "ok", "version": settings.version, "track": settings.track})

    @app.get(
        "/api/health/advanced",
        tags=tags,
        summary="Readiness: healthy, degraded (200) or unhealthy (503); details: admin scope",
        responses={
            200: {"model": HealthStatus, "description": "Healthy or degraded"},
            503: {"model": HealthStatus, "description": "Unhealthy: the database is unreachable"},
        },
    )
    async def readiness(request: Request) -> JSONResponse:
        status, body = await health.advanced(db, cache, rt.stats, settings.version, settings.track)
        caller = principal_of(request.scope)
        if caller is None or not caller.admin:
            body = {"status": body["status"]}
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", tags=tags, summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        rt.metrics.set_connections("db_pool", db.connections_in_use())
        rt.metrics.set_connections("redis", cache.connections_in_use())
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
