"""Settings come from the environment; a bad one stops the process with one line naming it."""

from __future__ import annotations

import pytest

from app.settings import Settings, SettingsError
from tests.app.conftest import run_cli

DB = "postgresql://portal@127.0.0.1:5432/portal"


def test_only_the_database_url_is_needed_and_the_defaults_match_the_contract():
    s = Settings.from_env({"PORTAL_DATABASE_URL": DB})
    assert (s.version, s.track, s.redis_url) == ("dev", "stable", None)
    assert (s.cache_ttl_short, s.cache_ttl_medium, s.cache_ttl_long) == (60, 300, 3600)
    assert (s.slow_query_ms, s.slow_request_ms, s.db_pool_size) == (200, 1000, 10)
    assert not s.faults.active, "the fault switch must be off by default"
    assert s.sentry_dsn is None and s.otel_endpoint is None
    assert s.auth_enabled and s.auth_keys_file is None and s.metrics_token_file is None
    assert not s.api_docs, "the API docs are off unless asked for"
    assert s.response_headers, "every response carries the X- headers unless told otherwise"
    assert (s.db_statement_timeout_ms, s.db_lock_timeout_ms) == (5000, 1000)
    assert s.otel_service_name == "portal"
    assert s.trace_sample_ratio == 1.0, "every request is traced unless told otherwise"
    assert (s.trace_batch_size, s.trace_batch_delay_ms) == (64, 200), "small, frequent exports"


def test_an_empty_value_counts_as_unset():
    s = Settings.from_env(
        {
            "PORTAL_DATABASE_URL": DB,
            "PORTAL_REDIS_URL": "",
            "PORTAL_FAULT_ERROR_RATE": " ",
            "SENTRY_DSN": "",
        }
    )
    assert s.redis_url is None and s.sentry_dsn is None and s.faults.error_rate == 0


def test_latency_fault_delays_every_request_unless_a_rate_is_given():
    s = Settings.from_env({"PORTAL_DATABASE_URL": DB, "PORTAL_FAULT_LATENCY_MS": "300"})
    assert (s.faults.latency_ms, s.faults.latency_rate) == (300, 1.0)
    s = Settings.from_env(
        {
            "PORTAL_DATABASE_URL": DB,
            "PORTAL_FAULT_LATENCY_MS": "300",
            "PORTAL_FAULT_LATENCY_RATE": "0.25",
        }
    )
    assert s.faults.latency_rate == 0.25 and s.faults.active


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PORTAL_FAULT_ERROR_RATE", "abc", "'abc' is not a number between 0 and 1"),
        ("PORTAL_FAULT_ERROR_RATE", "1.5", "'1.5' is not a number between 0 and 1"),
        ("PORTAL_FAULT_LATENCY_RATE", "nan", "is not a number between 0 and 1"),
        ("PORTAL_FAULT_LATENCY_MS", "-5", "is not a whole number"),
        ("PORTAL_FAULT_DB_SLEEP_MS", "1s", "is not a whole number"),
        ("PORTAL_TRACK", "blue", "'blue' is not one of stable, canary"),
        ("PORTAL_VERSION", "1.0 beta", "is not a label"),
        ("PORTAL_CACHE_TTL_SHORT", "0", "is not a whole number between 1"),
        ("PORTAL_CACHE_TTL_MEDIUM", "five", "is not a whole number"),
        ("PORTAL_CACHE_TTL_LONG", "-1", "is not a whole number"),
        ("PORTAL_SLOW_QUERY_MS", "fast", "is not a whole number"),
        ("PORTAL_SLOW_REQUEST_MS", "0", "is not a whole number"),
        ("PORTAL_DB_POOL_SIZE", "0", "is not a whole number between 1 and 200"),
        ("PORTAL_REDIS_URL", "http://127.0.0.1:6379", "is not a URL like redis://"),
        ("PORTAL_REDIS_URL", "redis://:pw@127.0.0.1:notaport/0", "is not a URL like redis://"),
        ("PORTAL_DATABASE_URL", "mysql://db/portal", "is not a URL like postgresql://"),
        ("PORTAL_ADMIN_TOKEN", "long-enough-token", "take a token with the admin scope"),
        ("PORTAL_AUTH", "no", "'no' is not one of on, off"),
        ("PORTAL_AUTH_KEYS_FILE", "/nonexistent/keys.json", "/nonexistent/keys.json: no such file"),
        ("PORTAL_METRICS_TOKEN_FILE", "/nonexistent/t", "/nonexistent/t: no such file"),
        ("PORTAL_API_DOCS", "yes", "'yes' is not one of on, off"),
        ("PORTAL_RESPONSE_HEADERS", "false", "'false' is not one of on, off"),
        ("PORTAL_DB_STATEMENT_TIMEOUT_MS", "5s", "is not a whole number between 0 and 3600000"),
        ("PORTAL_DB_LOCK_TIMEOUT_MS", "-1", "is not a whole number between 0 and 3600000"),
        ("PORTAL_REDIS_URL_FILE", "/nonexistent/url", "/nonexistent/url: cannot be read"),
        ("SENTRY_DSN", "not a url", "is not a URL like https://"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "is not a URL like http://"),
        ("PORTAL_TRACE_SAMPLE_RATIO", "all", "'all' is not a number between 0 and 1"),
        ("PORTAL_TRACE_SAMPLE_RATIO", "1.5", "'1.5' is not a number between 0 and 1"),
        ("PORTAL_TRACE_SAMPLE_RATIO", "-0.1", "'-0.1' is not a number between 0 and 1"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0", "is not a whole number between 1 and 2048"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096", "is not a whole number between 1 and 2048"),
        ("OTEL_BSP_SCHEDULE_DELAY", "5s", "is not a whole number between 1 and 60000"),
        ("OTEL_TRACES_SAMPLER", "always_off", "set PORTAL_TRACE_SAMPLE_RATIO (0 to 1) instead"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1", "set PORTAL_TRACE_SAMPLE_RATIO (0 to 1) instead"),
    ],
)
def test_a_bad_setting_is_named_with_its_value_and_what_is_allowed(variable, value, expected):
    env = {"PORTAL_DATABASE_URL": DB, variable: value}
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert err.value.variable == variable
    assert str(err.value).startswith(f"{variable}: ")
    assert expected in str(err.value)


def test_a_password_in_a_bad_url_is_not_echoed():
    with pytest.raises(SettingsError) as err:
        Settings.from_env(
            {"PORTAL_DATABASE_URL": DB, "PORTAL_REDIS_URL": "http://:hunter2secret@redis:6379/0"}
        )
    assert "hunter2secret" not in str(err.value)


def test_the_database_url_is_required():
    with pytest.raises(SettingsError, match=r"^PORTAL_DATABASE_URL: not set"):
        Settings.from_env({})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORTAL_DATABASE_URL": DB, "PORTAL_FAULT_ERROR_RATE": "abc"}, "PORTAL_FAULT_ERROR_RATE"),
        ({"PORTAL_DATABASE_URL": DB, "PORTAL_TRACK": "green"}, "PORTAL_TRACK"),
        ({}, "PORTAL_DATABASE_URL"),
    ],
)
def test_serve_with_a_bad_setting_exits_2_with_one_line_naming_it(env, variable):
    result = run_cli("serve", "--port", "1", env=env, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert lines[0].startswith(f"{variable}: ")


def test_migrate_with_a_bad_setting_exits_2_too():
    result = run_cli("migrate", env={"PORTAL_DATABASE_URL": DB, "PORTAL_DB_POOL_SIZE": "lots"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "PORTAL_DB_POOL_SIZE: 'lots' is not a whole number between 1 and 200"
    )


def test_a_bad_command_line_is_one_line_too():
    result = run_cli("serve", "--port", "http", env={"PORTAL_DATABASE_URL": DB})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--port" in result.stderr


def test_a_secret_can_be_a_file_but_not_both_a_file_and_a_value(tmp_path):
    dsn = tmp_path / "dsn"
    dsn.write_text(DB + "\n")
    redis_url = tmp_path / "redis"
    redis_url.write_text("redis://:pw@127.0.0.1:6379/0")
    s = Settings.from_env(
        {"PORTAL_DATABASE_URL_FILE": str(dsn), "PORTAL_REDIS_URL_FILE": str(redis_url)}
    )
    assert (s.database_url, s.redis_url) == (DB, "redis://:pw@127.0.0.1:6379/0")
    with pytest.raises(SettingsError, match=r"^PORTAL_DATABASE_URL_FILE: set PORTAL_DATABASE_URL"):
        Settings.from_env({"PORTAL_DATABASE_URL_FILE": str(dsn), "PORTAL_DATABASE_URL": DB})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        Settings.from_env({"PORTAL_DATABASE_URL_FILE": str(tmp_path / "empty")})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "PORTAL_AUTH_KEYS_FILE: not set"),
        ("not json", "not JSON"),
        ('{"keys": []}', "with at least one key"),
        ('{"keys": [{"kty": "RSA", "kid": "a", "k": "x"}]}', 'kty must be "oct"'),
        ('{"keys": [{"kty": "oct", "kid": "a b", "k": "' + "A" * 43 + '"}]}', "kid must be"),
        ('{"keys": [{"kty": "oct", "kid": "a", "k": "c2hvcnQ"}]}', "at least 32 bytes"),
    ],
)
def test_serve_without_a_usable_key_set_exits_2_naming_the_file(tmp_path, content, expected):
    env = {"PORTAL_DATABASE_URL": DB}
    if content is not None:
        keys = tmp_path / "keys.json"
        keys.write_text(content)
        env["PORTAL_AUTH_KEYS_FILE"] = str(keys)
    result = run_cli("serve", "--port", "1", env=env, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    if content is not None:
        assert lines[0].startswith(str(tmp_path / "keys.json"))
