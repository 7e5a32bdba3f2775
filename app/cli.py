"""``python -m app serve | migrate | seed | analyze`` (also the container's entrypoint).

Exit status: 0 success, 1 the work failed (one line on stderr saying why), 2 bad usage or a bad
setting (one line naming the variable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from app.settings import Settings, SettingsError


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not the usage block: operators read it in Job logs.
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m app", description="The member portal service.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the HTTP service (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes (each with its own metrics; prefer 1 per pod)",
    )

    migrate = sub.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("--phase", choices=("expand", "contract", "all"), default="expand")
    migrate.add_argument("--status", action="store_true", help="list migrations; apply nothing")
    migrate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    migrate.add_argument(
        "--lock-timeout",
        type=_positive,
        default=300,
        metavar="SECONDS",
        help="how long to wait for another runner (default 300)",
    )

    seed = sub.add_parser("seed", help="fill the database with realistic data")
    seed.add_argument("--users", type=_positive, default=10_000)
    seed.add_argument("--seed", type=int, default=42)

    analyze = sub.add_parser("analyze", help="database performance report")
    analyze.add_argument("--json", action="store_true")
    analyze.add_argument("--limit", type=_positive, default=10, help="slowest statements to list")
    return p


def _fail(message: str, code: int = 1) -> int:
    print(" ".join(message.split()), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        return _fail(str(exc), 2)

    if args.command == "serve":
        return _serve(settings, args.host, args.port, max(1, args.workers))

    from app.migrate import MigrationError
    from app.seed import SeedError

    try:
        if args.command == "migrate":
            return _migrate(settings, args)
        if args.command == "seed":
            from app.seed import Seeder

            Seeder(settings.database_url).run(args.users, args.seed)
            return 0
        if args.command == "analyze":
            from app import analyze

            report = analyze.collect(settings.database_url, args.limit)
            print(
                json.dumps(report, indent=2, default=str) if args.json else analyze.render(report)
            )
            return 0
    except (MigrationError, SeedError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:  # anything unforeseen still ends in one readable line
        return _fail(f"{args.command} failed: {type(exc).__name__}: {exc}")
    return 2


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.migrate import MigrationError, Runner

    runner = Runner(settings.database_url, lock_timeout=args.lock_timeout)
    if args.status:
        rows = runner.status()
        if args.json:
            print(json.dumps({"migrations": rows}))
        else:
            for r in rows:
                when = r["applied_at"] or "pending"
                print(f"{r['id']:<32} {r['phase']:<9} {when}")
        return 0
    try:
        report = runner.run(args.phase)
    except MigrationError as exc:
        if args.json and exc.report is not None:
            # The release engine reads stdout: what was applied before the failure, and why.
            print(json.dumps({**exc.report.to_json(), "error": str(exc)}))
        raise
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(
            f"{args.phase}: applied {len(report.applied)}, already applied "
            f"{len(report.skipped)}, repaired {len(report.repaired)}"
        )
    return 0


def _serve(settings: Settings, host: str, port: int, workers: int) -> int:
    import uvicorn

    from app.main import configure_logging

    configure_logging(settings.log_level)
    uvicorn.run(
        "app.main:app",
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return 0
