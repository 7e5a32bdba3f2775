"""Who may call what: bearer tokens, a member's own record, the admin scope, key rotation, the
scraper's token, and the answers (401 / 403) a caller gets otherwise."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from app import auth
from app.keys import KeySet, write_key_file
from tests.app.conftest import (
    ADMIN,
    KEYS,
    bearer,
    run_cli,
    running_app,
    settings_for,
    sql_one,
    token,
)

pytestmark = pytest.mark.anyio

OWN_ROUTES = ("/api/users/{id}", "/api/users/{id}/dashboard", "/api/users/{id}/activity")


def assert_error(r, status: int, error: str) -> Any:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail", "requestId"} and body["error"] == error, body
    assert body["requestId"] == r.headers["x-request-id"]
    if status in (401, 403):
        assert r.headers["www-authenticate"].startswith('Bearer realm="portal"')
    return body


async def test_a_member_reads_their_own_record_and_nobody_elses(portal_dsn):
    member = bearer(token(7))
    async with running_app(settings_for(portal_dsn), headers=member) as client:
        for route in OWN_ROUTES:
            own = await client.get(route.format(id=7))
            assert own.status_code == 200, (route, own.text)
            other = await client.get(route.format(id=8))
            body = assert_error(other, 403, "forbidden")
            assert "user 7" in body["detail"] and "own record" in body["detail"]
            assert 'error="insufficient_scope"' in other.headers["www-authenticate"]
            missing = await client.get(route.format(id=999_999))
            assert missing.status_code == 403, "a member learns nothing about other ids"
            admin = await client.get(route.format(id=8), headers=ADMIN)
            assert admin.status_code == 200, "the admin scope reads any record"
        assert (await client.get("/api/plans")).status_code == 200, "any member sees the plans"
        for path in ("/api/users", "/api/admin/stats"):
            assert_error(await client.get(path), 403, "forbidden")
            assert (await client.get(path, headers=ADMIN)).status_code == 200


async def test_a_member_changes_their_own_name_and_email_but_not_their_status(portal_dsn):
    member = bearer(token(9))
    async with running_app(settings_for(portal_dsn), headers=member) as client:
        ok = await client.patch("/api/users/9", json={"name": "Grace Hopper"})
        assert ok.status_code == 200 and ok.json()["name"] == "Grace Hopper"
        status = await client.patch("/api/users/9", json={"status": "active", "name": "G H"})
        body = assert_error(status, 403, "forbidden")
        assert "status" in body["detail"] and "admin" in body["detail"]
        other = await client.patch("/api/users/10", json={"name": "Not Mine"})
        assert_error(other, 403, "forbidden")
        admin = await client.patch("/api/users/9", json={"status": "suspended"}, headers=ADMIN)
        assert admin.status_code == 200 and admin.json()["status"] == "suspended"
    assert sql_one(portal_dsn, "SELECT name FROM users WHERE id = 9") == "Grace Hopper"
    assert sql_one(portal_dsn, "SELECT name FROM users WHERE id = 10") != "Not Mine"


async def test_without_a_token_only_the_health_probes_answer(portal_dsn):
    async with running_app(settings_for(portal_dsn), headers=None) as client:
        for method, path in (
            ("GET", "/api/users/1"),
            ("GET", "/api/users/1/dashboard"),
            ("GET", "/api/users/1/activity"),
            ("GET", "/api/users"),
            ("GET", "/api/plans"),
            ("GET", "/api/admin/stats"),
            ("PATCH", "/api/users/1"),
            ("POST", "/api/admin/cache/flush"),
            ("POST", "/api/admin/sentry"),
            ("GET", "/metrics"),
        ):
            r = await client.request(method, path, json={"name": "x"})
            body = assert_error(r, 401, "unauthorized")
            assert "Authorization: Bearer" in body["detail"], (path, body)
            assert r.headers["www-authenticate"] == 'Bearer realm="portal"'
        assert (await client.get("/api/health")).status_code == 200
        health = await client.get("/api/health/advanced")
        assert health.status_code == 200 and health.json() == {"status": "healthy"}
        # authentication comes before the input is read: no 422 or 413 for a stranger
        bad = await client.patch(
            "/api/users/1", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_error(bad, 401, "unauthorized")
        big = await client.patch("/api/users/1", content=b"x" * 100_000)
        assert_error(big, 401, "unauthorized")
        # unknown routes and methods stay 404 / 405 for anyone
        assert_error(await client.get("/api/nothing"), 404, "not found")
        assert_error(await client.delete("/api/users/1"), 405, "method not allowed")
        metrics = (await client.get("/metrics", headers=ADMIN)).text
    assert (
        'http_requests_total{method="GET",route="/api/users/{user_id}/dashboard",status="401"'
    ) in metrics, "refused requests are counted under their route"


def _forge(claims: dict, key: bytes = KEYS.keys[0][1], **header: str) -> str:
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": KEYS.signing_kid, **header})


def _claims(**changes: object) -> dict:
    now = int(time.time())
    claims = {"iss": "portal", "aud": "portal", "sub": "3", "iat": now, "exp": now + 600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _none_alg() -> str:
    def part(doc: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'kid': KEYS.signing_kid})}.{part(_claims(scope='admin'))}."


BAD_TOKENS = [
    pytest.param(lambda: token(3, ttl=1, keys=KEYS)[:-3] + "abc", "signature", id="tampered"),
    pytest.param(
        lambda: auth.mint(KEYS, "3", (), 60, now=time.time() - 3600), "expired", id="expired"
    ),
    pytest.param(lambda: token(3, keys=KeySet(()).with_new_key("other")), "kid", id="other-key"),
    pytest.param(
        lambda: _forge(_claims(), key=b"k" * 32), "signature", id="right-kid-wrong-secret"
    ),
    pytest.param(_none_alg, "invalid", id="alg-none"),
    pytest.param(lambda: _forge(_claims(exp=None)), "exp", id="no-exp"),
    pytest.param(lambda: _forge(_claims(aud="elsewhere")), "invalid", id="other-audience"),
    pytest.param(lambda: _forge(_claims(iss="elsewhere")), "invalid", id="other-issuer"),
    pytest.param(lambda: _forge(_claims(sub="root")), "sub", id="bad-subject"),
    pytest.param(lambda: _forge(_claims(sub="0")), "sub", id="user-zero"),
    pytest.param(lambda: _forge(_claims(scope=["admin"])), "scope", id="scope-not-a-string"),
    pytest.param(lambda: "not.a.jwt", "not a JWT", id="garbage"),
    pytest.param(lambda: "x" * 5000, "longer than", id="huge"),
]


@pytest.mark.parametrize(("make", "reason"), BAD_TOKENS)
async def test_a_bad_token_is_a_401_that_says_why(portal_dsn, make, reason):
    async with running_app(settings_for(portal_dsn), headers=bearer(make())) as client:
        r = await client.get("/api/users/3")
        health = await client.get("/api/health/advanced")
    body = assert_error(r, 401, "unauthorized")
    assert reason in body["detail"], body
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert health.status_code == 401, "a bad token is refused even where none is needed"


async def test_basic_credentials_are_refused(portal_dsn):
    async with running_app(settings_for(portal_dsn), headers={"Authorization": "Basic YTpi"}) as c:
        body = assert_error(await c.get("/api/plans"), 401, "unauthorized")
    assert "only bearer tokens" in body["detail"]


async def test_health_details_are_for_the_admin_scope_only(portal_dsn, redis_url):
    async with running_app(settings_for(portal_dsn, redis_url), headers=None) as client:
        anonymous = (await client.get("/api/health/advanced")).json()
        member = (await client.get("/api/health/advanced", headers=bearer(token(2)))).json()
        admin = (await client.get("/api/health/advanced", headers=ADMIN)).json()
    assert anonymous == member == {"status": "healthy"}
    assert set(admin) >= {"status", "checks", "metrics", "version", "track"}


async def test_metrics_take_the_scrape_token_or_the_metrics_scope(portal_dsn, tmp_path):
    scrape = tmp_path / "scrape-token"
    scrape.write_text("s" * 40 + "\n")
    settings = settings_for(portal_dsn, PORTAL_METRICS_TOKEN_FILE=str(scrape))
    async with running_app(settings, headers=None) as client:
        assert (await client.get("/metrics", headers=bearer("s" * 40))).status_code == 200
        scoped = bearer(token(service="prometheus", scopes=("metrics",)))
        assert (await client.get("/metrics", headers=scoped)).status_code == 200
        assert (await client.get("/metrics", headers=ADMIN)).status_code == 200
        assert_error(
            await client.get("/metrics", headers=bearer("s" * 39 + "t")), 401, "unauthorized"
        )
        assert_error(await client.get("/metrics", headers=bearer(token(1))), 403, "forbidden")
        assert_error(await client.get("/api/plans", headers=bearer("s" * 40)), 401, "unauthorized")
        assert_error(await client.get("/api/admin/stats", headers=scoped), 403, "forbidden")


async def test_keys_rotate_without_a_restart(portal_dsn, tmp_path):
    keys_file = tmp_path / "keys.json"
    old = KeySet(()).with_new_key("old")
    write_key_file(keys_file, old)
    settings = settings_for(portal_dsn, PORTAL_AUTH_KEYS_FILE=str(keys_file))
    old_token = bearer(auth.mint(old, "4", (), 600))
    async with running_app(settings, headers=None) as client:
        authenticator = client.app.state.runtime.auth  # type: ignore[attr-defined]
        assert (await client.get("/api/users/4", headers=old_token)).status_code == 200
        both = old.with_new_key("new")
        write_key_file(keys_file, both)
        assert authenticator.reload_if_changed()
        new_token = bearer(auth.mint(both, "4", (), 600))
        assert jwt.get_unverified_header(new_token["Authorization"][7:])["kid"] == "new"
        for headers in (old_token, new_token):
            assert (await client.get("/api/users/4", headers=headers)).status_code == 200
        write_key_file(keys_file, both.without("old"))
        assert authenticator.reload_if_changed()
        gone = await client.get("/api/users/4", headers=old_token)
        assert_error(gone, 401, "unauthorized")
        assert (await client.get("/api/users/4", headers=new_token)).status_code == 200
        keys_file.write_text("{broken")
        assert not authenticator.reload_if_changed(), "a broken file keeps the keys in use"
        assert (await client.get("/api/users/4", headers=new_token)).status_code == 200


async def test_docs_are_off_unless_asked_for(portal_dsn):
    async with running_app(settings_for(portal_dsn)) as client:
        for path in ("/docs", "/openapi.json", "/api/docs", "/api/openapi.json"):
            assert (await client.get(path)).status_code == 404, path
    async with running_app(settings_for(portal_dsn, PORTAL_API_DOCS="on"), headers=None) as c:
        assert (await c.get("/docs")).status_code == 200
        doc = (await c.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    dashboard = doc["paths"]["/api/users/{user_id}/dashboard"]["get"]
    assert set(dashboard["responses"]) == {"200", "401", "403", "404", "422", "500", "503"}
    assert dashboard["security"] == [{"bearerAuth": []}]
    patch = doc["paths"]["/api/users/{user_id}"]["patch"]
    assert {"409", "413", "422"} <= set(patch["responses"])
    assert doc["paths"]["/api/health"]["get"]["security"] == []
    assert "/metrics" not in doc["paths"]


async def test_authentication_off_lets_anyone_in_for_benchmarks_only(portal_dsn, caplog):
    settings = settings_for(portal_dsn, PORTAL_AUTH="off")
    with caplog.at_level("WARNING"):
        async with running_app(settings, headers=None) as client:
            assert (await client.get("/api/admin/stats")).status_code == 200
            assert (await client.get("/api/users/5/dashboard")).status_code == 200
    assert any("PORTAL_AUTH=off (benchmarks only)" in m for m in caplog.messages)


def test_token_cli_creates_rotates_and_mints(tmp_path: Path, portal_dsn):
    keys_file = tmp_path / "keys.json"
    env = {"PORTAL_AUTH_KEYS_FILE": str(keys_file)}
    first = run_cli("token", "keygen", "--kid", "k1", env=env)
    assert first.returncode == 0 and first.stdout.strip() == "k1", first.stderr
    assert keys_file.stat().st_mode & 0o077 == 0, "the key file is its owner's only"
    assert run_cli("token", "keygen", "--kid", "k2", env=env).stdout.strip() == "k2"
    assert run_cli("token", "keys", env=env).stdout.strip() == "k2 (signs), k1"
    minted = run_cli(
        "token", "mint", "--service", "ops", "--scope", "admin", "--ttl", "5m", env=env
    )
    assert minted.returncode == 0, minted.stderr
    value = minted.stdout.strip()
    claims = jwt.decode(value, options={"verify_signature": False})
    assert claims["sub"] == "svc:ops" and claims["scope"] == "admin"
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(value)["kid"] == "k2"
    keys = KeySet.read(keys_file)
    authenticator = auth.Authenticator(keys_file)
    authenticator.load()
    assert authenticator.verify(value.encode()).admin and keys.signing_kid == "k2"
    many = run_cli("token", "mint", "--user", "1-3", "--user", "7", "--json", env=env)
    doc = json.loads(many.stdout)
    assert [t["sub"] for t in doc["tokens"]] == ["1", "2", "3", "7"]
    assert authenticator.verify(doc["tokens"][3]["token"].encode()).user_id == 7
    assert run_cli("token", "retire", "--kid", "k1", env=env).stdout.strip() == "k2 (signs)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("mint", "--user", "0"), "ids 1 to 2^63-1"),
        (("mint", "--user", "abc"), "is not a user id or a range"),
        (("mint", "--service", "Bad Name"), "service name"),
        (("mint", "--user", "1", "--ttl", "400d"), "must be 1 s to 366 days"),
        (("mint", "--user", "1", "--ttl", "soon"), "is not a duration"),
        (("retire", "--kid", "k1"), "is the only key"),
        (("retire", "--kid", "nope"), "is not in the key set"),
        (("keygen", "--kid", "k1"), "already in the key set"),
        (("keygen", "--kid", "a b"), "must be 1-64 of"),
    ],
)
def test_token_cli_refuses_bad_input_with_one_line(tmp_path: Path, args, expected):
    keys_file = tmp_path / "keys.json"
    write_key_file(keys_file, KeySet(()).with_new_key("k1"))
    before = keys_file.read_text()
    result = run_cli("token", *args, env={"PORTAL_AUTH_KEYS_FILE": str(keys_file)})
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert keys_file.read_text() == before, "a refused command changes nothing"


def test_token_cli_without_a_key_file_says_so():
    result = run_cli("token", "mint", "--user", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == "token: give --keys-file or set PORTAL_AUTH_KEYS_FILE"
