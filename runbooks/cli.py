"""``portalctl runbook list | show NAME | run NAME``: the runbooks at the on-call's fingertips.

Registered as a ``portalctl`` plugin (entry point group ``portal.cli``, name ``runbook``).
Exit codes of ``run``: 0 it ran, 1 a finding is critical, 2 bad input (one line naming it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import click
import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from contract.config import ConfigError, StackConfig
from rollout.local.processes import ServerError
from rollout.ports import Target, TargetError
from runbooks.definitions import runbooks
from runbooks.model import Runbook, action_name
from runbooks.render import render_all
from runbooks.runner import Runner

EXIT_BAD_INPUT = 2

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Runbooks: one per alert; diagnose, then remediate with confirmation.",
)

StackOpt = Annotated[str | None, typer.Option("--stack", "-s", help="Stack: staging, prod...")]
LocalOpt = Annotated[bool, typer.Option("--local", help="Run against the local stack.")]
DirOpt = Annotated[
    Path | None, typer.Option("--dir", help="Local stack directory (implies --local).")
]
ProjectOpt = Annotated[Path, typer.Option("--project-dir", help="Where Pulumi.<stack>.yaml live.")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context.")]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err.print(f"portalctl runbook: {message}", markup=False)
    raise typer.Exit(code)


def _reference() -> list[Runbook]:
    from rollout.local.stack import local_config

    return runbooks(local_config())


def find(name: str, book: list[Runbook]) -> Runbook:
    """A runbook by slug or by alert name (``high-error-rate`` or ``PortalHighErrorRate``)."""
    for rb in book:
        if name in (rb.slug, rb.alert):
            return rb
    fail(f"unknown runbook {name!r}; one of: {', '.join(rb.slug for rb in book)}")


@app.command("list")
def list_() -> None:
    """Every runbook and the alert it answers."""
    table = Table("Runbook", "Alert", "Severity", "Title")
    for rb in _reference():
        table.add_row(rb.slug, rb.alert, rb.severity, rb.title)
    console.print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Runbook slug or alert name.")]) -> None:
    """The runbook as people read it (thresholds of every stack)."""
    rb = find(name, _reference())
    console.print(Markdown(render_all()[f"{rb.slug}.md"]))


def _open(
    stack: str | None,
    local: bool,
    local_dir: Path | None,
    project_dir: Path,
    context: str | None,
) -> tuple[StackConfig, Target]:
    from rollout.targets import open_target

    if local_dir is not None:
        local = True
    if stack and local:
        fail("--stack and --local (or --dir) are exclusive")
    if not stack and not local:
        fail("say where: --stack STACK, or --local [--dir DIR]")
    try:
        return open_target(stack, local, project_dir, context, local_dir)
    except ConfigError as exc:
        fail(f"invalid stack config: {exc}")
    except (TargetError, ServerError, OSError) as exc:
        fail(str(exc))
    except Exception as exc:  # a kubeconfig or API client error: one line, not a traceback
        fail(f"cannot reach the {stack} cluster: {type(exc).__name__}: {exc}")


def _confirm(question: str) -> bool:
    """Ask on a terminal; with no terminal (a pipe, a cron job) the answer is no."""
    if not sys.stdin.isatty():
        return False
    try:
        return bool(typer.confirm(question, default=False))
    except (click.Abort, EOFError, KeyboardInterrupt):
        return False
    except Exception as exc:  # typer's own Abort and friends: an interrupted prompt is a no
        if type(exc).__name__ == "Abort":
            return False
        raise


@app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="Runbook slug or alert name.")],
    stack: StackOpt = None,
    local: LocalOpt = False,
    local_dir: DirOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Run the actions without asking.")] = (
        False
    ),
    release: Annotated[
        str | None, typer.Option("--release", help="Release whose incident records the actions.")
    ] = None,
    window: Annotated[
        str | None,
        typer.Option("--window", help="PromQL rate window (default 5m; 30s on the local stack)."),
    ] = None,
    pattern: Annotated[
        str | None, typer.Option("--pattern", help="Cache key glob for a flush action.")
    ] = None,
    action: Annotated[
        list[str] | None,
        typer.Option(
            "--action",
            help="Run only this action (repeat for more): rollback, "
            "scale, flush_cache, disable_sentry.",
        ),
    ] = None,
    project_dir: ProjectOpt = Path("."),
    context: ContextOpt = None,
) -> None:
    """Diagnose, then (with --yes or after a prompt) remediate; ends with a summary."""
    import re

    if window is not None and not re.fullmatch(r"[1-9][0-9]*(s|m|h)", window):
        fail(f"--window {window!r}: expected a PromQL duration like 30s or 5m")
    if pattern is not None and not re.fullmatch(r"[A-Za-z0-9:_\-*?]{1,200}", pattern):
        fail(f'--pattern {pattern!r}: expected a key glob like "user:*"')
    ref = find(name, _reference())
    slug = ref.slug
    offered = {action_name(a) for a in ref.actions}
    for chosen in action or []:
        if chosen not in offered:
            fail(
                f"--action {chosen!r}: {slug} offers "
                + (", ".join(sorted(offered)) if offered else "no actions")
            )
    cfg, target = _open(stack, local, local_dir, project_dir, context)
    rb = find(slug, runbooks(cfg))
    if release is not None:
        from rollout.ledger import Ledger

        if Ledger(target.ledger).find(release) is None:
            fail(f"--release {release!r}: no such release in the ledger")
    user = os.environ.get("PORTALCTL_USER") or os.environ.get("USER") or "operator"
    runner = Runner(
        cfg,
        target,
        console=console,
        confirm=(lambda _q: True) if yes else _confirm,
        window=window,
        by=user,
        release_id=release,
        flush_pattern=pattern,
        only=frozenset(action) if action else None,
    )
    try:
        result = runner.run(rb)
    except Exception as exc:  # the run could not go on: one line, never a traceback
        err.print(
            f"portalctl runbook: {rb.slug} stopped: {type(exc).__name__}: {exc}", markup=False
        )
        raise typer.Exit(1) from exc
    raise typer.Exit(result.exit_code)
