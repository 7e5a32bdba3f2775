"""The API fuzzed from its own OpenAPI document (schemathesis), against the real service.

``python -m app serve`` on real Postgres (as a role with nothing but DML on the tables) and real
Redis, with the docs on so the document is read from the service itself. For every operation,
schemathesis generates schema-valid requests (which the service must accept or answer with a
documented status) and schema-violating ones (which it must refuse with a 4xx), bounded in
examples so the run stays short, three times: without a token, as a member, as an admin. Every
answer is checked against the document (status declared, content type, body schema, required
headers) and none may be a 5xx or carry a stack trace.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.app.conftest import ADMIN, ServedApp, bearer, token

EXAMPLES = 25
"""Examples per operation and generation mode: enough to hit every refusal path, and fast."""
MEMBER = 5

CALLERS: dict[str, tuple[dict[str, str], dict[str, int] | None]] = {
    "anonymous": ({}, None),
    # a member's requests go to their own record (else nearly all would be a 403)
    "member": (bearer(token(MEMBER)), {"user_id": MEMBER}),
    "admin": (ADMIN, None),
}


def _fuzz(
    url: str, headers: dict[str, str], path: dict[str, int] | None
) -> tuple[collections.Counter[str], list[str]]:
    """Run every operation in both generation modes; (statuses seen, failures)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.update(base_url=url, headers=headers or None)
    statuses: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11, [op.label for op in operations]

    def checker(label: str, mode: GenerationMode) -> Callable[[Any], None]:
        def check(case: Any) -> None:
            response = case.call()
            statuses[f"{response.status_code}"] += 1
            text = response.text
            if response.status_code >= 500 or "Traceback" in text:
                failures.append(f"{label} ({mode.value}): {response.status_code} {text[:300]}")
                return
            try:
                case.validate_response(response)
            except BaseException as exc:  # schemathesis' failure group
                failures.append(f"{label} ({mode.value}): {exc}"[:1500])

        return check

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            pinned = path if path and "{user_id}" in operation.path else None
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=pinned)
            run: Callable[[], None] = given(case=strategy)(
                settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck),
                    database=None,
                )(checker(operation.label, mode))
            )
            try:
                run()
            except Unsatisfiable:
                # nothing schema-violating to make: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE, operation.label
    return statuses, failures


@pytest.mark.parametrize("caller", list(CALLERS))
def test_the_api_answers_its_own_document_with_no_5xx_and_no_stack_trace(
    caller, serve_app, portal_dsn, dml_role, redis_url
):
    app: ServedApp = serve_app(
        {
            "PORTAL_DATABASE_URL": dml_role,
            "PORTAL_REDIS_URL": redis_url,
            "PORTAL_API_DOCS": "on",
            "PORTAL_LOG_LEVEL": "INFO",
        }
    )
    statuses, failures = _fuzz(app.url, *CALLERS[caller])
    total = sum(statuses.values())
    summary = f"{caller}: {total} cases, statuses {json.dumps(dict(sorted(statuses.items())))}"
    print(summary)
    assert not failures, summary + "\n" + "\n\n".join(failures[:10])
    assert total >= 200, summary
    assert not any(s.startswith("5") for s in statuses), summary
    log = app.log_text()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
    if caller == "anonymous":
        assert set(statuses) <= {"200", "401"}, "a stranger reaches nothing but the probes"
    else:
        assert "200" in statuses and "422" in statuses, summary
