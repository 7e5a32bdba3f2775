"""Every alert has its runbook and every runbook its alert; the Markdown is current; the CLI
refuses bad input with one line. No servers needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract.alerts import RUNBOOKS, alerts
from runbooks.definitions import runbooks
from runbooks.model import Query
from runbooks.render import PROJECT_DIR, RUNBOOK_DIR, render_all, stack_configs, stale

PORTALCTL = [sys.executable, "-c", "from rollout.cli import main; main()"]
CONFIGS = stack_configs()


def portalctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PORTALCTL, "runbook", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_DIR,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.mark.parametrize("stack", sorted(CONFIGS))
def test_every_alert_has_a_runbook_and_every_runbook_an_alert(stack):
    cfg = CONFIGS[stack]
    by_alert = {a.name: a.slug for a in alerts(cfg)}
    by_runbook = {rb.alert: rb.slug for rb in runbooks(cfg)}
    assert by_runbook == by_alert, "runbooks and alert rules disagree on alert -> slug"
    assert set(by_alert) == set(RUNBOOKS)


@pytest.mark.parametrize("stack", sorted(CONFIGS))
def test_runbook_thresholds_are_the_ones_the_alert_rules_use(stack):
    cfg = CONFIGS[stack]
    exprs = {a.slug: a.expr for a in alerts(cfg)}
    book = {rb.slug: rb for rb in runbooks(cfg)}
    first = {
        slug: next(s for s in rb.diagnosis if isinstance(s, Query))
        for slug, rb in book.items()
        if slug not in ("release-aborted",)
    }
    assert first["high-error-rate"].threshold == cfg.slo.max_error_rate
    assert first["high-latency"].threshold == cfg.slo.max_p95_ms / 1000
    assert first["slow-queries"].threshold == cfg.alerts.slow_query_ms / 1000
    assert first["low-cache-hit-rate"].threshold == cfg.alerts.cache_hit_rate_min
    assert first["postgres-connections"].threshold == cfg.alerts.pg_connections_max_ratio
    assert first["redis-memory"].threshold == cfg.alerts.redis_memory_max_ratio
    for slug in (
        "high-error-rate",
        "high-latency",
        "slow-queries",
        "low-cache-hit-rate",
        "postgres-connections",
        "redis-memory",
    ):
        shown = format(first[slug].threshold, ".10g")
        assert exprs[slug].endswith(shown), f"{slug}: alert {exprs[slug]!r} vs runbook {shown}"


def test_committed_markdown_is_current_with_the_definitions():
    assert stale() == [], "run `python -m runbooks.render` and commit runbooks/*.md"
    files = render_all()
    assert set(files) == {f"{s}.md" for s in RUNBOOKS.values()} | {"README.md"}
    check = subprocess.run(
        [sys.executable, "-m", "runbooks.render", "--check"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_render_check_exits_1_when_a_file_is_stale(tmp_path: Path):
    for name, text in render_all().items():
        (tmp_path / name).write_text(text)
    assert stale(tmp_path) == []
    (tmp_path / "redis-down.md").write_text("# edited by hand\n")
    (tmp_path / "orphan.md").write_text("# no definition\n")
    assert stale(tmp_path) == ["redis-down.md", "orphan.md"]


def test_each_runbook_page_has_every_section_and_the_three_templates():
    files = render_all()
    for slug in RUNBOOKS.values():
        text = files[f"{slug}.md"]
        for heading in (
            "## What it means",
            "## Impact",
            "## Diagnosis",
            "## Remediation",
            "## Escalation",
            "## Communication",
            "### Initial",
            "### Update",
            "### Resolved",
        ):
            assert heading in text, f"{slug}.md lacks {heading}"
        assert "viewPanel=" in text, f"{slug}.md has no dashboard panel link"
    assert (RUNBOOK_DIR / "README.md").read_text().count("](") == len(RUNBOOKS)


def test_list_names_every_runbook_and_show_prints_one():
    listed = portalctl("list")
    assert listed.returncode == 0, listed.stderr
    for slug in RUNBOOKS.values():
        assert slug in listed.stdout
    shown = portalctl("show", "PortalHighErrorRate")
    assert shown.returncode == 0, shown.stderr
    assert "High error rate" in shown.stdout and "Escalation" in shown.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("run", "no-such-runbook", "--local"), "unknown runbook 'no-such-runbook'"),
        (("run", "redis-down", "--stack", "staging", "--local"), "exclusive"),
        (("run", "redis-down"), "--stack STACK, or --local"),
        (("run", "redis-down", "--dir", "/nonexistent/x"), "no local stack in /nonexistent/x"),
        (("run", "redis-down", "--local", "--window", "5 minutes"), "--window '5 minutes'"),
        (("run", "redis-memory", "--local", "--pattern", "a b"), "--pattern 'a b'"),
        (("show", "nope"), "unknown runbook 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_it(args, named):
    res = portalctl(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert named in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
