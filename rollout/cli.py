"""``portalctl``: release, roll back, run the local stack (and, through plugins, runbooks).

Exit codes: 0 promoted / done; 1 rolled back or aborted; 2 bad input (one line naming what is
wrong; nothing was changed); 3 held - a human must promote, abort or resume; 4 this portalctl
lost the lease to another one (which acts on the release now) and stopped acting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contract.config import ConfigError, StackConfig, stack_file
from contract.names import ALERT_RUNBOOKS
from rollout.engine import LeaseLost, Outcome, OutcomeStatus, ReleaseEngine, ReleaseError
from rollout.engine.stable import ReleaseInFlight
from rollout.engine.status import LedgerStatus
from rollout.events import Event
from rollout.ledger import LedgerError, Release, ReleaseInProgress, ReleaseStatus
from rollout.local.processes import ServerError
from rollout.ports import ReleaseSpec, Target, TargetError
from rollout.progress import Progress

EXIT_BAD_INPUT = 2
EXIT_HELD = 3
EXIT_LEASE_LOST = 4
IMAGE_RE = re.compile(
    r"^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9._-]+)*"
    r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$|^[^\s@]+@sha256:[0-9a-f]{64}$"
)

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Release the portal service as gated canaries, roll back, run drills.",
)
release_app = typer.Typer(no_args_is_help=True, help="Canary releases.")
local_app = typer.Typer(no_args_is_help=True, help="The local stack on this machine.")
app.add_typer(release_app, name="release")
app.add_typer(local_app, name="local")

StackOpt = Annotated[str | None, typer.Option("--stack", "-s", help="Stack: staging, prod...")]
LocalOpt = Annotated[bool, typer.Option("--local", help="Drive the local stack instead.")]
ProjectOpt = Annotated[Path, typer.Option("--project-dir", help="Where Pulumi.<stack>.yaml live.")]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
DirOpt = Annotated[Path | None, typer.Option("--dir", help="Local stack directory (--local).")]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    err.print(f"portalctl: {message}", markup=False)
    raise typer.Exit(code)


def _open(
    stack: str | None,
    local: bool,
    project_dir: Path,
    context: str | None = None,
    local_dir: Path | None = None,
) -> tuple[StackConfig, Target]:
    from rollout.targets import open_target

    if stack and local:
        fail("--stack and --local are exclusive")
    try:
        return open_target(stack, local, project_dir, context, local_dir)
    except ConfigError as exc:
        fail(f"invalid stack config: {exc}")
    except (TargetError, ServerError) as exc:
        fail(str(exc))


def reports_dir(stack: str | None, project_dir: Path, local_dir: Path | None) -> Path:
    """Where a release's HTML report is written at its end: ``<local dir>/reports`` for the local
    stack, ``<project>/.portal/reports/<stack>`` for a cluster's."""
    if stack is None:
        from rollout.local.stack import LOCAL_DIR

        return (local_dir if local_dir is not None else project_dir / LOCAL_DIR) / "reports"
    return project_dir / ".portal" / "reports" / stack


def _engine(
    cfg: StackConfig,
    target: Target,
    stack: str | None,
    local: bool,
    project_dir: Path,
    show: Callable[[Event], None] | None = None,
    local_dir: Path | None = None,
) -> ReleaseEngine:
    stackfile = None if local or not stack else stack_file(stack, project_dir)
    reports = reports_dir(None if local else stack, project_dir, local_dir)

    def report(release: Release) -> str:
        from rollout.report import file_reporter  # matplotlib: imported when a release ends

        return file_reporter(reports)(release)

    return ReleaseEngine(cfg, target, events=show, stackfile=stackfile, reporter=report)


def _user() -> str:
    return os.environ.get("PORTALCTL_USER") or os.environ.get("USER") or "operator"


_SHOWN = {
    OutcomeStatus.PROMOTED: "[bold green]PROMOTED[/bold green]",
    OutcomeStatus.HELD: "[bold yellow]HELD[/bold yellow]",
    OutcomeStatus.ABORTED: "[bold red]ROLLED BACK[/bold red]",
    OutcomeStatus.ROLLED_BACK: "[bold green]ROLLED BACK[/bold green]",
}


def _finish(outcome: Outcome, engine: ReleaseEngine | None = None) -> NoReturn:
    console.print(f"{_SHOWN[outcome.status]} {outcome.release_id}: {escape(outcome.reason)}")
    release = engine.ledger.find(outcome.release_id) if engine is not None else None
    if release is not None and release.report:
        console.print(f"report: {release.report}", markup=False)
    if outcome.incident is not None and outcome.incident.runbook:
        console.print(
            f"incident recorded; follow: portalctl runbook run {outcome.incident.runbook}"
        )
    raise typer.Exit(outcome.exit_code)


def _in_flight(engine: ReleaseEngine | None) -> str | None:
    """The id of the release left unfinished, when the ledger can say."""
    if engine is None:
        return None
    try:
        release = engine.ledger.read().active()
    except Exception:  # the ledger itself may be what failed: then there is nothing to add
        return None
    return release.id if release is not None else None


def _guard(fn: Callable[[], Outcome | None], engine: ReleaseEngine | None = None) -> Outcome | None:
    try:
        return fn()
    except LeaseLost as exc:
        fail(str(exc), EXIT_LEASE_LOST)
    except ReleaseInProgress as exc:
        fail(str(exc))
    except TargetError as exc:
        # the cluster refused or failed an operation mid-release (a missing RBAC verb, a
        # timeout): the transition stays in the ledger as intent, to be redone by resume
        release = _in_flight(engine)
        if release is None:
            fail(str(exc))
        fail(
            f"{exc} - release {release} is still in flight: fix that, then "
            "`portalctl release resume` (or `abort`)",
            EXIT_HELD,
        )
    except (ReleaseError, LedgerError, ServerError, ConfigError) as exc:
        fail(str(exc))


# ------------------------------------------------------------------------------ release


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.match(r"^[A-Z_][A-Z0-9_]*$", key):
            fail(f"--env {pair!r}: expected NAME=value with an upper-case NAME")
        env[key] = value
    return env


@release_app.command("start")
def release_start(
    stack: StackOpt = None,
    local: LocalOpt = False,
    image: Annotated[str | None, typer.Option(help="Image with its tag (cluster).")] = None,
    version: Annotated[str | None, typer.Option(help="Version label (default: the tag).")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="NAME=value for every instance of this version on the local stack "
            "(drills: the app's fault switch).",
        ),
    ] = None,
    silence: Annotated[
        list[str] | None,
        typer.Option(
            "--silence",
            help="An alert to silence for the stack while the release runs (repeat it; "
            "replaces portal:alerts.silence).",
        ),
    ] = None,
    no_silence: Annotated[
        bool, typer.Option("--no-silence", help="Silence nothing (not even portal:alerts.silence).")
    ] = False,
    project_dir: ProjectOpt = Path("."),
    context: ContextOpt = None,
    local_dir: DirOpt = None,
) -> None:
    """Release a new version through the stack's canary steps; exit 0 promoted, 1 rolled back."""
    if silence and no_silence:
        fail("--silence and --no-silence are exclusive")
    for name in silence or []:
        if name not in ALERT_RUNBOOKS:
            known = ", ".join(ALERT_RUNBOOKS)
            fail(f"--silence {name!r}: not an alert of the stack (known: {known})")
    if local:
        if not version:
            fail("--local needs --version V")
        if image:
            fail("--image is for clusters; the local stack runs this checkout with --version")
    else:
        if not image:
            fail("--image IMAGE:TAG is required (or --local --version V)")
        if not IMAGE_RE.match(image):
            fail(f"--image {image!r} is not an image reference with a tag (repo/name:tag)")
        version = version or image.rsplit(":", 1)[-1]
        if env:
            fail("--env is for local drills (the fault switch); a cluster release runs the image")
    extra = parse_env(env or [])
    cfg, target = _open(stack, local, project_dir, context, local_dir)
    engine = _engine(cfg, target, stack, local, project_dir, Progress(console), local_dir)
    try:
        engine.ledger.read()  # a malformed ledger is refused before anything is written
    except (LedgerError, TargetError) as exc:
        fail(str(exc))
    if local:
        from rollout.local.stack import LOCAL_DIR, LocalStack

        root = local_dir if local_dir is not None else project_dir / LOCAL_DIR
        LocalStack(root).set_version_env(str(version), extra)
    muted = () if no_silence else silence or None
    outcome = _guard(
        lambda: engine.start(ReleaseSpec("", str(version), image), silence=muted), engine
    )
    assert outcome is not None
    _finish(outcome, engine)


@release_app.command("resume")
def release_resume(
    stack: StackOpt = None,
    local: LocalOpt = False,
    project_dir: ProjectOpt = Path("."),
    context: ContextOpt = None,
    local_dir: DirOpt = None,
) -> None:
    """Continue the release in flight from the step it was on (after a crash or a hold)."""
    cfg, target = _open(stack, local, project_dir, context, local_dir)
    engine = _engine(cfg, target, stack, local, project_dir, Progress(console), local_dir)
    outcome = _guard(engine.resume, engine)
    assert outcome is not None
    _finish(outcome, engine)


def _request(
    action: str,
    stack: str | None,
    local: bool,
    project_dir: Path,
    context: str | None,
    local_dir: Path | None,
) -> None:
    cfg, target = _open(stack, local, project_dir, context, local_dir)
    engine = _engine(cfg, target, stack, local, project_dir, Progress(console), local_dir)
    outcome = _guard(lambda: engine.request(action, _user()), engine)
    if outcome is None:
        console.print(
            f"{action} recorded; the running portalctl acts on it within {cfg.canary.interval_s:g}s"
        )
        raise typer.Exit(0)
    _finish(outcome, engine)


@release_app.command("promote")
def release_promote(
    stack: StackOpt = None,
    local: LocalOpt = False,
    project_dir: ProjectOpt = Path("."),
    context: ContextOpt = None,
    local_dir: DirOpt = None,
) -> None:
    """Promote the release in flight now (skips the remaining steps; approves a pause)."""
    _request("promote", stack, local, project_dir, context, local_dir)


@release_app.command("abort")
def release_abort(
    stack: StackOpt = None,
    local: LocalOpt = False,
    project_dir: ProjectOpt = Path("."),
    context: ContextOpt = None,
    local_dir: DirOpt = None,
) -> None:
    """Roll the release in flight back now."""
    _request("abort", stack, local, project_dir, context, local_dir)


@release_app.command("status")
def release_status(
    stack: StackOpt = None,
    local: LocalOpt = False,
    project_dir: ProjectOpt = Path("."),
    context: ContextOpt = None,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="History rows.")] = 10,
    local_dir: DirOpt = None,
) -> None:
    """The release in flight and the history."""
    cfg, target = _open(stack, local, project_dir, context, local_dir)
    engine = _engine(cfg, target, stack, local, project_dir)
    try:
        status = engine.status()
    except (LedgerError, TargetError, ServerError) as exc:
        fail(str(exc))
    if as_json:
        print(status.model_dump_json(indent=1, by_alias=True))
        return
    _show_status(cfg.stack, target.name, status)
    table = Table("release", "version", "status", "started", "ended", "reason")
    for r in list(reversed(status.releases))[:limit]:
        table.add_row(
            r.id,
            r.version,
            r.status,
            _when(r.created_at),
            _when(r.ended_at),
            (r.reason or "")[:80],
        )
    console.print(table)


def _show_status(stack: str, target: str, status: LedgerStatus) -> None:
    """The ledger's view, what the target runs, and anything an interruption left open."""
    stable = status.stable.version if status.stable else "?"
    line = f"[bold]{escape(stack)}[/bold] on {escape(target)}: stable {escape(stable)}"
    running = status.running
    if running is not None and running.stable_version != stable:
        line += f" [yellow](the target runs {escape(running.stable_version)})[/yellow]"
    console.print(line)
    if status.running_error:
        console.print(f"[yellow]the target did not answer: {escape(status.running_error)}[/yellow]")
    active = status.active
    if active is not None:
        holder = status.lease.holder if status.lease and status.lease_live else None
        weight = f"{active.weight}%"
        if running is not None and running.weight != active.weight:
            weight += f" ({running.weight}% on the target)"
        console.print(
            f"in flight: {escape(active.id)} {active.status} at step "
            f"{active.step + 1}/{len(active.steps)}, weight {weight}, driven by "
            f"{escape(holder or 'nobody (resume it)')}"
        )
        if active.reason and active.status is not ReleaseStatus.PROGRESSING:
            console.print(f"  reason: {escape(active.reason)}")
    if status.pending is not None:
        console.print(f"[yellow]unfinished: {escape(status.pending.detail)}[/yellow]")
    for t in status.takeovers[-3:]:
        console.print(
            f"lease taken over {_when(t.at)} by {escape(t.holder)} ({t.action}) from "
            f"{escape(t.previous)}, expired {_when(t.expired_at)}"
        )


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@release_app.command("contract")
def release_contract(
    stack: StackOpt = None,
    local: LocalOpt = False,
    project_dir: ProjectOpt = Path("."),
    context: ContextOpt = None,
    local_dir: DirOpt = None,
) -> None:
    """Run the contract (backward-incompatible) migrations once every instance runs stable."""
    cfg, target = _open(stack, local, project_dir, context, local_dir)
    engine = _engine(cfg, target, stack, local, project_dir)
    try:
        applied = engine.contract(_user())
    except LeaseLost as exc:
        fail(str(exc), EXIT_LEASE_LOST)
    except (ReleaseInProgress, ReleaseInFlight, LedgerError) as exc:
        fail(str(exc))
    except (ReleaseError, TargetError) as exc:
        fail(str(exc), 1)
    console.print("contract migrations applied: " + (", ".join(applied) or "none pending"))


# ------------------------------------------------------------------------------ rollback


@app.command("rollback")
def rollback(
    stack: StackOpt = None,
    local: LocalOpt = False,
    to: Annotated[str | None, typer.Option(help="Release id or version to return to.")] = None,
    force: Annotated[bool, typer.Option(help="Even after a contract migration.")] = False,
    project_dir: ProjectOpt = Path("."),
    context: ContextOpt = None,
    local_dir: DirOpt = None,
) -> None:
    """Return stable to the last known-good release (or --to one)."""
    cfg, target = _open(stack, local, project_dir, context, local_dir)
    engine = _engine(cfg, target, stack, local, project_dir, Progress(console))
    outcome = _guard(lambda: engine.rollback(to, force))
    assert outcome is not None
    _finish(outcome)


# ------------------------------------------------------------------------------ local


LocalDirOpt = Annotated[Path, typer.Option("--dir", help="Where the local stack lives.")]


@local_app.command("up")
def local_up(root: LocalDirOpt = Path(".portal/local")) -> None:
    """Start Postgres, Redis, the app, nginx, Prometheus and exporters on loopback."""
    from rollout.local.stack import LocalStack
    from rollout.local.state import StateFileError

    try:
        state = LocalStack(root).up(lambda m: console.print(f"• {m}"))
    except StateFileError as exc:
        fail(str(exc))
    except ServerError as exc:
        fail(str(exc), 1)
    console.print(f"API: {state['nginx_url']}/api/users   Prometheus: {state['prometheus_url']}")


@local_app.command("down")
def local_down(root: LocalDirOpt = Path(".portal/local")) -> None:
    """Stop everything the local stack started."""
    from rollout.local.stack import LocalStack

    LocalStack(root).down(lambda m: console.print(f"• {m}"))


@local_app.command("drill")
def local_drill(
    root: LocalDirOpt = Path(".portal/local"),
    keep: Annotated[bool, typer.Option(help="Leave the stack running.")] = True,
) -> None:
    """Release a good v2, a failing v3 and a slow v4; write a report for each."""
    from rollout.local.drill import run_drill

    try:
        result = run_drill(root, console=console)
    except ServerError as exc:
        fail(str(exc), 1)
    if not keep:
        from rollout.local.stack import LocalStack

        LocalStack(root).down(lambda m: None)
    raise typer.Exit(0 if result.ok else 1)


# ------------------------------------------------------------------------------ plugins


def _load_plugins() -> None:
    for ep in entry_points(group="portal.cli"):
        try:
            sub = ep.load()
        except Exception as exc:  # a broken plugin must not break portalctl
            err.print(f"portalctl: plugin {ep.name!r} did not load: {exc}", markup=False)
            continue
        app.add_typer(sub, name=ep.name)


def main() -> None:
    _load_plugins()
    app(prog_name="portalctl")


if __name__ == "__main__":  # pragma: no cover
    main()
