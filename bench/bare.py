"""The bare comparison endpoint: FastAPI on uvicorn answering a constant JSON body.

Same framework, server, event loop and HTTP parser as the portal service, none of its work
(no database, cache, middleware or metrics): the ceiling the service is measured against.
Run by ``python -m bench service`` as ``uvicorn bench.bare:app``.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Response

_BODY = json.dumps(
    {
        "user": {
            "id": 1,
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "role": "member",
            "status": "active",
        },
        "profile": {"timezone": "UTC", "locale": "en"},
        "subscriptions": [],
        "apiTokens": [],
    }
).encode()

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/api/health")
async def health() -> Response:
    return Response(b'{"status": "ok"}', media_type="application/json")


@app.get("/api/users/{user_id}/dashboard")
async def dashboard(user_id: int) -> Response:
    return Response(_BODY, media_type="application/json")
