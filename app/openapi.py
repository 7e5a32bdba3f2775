"""The OpenAPI document, made to tell the truth about every route.

FastAPI documents what the route functions declare. What the gate adds (its 401, 403 and 413),
the security each route asks for, and the error body every 4xx and 5xx carries (not FastAPI's
validation-error model) are added here from the same rules the gate enforces, so the document
cannot drift from them. The API is fuzzed from this document (``tests/app/test_fuzz.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.auth import Access
from app.errors import REASONS, ErrorBody
from app.gate import GuardedRoute

BEARER = "bearerAuth"
ERROR_SCHEMA = "ErrorBody"
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}

DESCRIPTION = """The member portal's API.

Every route but the health probes takes `Authorization: Bearer <token>`: a JWT minted with
`python -m app token mint`. A member's token (`sub` = their user id) reads and changes that
user's own record; the `admin` scope may use every route. Every error answers
`{"error", "detail", "requestId"}` with an `X-Request-Id` header."""

_AUTH_ERRORS: dict[Access, tuple[int, ...]] = {
    Access.PUBLIC: (),
    Access.OPTIONAL: (401,),
    Access.MEMBER: (401,),
    Access.OWN_RECORD: (401, 403),
    Access.ADMIN: (401, 403),
    Access.METRICS: (401, 403),
}

_NOTES = {
    401: "No token, or one that is malformed, expired or not signed by this service's keys",
    403: "The token is valid but does not allow this (another user's record, no admin scope)",
    413: "The body is larger than the route accepts (also when sent chunked)",
    422: "The input does not match this document",
    500: "An unexpected failure (logged with the request id)",
}


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the corrected document (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=DESCRIPTION,
                routes=app.routes,
            )
            document(schema, app.routes)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(schema: dict[str, Any], routes: list[Any]) -> None:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = ErrorBody.model_json_schema()
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "python -m app token mint (see app/README.md)",
        }
    }
    for route in routes:
        if not isinstance(route, GuardedRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = schema["paths"][route.path_format].get(method.lower())
            if operation is not None:
                _document_operation(operation, route)


def _document_operation(operation: dict[str, Any], route: GuardedRoute) -> None:
    access = route.access
    if access is Access.PUBLIC:
        operation["security"] = []
    elif access is Access.OPTIONAL:
        operation["security"] = [{}, {BEARER: []}]
    else:
        operation["security"] = [{BEARER: []}]
    responses: dict[str, Any] = operation.setdefault("responses", {})
    extra = [*_AUTH_ERRORS[access], 500]
    if route.max_body is not None:
        extra.append(413)
    for status in extra:
        responses.setdefault(str(status), {})
    for key, response in responses.items():
        status = int(key)
        if status < 400 or _own_body(response):
            continue
        response["description"] = (
            _NOTES.get(status) or response.get("description") or (REASONS.get(status, "error"))
        )
        response["content"] = {"application/json": {"schema": _ERROR_REF}}
        headers = {"X-Request-Id": {"required": True, "schema": {"type": "string"}}}
        if status in (401, 403):
            headers["WWW-Authenticate"] = {"required": True, "schema": {"type": "string"}}
        response["headers"] = headers
    operation["responses"] = dict(sorted(responses.items()))


def _own_body(response: dict[str, Any]) -> bool:
    """A response the route documents with a model of its own (readiness's 503), not an error."""
    declared = response.get("content", {}).get("application/json", {}).get("schema", {})
    ref = declared.get("$ref")
    return ref is not None and ref != _ERROR_REF["$ref"]
