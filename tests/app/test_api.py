"""The HTTP API against real Postgres and Redis: answers, caching, and bad input."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from app import context
from app.db import Database
from app.metrics import Metrics
from app.queries import USER
from tests.app.conftest import SEED_USERS, running_app, settings_for, sql_one

pytestmark = pytest.mark.anyio


def user_row(dsn: str, user_id: int) -> tuple[Any, ...]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT id, email, name, status, updated_at FROM users WHERE id = %s", (user_id,)
        ).fetchone()
        assert row is not None
        return tuple(row)


async def test_dashboard_is_one_query_then_served_from_the_cache(portal_dsn, redis_url):
    async with running_app(settings_for(portal_dsn, redis_url)) as client:
        first = await client.get("/api/users/3/dashboard")
        assert first.status_code == 200
        assert first.headers["x-query-count"] == "1", (
            "user, profile, subscriptions and tokens must come from one round trip"
        )
        assert first.headers["x-cache-hit"] == "false"
        assert float(first.headers["x-response-time-ms"]) > 0
        second = await client.get("/api/users/3/dashboard")
        assert second.headers["x-cache-hit"] == "true"
        assert second.headers["x-query-count"] == "0"
        assert second.json() == first.json()
    body = first.json()
    assert set(body) == {"user", "profile", "subscriptions", "apiTokens"}
    assert body["user"]["id"] == 3 and body["profile"] is not None


async def test_dashboard_lists_only_active_subscriptions_and_unexpired_tokens(portal_dsn):
    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM subscriptions WHERE user_id = 5")
        conn.execute("DELETE FROM api_tokens WHERE user_id = 5")
        now = "now()"
        for status in ("active", "past_due", "canceled", "expired", "trialing"):
            conn.execute(
                "INSERT INTO subscriptions (user_id, plan_code, status,"
                " current_period_start, current_period_end)"
                f" VALUES (5, 'pro', %s, {now}, {now} + interval '30 days')",
                (status,),
            )
        for name, expires, revoked in (
            ("live", "1 day", False),
            ("old", "-1 day", False),
            ("revoked", "1 day", True),
        ):
            conn.execute(
                "INSERT INTO api_tokens (user_id, name, token_prefix, token_hash,"
                " expires_at, revoked_at) VALUES (5, %s, 'pt_x', %s,"
                " now() + %s::interval, CASE WHEN %s THEN now() END)",
                (name, f"hash-{name}", expires, revoked),
            )
    async with running_app(settings_for(portal_dsn)) as client:
        body = (await client.get("/api/users/5/dashboard")).json()
    assert sorted(s["status"] for s in body["subscriptions"]) == ["active", "past_due"]
    assert [t["name"] for t in body["apiTokens"]] == ["live"]
    assert all("hash" not in str(t) for t in body["apiTokens"]), "token secrets never leave"


async def test_user_list_pages_through_every_user(portal_dsn):
    async with running_app(settings_for(portal_dsn)) as client:
        r = await client.get("/api/users", params={"page": 2, "per_page": 7})
        assert r.status_code == 200
        body = r.json()
        assert [u["id"] for u in body["items"]] == list(range(8, 15))
        assert (body["page"], body["perPage"], body["total"]) == (2, 7, SEED_USERS)
        assert body["pages"] == -(-SEED_USERS // 7)
        last = (await client.get("/api/users", params={"page": 1000, "per_page": 100})).json()
        assert last["items"] == [] and last["total"] == SEED_USERS
        default = (await client.get("/api/users")).json()
        assert (default["page"], default["perPage"], len(default["items"])) == (1, 20, 20)


@pytest.mark.parametrize(
    "query",
    [
        {"per_page": "101"},
        {"per_page": "0"},
        {"page": "0"},
        {"page": "-1"},
        {"page": "100001"},
        {"per_page": "1e3"},
        {"page": "99999999999999999999999"},
        {"page": "1' OR '1'='1"},
        {"per_page": "20; DROP TABLE users"},
    ],
)
async def test_bad_pagination_is_a_422_with_a_json_error(portal_dsn, query):
    async with running_app(settings_for(portal_dsn)) as client:
        r = await client.get("/api/users", params=query)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid request" and body["detail"][0]["loc"][0] == "query"


@pytest.mark.parametrize(
    "path",
    [
        "/api/users/999999/dashboard",
        "/api/users/999999",
        "/api/users/999999/activity",
    ],
)
async def test_an_unknown_user_is_a_404_with_a_json_error(portal_dsn, path):
    async with running_app(settings_for(portal_dsn)) as client:
        r = await client.get(path)
    assert r.status_code == 404
    body = r.json()
    assert body == {
        "error": "not found",
        "detail": "user 999999 does not exist",
        "requestId": r.headers["x-request-id"],
    }


@pytest.mark.parametrize(
    "path",
    [
        "/api/users/abc/dashboard",
        "/api/users/0/dashboard",
        "/api/users/-3",
        "/api/users/1;DROP TABLE users/dashboard".replace(" ", "%20"),
        "/api/users/1%27%20OR%20%271%27=%271/dashboard",
        "/api/users/99999999999999999999999/dashboard",
    ],
)
async def test_a_malformed_user_id_is_a_4xx_with_a_json_error(portal_dsn, path):
    async with running_app(settings_for(portal_dsn)) as client:
        r = await client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    assert "error" in r.json()
    assert sql_one(portal_dsn, "SELECT count(*) FROM users") == SEED_USERS


async def test_update_changes_the_user_and_invalidates_dashboard_list_and_stats(
    portal_dsn, redis_url
):
    async with running_app(settings_for(portal_dsn, redis_url)) as client:
        await client.get("/api/users/4/dashboard")
        listed = (await client.get("/api/users", params={"per_page": 10})).json()
        stats = (await client.get("/api/admin/stats")).json()
        assert (await client.get("/api/users/4/dashboard")).headers["x-cache-hit"] == "true"
        assert (await client.get("/api/admin/stats")).headers["x-cache-hit"] == "true"
        old_status = listed["items"][3]["status"]
        new_status = "suspended" if old_status != "suspended" else "active"

        r = await client.patch(
            "/api/users/4", json={"name": "Zoë O'Neil-Smith", "status": new_status}
        )
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "Zoë O'Neil-Smith" and r.json()["status"] == new_status

        dash = await client.get("/api/users/4/dashboard")
        assert dash.headers["x-cache-hit"] == "false", "the update must invalidate the dashboard"
        assert dash.json()["user"]["name"] == "Zoë O'Neil-Smith"
        listed2 = await client.get("/api/users", params={"per_page": 10})
        assert listed2.headers["x-cache-hit"] == "false"
        assert listed2.json()["items"][3]["name"] == "Zoë O'Neil-Smith"
        stats2 = await client.get("/api/admin/stats")
        assert stats2.headers["x-cache-hit"] == "false", "admin aggregates must be invalidated"
        by_status = stats2.json()["users"]["byStatus"]
        assert by_status[new_status] == stats["users"]["byStatus"].get(new_status, 0) + 1
        other = await client.get("/api/users/5/dashboard")
        other2 = await client.get("/api/users/5/dashboard")
        assert other2.headers["x-cache-hit"] == "true" and other.status_code == 200
    assert (
        sql_one(
            portal_dsn,
            "SELECT details->>'fields' FROM activity_log WHERE user_id = 4"
            " AND action = 'user.updated'",
        )
        == '["name", "status"]'
    )


async def test_update_lowercases_email_and_refuses_one_already_taken(portal_dsn):
    taken = sql_one(portal_dsn, "SELECT email FROM users WHERE id = 1")
    async with running_app(settings_for(portal_dsn)) as client:
        r = await client.patch("/api/users/2", json={"email": "New.Address@Example.COM"})
        assert r.status_code == 200 and r.json()["email"] == "new.address@example.com"
        before = user_row(portal_dsn, 2)
        r = await client.patch("/api/users/2", json={"email": taken.upper()})
    assert r.status_code == 409
    assert r.json()["error"] == "conflict"
    assert user_row(portal_dsn, 2) == before


BAD_BODIES = [
    pytest.param(b"{bad json", "application/json", 422, id="invalid-json"),
    pytest.param(b"", "application/json", 422, id="empty-body"),
    pytest.param(b"[1, 2]", "application/json", 422, id="not-an-object"),
    pytest.param(b"{}", "application/json", 422, id="no-field"),
    pytest.param(b'{"name": 42}', "application/json", 422, id="name-not-a-string"),
    pytest.param(b'{"name": ["a"]}', "application/json", 422, id="name-a-list"),
    pytest.param(b'{"name": null}', "application/json", 422, id="name-null"),
    pytest.param(b'{"name": ""}', "application/json", 422, id="name-empty"),
    pytest.param(b'{"name": "' + b"x" * 201 + b'"}', "application/json", 422, id="name-long"),
    pytest.param(b'{"status": "god"}', "application/json", 422, id="unknown-status"),
    pytest.param(b'{"status": true}', "application/json", 422, id="status-bool"),
    pytest.param(b'{"email": "not-an-email"}', "application/json", 422, id="bad-email"),
    pytest.param(b'{"role": "admin"}', "application/json", 422, id="unknown-field"),
    pytest.param(b'{"name": "Bob", "id": 7}', "application/json", 422, id="extra-field"),
    pytest.param(
        b'{"name": "Robert\'); DROP TABLE users;--"}',
        "application/json",
        422,
        id="sql-injection-name",
    ),
    pytest.param(b"{\"name\": \"x' OR '1'='1\"}", "application/json", 422, id="sql-or-name"),
    pytest.param(
        b'{"email": "a@b.c\'; DELETE FROM users; --"}',
        "application/json",
        422,
        id="sql-injection-email",
    ),
    pytest.param(b'{"status": "active\'--"}', "application/json", 422, id="sql-status"),
    pytest.param(
        b'{"name": "' + b"a" * 20_000 + b'"}', "application/json", 413, id="oversized-body"
    ),
    pytest.param(b"name=Bob", "application/x-www-form-urlencoded", 422, id="form-body"),
]


@pytest.mark.parametrize(("body", "content_type", "status"), BAD_BODIES)
async def test_bad_update_input_is_a_4xx_json_error_and_changes_no_row(
    portal_dsn, body, content_type, status
):
    before = user_row(portal_dsn, 6)
    count = sql_one(portal_dsn, "SELECT count(*) FROM activity_log")
    async with running_app(settings_for(portal_dsn)) as client:
        r = await client.patch("/api/users/6", content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    payload = r.json()
    assert set(payload) == {"error", "detail", "requestId"}
    assert user_row(portal_dsn, 6) == before, "a rejected update must not change the row"
    assert sql_one(portal_dsn, "SELECT count(*) FROM activity_log") == count
    assert sql_one(portal_dsn, "SELECT count(*) FROM users") == SEED_USERS


async def test_update_of_an_unknown_user_is_404_and_inserts_nothing(portal_dsn):
    count = sql_one(portal_dsn, "SELECT count(*) FROM activity_log")
    async with running_app(settings_for(portal_dsn)) as client:
        r = await client.patch("/api/users/424242", json={"name": "Nobody"})
    assert r.status_code == 404 and r.json()["error"] == "not found"
    assert sql_one(portal_dsn, "SELECT count(*) FROM activity_log") == count


async def test_unknown_routes_and_methods_answer_json_errors(portal_dsn):
    async with running_app(settings_for(portal_dsn)) as client:
        missing = await client.get("/api/nothing/here")
        wrong = await client.delete("/api/users/1")
    assert missing.status_code == 404 and missing.json()["error"] == "not found"
    assert wrong.status_code == 405 and wrong.json()["error"] == "method not allowed"


async def test_activity_plans_and_single_user(portal_dsn):
    async with running_app(settings_for(portal_dsn)) as client:
        await client.patch("/api/users/8", json={"name": "Ada Lovelace"})
        activity = (await client.get("/api/users/8/activity", params={"limit": 5})).json()
        assert activity[0]["action"] == "user.updated" and len(activity) <= 5
        plans = (await client.get("/api/plans")).json()
        assert [p["code"] for p in plans][:2] == ["free", "starter"]
        user = (await client.get("/api/users/8")).json()
        assert user["name"] == "Ada Lovelace"


async def test_the_same_statement_repeated_in_one_request_is_reported_as_n_plus_one(
    portal_dsn, caplog
):
    settings = settings_for(portal_dsn)
    db = Database(settings, Metrics("t", "stable"))
    await db.open()
    try:
        ctx, token = context.begin("GET", "/api/example")
        with caplog.at_level(logging.WARNING, logger="app.db"):
            for user_id in range(1, 8):
                await db.run(USER, (user_id,))
        context.end(token)
    finally:
        await db.close()
    assert ctx.query_count == 7
    warnings = [r.getMessage() for r in caplog.records if "N+1" in r.getMessage()]
    assert len(warnings) == 1, "reported once per request and statement"
    assert "statement user ran 5 times" in warnings[0] and "GET /api/example" in warnings[0]


async def test_an_unknown_query_parameter_or_a_body_that_is_not_utf8_is_a_422(portal_dsn):
    async with running_app(settings_for(portal_dsn)) as client:
        typo = await client.get("/api/users", params={"perpage": "50"})
        assert typo.status_code == 422, typo.text
        (problem,) = typo.json()["detail"]
        assert problem["loc"] == ["query", "perpage"] and "page, per_page" in problem["msg"]
        none_taken = await client.get("/api/users/1/dashboard", params={"x": "1"})
        assert none_taken.status_code == 422
        binary = await client.patch(
            "/api/users/1",
            content=b'{"name": "\xff\xfe"}',
            headers={"content-type": "application/json"},
        )
        assert binary.status_code == 422 and binary.json()["error"] == "invalid JSON body"
    assert sql_one(portal_dsn, "SELECT name FROM users WHERE id = 1") != "\xff\xfe"
