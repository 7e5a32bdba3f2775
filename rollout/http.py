"""What a request needs to get through to a server of the stack: on a cluster the API server's
service proxy (the kubeconfig's token and CA), locally nothing."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


def _no_headers() -> Mapping[str, str]:
    return {}


@dataclass(frozen=True)
class HttpAuth:
    """What a request needs to get through (the API server's proxy: a token, its CA).
    ``headers`` is asked at every request, so a refreshed token is the one sent."""

    headers: Callable[[], Mapping[str, str]] = field(default=_no_headers)
    ssl_context: ssl.SSLContext | None = None
