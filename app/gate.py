"""What a request must pass before its route runs: the caller's credentials for the route's
``Access`` (401 / 403), then the body size (413, counted as the body arrives, so a chunked body
without ``Content-Length`` is held to it too).

Both run when the router has matched the route, before FastAPI reads and validates the request:
an unknown path is a 404 and a wrong method a 405 for anyone, a caller without the right token
gets 401 or 403 before any 422 about their input, and metrics and traces carry the route.
A route declares nothing and gets ``Access.ADMIN``: closed unless opened on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from app.auth import PRINCIPAL, Access, Authenticator, Principal


class GuardedRoute(APIRoute):
    """A FastAPI route that checks its caller and limits its body (set by ``guard``)."""

    access: Access = Access.ADMIN
    authenticator: Authenticator | None = None
    max_body: int | None = None

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # 405
            return
        auth = self.authenticator
        if auth is None:
            raise RuntimeError(f"route {self.name}: no access rule installed (app.gate.guard)")
        principal = auth.authorize(self.access, scope)
        if principal is not None:
            scope[PRINCIPAL] = principal
        if scope["query_string"]:
            self._known_query(scope["query_string"])
        if self.max_body is not None:
            receive = _limited(scope, receive, self.max_body)
        await super().handle(scope, receive, send)

    def _known_query(self, raw: bytes) -> None:
        """A query parameter the route does not take is a 422, not silently ignored (a typo such
        as ``perpage=50`` would otherwise pass unnoticed)."""
        known = self._query_names
        if known is None:
            known = self._query_names = frozenset(p.alias for p in self.dependant.query_params)
        unknown = sorted({name for name, _ in parse_qsl(raw.decode("latin-1"), True)} - known)
        if unknown:
            raise RequestValidationError(
                [
                    {
                        "loc": ("query", name),
                        "msg": "this route takes no such query parameter"
                        + (f" (it takes {', '.join(sorted(known))})" if known else ""),
                        "type": "extra_forbidden",
                    }
                    for name in unknown
                ]
            )

    _query_names: frozenset[str] | None = None


def principal_of(scope: Scope) -> Principal | None:
    """The caller a guarded route let in (None: anonymous, on a public route)."""
    principal: Principal | None = scope.get(PRINCIPAL)
    return principal


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the body may be at most {limit} bytes")


def _limited(scope: Scope, receive: Receive, limit: int) -> Receive:
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > limit):
            raise _too_large(limit)
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return receive_limited


def guard(
    routes: Sequence[object],
    authenticator: Authenticator,
    access: dict[str, Access],
    max_body: dict[str, int],
) -> None:
    """Give every guarded route its access rule (by endpoint name) and body limit; a guarded
    route without a rule is a programming error, refused here."""
    for route in routes:
        if not isinstance(route, GuardedRoute):
            continue
        if route.name not in access:
            raise RuntimeError(f"route {route.name} ({route.path}) declares no access rule")
        route.access = access[route.name]
        route.authenticator = authenticator
        route.max_body = max_body.get(route.name)
