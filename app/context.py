"""What one request is and has done so far: queries run, cache hits. Read by the response
headers, the request statistics and tracing."""

from __future__ import annotations

from contextvars import ContextVar, Token


class RequestContext:
    """Made for every request by the middleware, so it costs one small object: the per-statement
    counts (N+1 detection) are made by the first query, and a cache hit makes none."""

    __slots__ = ("cache_hit", "method", "n_plus_one_reported", "path", "query_count", "statements")

    def __init__(self, method: str = "", path: str = "") -> None:
        self.method = method
        self.path = path
        self.query_count = 0
        self.cache_hit = False
        self.statements: dict[str, int] | None = None
        """How often each named statement ran in this request (N+1 detection)."""
        self.n_plus_one_reported: set[str] | None = None

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
"""The request being served (set and reset by the middleware itself, on its hot path)."""


def current() -> RequestContext | None:
    return CURRENT.get()


def begin(method: str, path: str) -> tuple[RequestContext, Token[RequestContext | None]]:
    ctx = RequestContext(method, path)
    return ctx, CURRENT.set(ctx)


def end(token: Token[RequestContext | None]) -> None:
    CURRENT.reset(token)
