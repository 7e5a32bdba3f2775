"""What one request is and has done so far: queries run, cache hits. Read by the response
headers, the request statistics and tracing."""

from __future__ import annotations

from contextvars import ContextVar, Token

from starlette.types import Scope


class RequestContext:
    """Made for every request by ``app.serving``, so it costs one small object: no ``__init__``
    runs (every field starts as the class's default until set), the per-statement counts (N+1
    detection) are made by the first query, and a cache hit makes none."""

    scope: Scope | None = None
    """The request's ASGI scope (its method and path, for the logs)."""
    status = 0
    """The response's status once it has begun (0 before)."""
    query_count = 0
    cache_hit = False
    statements: dict[str, int] | None = None
    """How often each named statement ran in this request (N+1 detection)."""
    n_plus_one_reported: set[str] | None = None

    @property
    def method(self) -> str:
        return self.scope["method"] if self.scope is not None else ""

    @property
    def path(self) -> str:
        return self.scope["path"] if self.scope is not None else ""

    def ran(self, statement: str) -> int:
        """Count one run of ``statement``; how many times it has run in this request."""
        self.query_count += 1
        counts = self.statements
        if counts is None:
            counts = self.statements = {}
        seen = counts[statement] = counts.get(statement, 0) + 1
        return seen

    def first_report(self, statement: str) -> bool:
        """True the first time ``statement`` is reported as N+1 in this request."""
        reported = self.n_plus_one_reported
        if reported is None:
            reported = self.n_plus_one_reported = set()
        if statement in reported:
            return False
        reported.add(statement)
        return True


def is_probe(path: str) -> bool:
    """Health probes and metric scrapes: not counted in the request statistics, not traced."""
    return path.startswith("/api/health") or path == "/metrics"


CURRENT: ContextVar[RequestContext | None] = ContextVar("portal_request", default=None)
"""The request being served (set and reset by ``ServiceApp.__call__``, on its hot path)."""


def current() -> RequestContext | None:
    return CURRENT.get()


def begin(method: str, path: str) -> tuple[RequestContext, Token[RequestContext | None]]:
    """A request context of its own (for work outside a served request, and tests)."""
    ctx = RequestContext()
    ctx.scope = {"type": "http", "method": method, "path": path}
    return ctx, CURRENT.set(ctx)


def end(token: Token[RequestContext | None]) -> None:
    CURRENT.reset(token)
