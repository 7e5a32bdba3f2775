"""What one request is and has done so far: queries run, cache hits. Read by the response
headers, the request statistics and tracing."""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestContext:
    method: str = ""
    path: str = ""
    query_count: int = 0
    cache_hit: bool = False
    statements: dict[str, int] = field(default_factory=dict)
    """How often each named statement ran in this request (N+1 detection)."""
    n_plus_one_reported: set[str] = field(default_factory=set)


def is_probe(path: str) -> bool:
    """Health probes and metric scrapes: not counted in the request statistics, not traced."""
    return path.startswith("/api/health") or path == "/metrics"


_current: ContextVar[RequestContext | None] = ContextVar("portal_request", default=None)


def current() -> RequestContext | None:
    return _current.get()


def begin(method: str, path: str) -> tuple[RequestContext, Token[RequestContext | None]]:
    ctx = RequestContext(method=method, path=path)
    return ctx, _current.set(ctx)


def end(token: Token[RequestContext | None]) -> None:
    _current.reset(token)
