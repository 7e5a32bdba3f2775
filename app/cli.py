"""``python -m app serve | migrate | seed | analyze | token`` (also the container's entrypoint).

Exit status: 0 success, 1 the work failed (one line on stderr saying why), 2 bad usage or a bad
setting (one line naming the variable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

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

    _token_parser(sub)

    analyze = sub.add_parser("analyze", help="database performance report")
    analyze.add_argument("--json", action="store_true")
    analyze.add_argument("--limit", type=_positive, default=10, help="slowest statements to list")
    return p


def _token_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    token = sub.add_parser("token", help="mint API tokens; create and rotate their keys")
    actions = token.add_subparsers(dest="action", required=True, parser_class=_Parser)
    keys_help = "the key set (JWK Set JSON); default $PORTAL_AUTH_KEYS_FILE"

    mint = actions.add_parser("mint", help="print a token signed with the key set's first key")
    who = mint.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--user",
        action="append",
        metavar="ID",
        help="the user the token speaks for; repeat or give a range (1-2000) for several",
    )
    who.add_argument("--service", metavar="NAME", help="an operator or program (sub svc:NAME)")
    mint.add_argument(
        "--scope", action="append", default=[], choices=("admin", "metrics"), help="repeatable"
    )
    mint.add_argument("--ttl", default="1h", help="lifetime: 3600, 30m, 12h, 7d (default 1h)")
    mint.add_argument("--keys-file", type=Path, help=keys_help)
    mint.add_argument(
        "--json", action="store_true", help='print {"tokens": [{"sub", "token"}], "expiresAt"}'
    )

    keygen = actions.add_parser(
        "keygen", help="add a new key first in the set (it signs from now on); create the file"
    )
    keygen.add_argument("--kid", help="the new key's id (default: today's date and 6 hex digits)")
    keygen.add_argument("--keys-file", type=Path, help=keys_help)

    retire = actions.add_parser("retire", help="remove a key: the tokens it signed stop working")
    retire.add_argument("--kid", required=True)
    retire.add_argument("--keys-file", type=Path, help=keys_help)

    actions.add_parser("keys", help="list the key ids (the first signs)").add_argument(
        "--keys-file", type=Path, help=keys_help
    )


def _token(args: argparse.Namespace) -> int:
    from app import auth
    from app import keys as keys_

    path = args.keys_file or (
        Path(os.environ["PORTAL_AUTH_KEYS_FILE"])
        if os.environ.get("PORTAL_AUTH_KEYS_FILE")
        else None
    )
    if path is None:
        return _fail("token: give --keys-file or set PORTAL_AUTH_KEYS_FILE", 2)
    try:
        if args.action == "keygen":
            keys = keys_.KeySet.read(path) if path.exists() else keys_.KeySet(())
            keys = keys.with_new_key(args.kid)
            keys_.write_key_file(path, keys)
            print(keys.signing_kid)
            return 0
        keys = keys_.KeySet.read(path)
        if args.action == "keys":
            print(keys.describe())
            return 0
        if args.action == "retire":
            keys = keys.without(args.kid)
            keys_.write_key_file(path, keys)
            print(keys.describe())
            return 0
        ttl = auth.parse_ttl(args.ttl)
        subjects = (
            [auth.subject_for(user_id=u) for u in auth.parse_user_ids(args.user)]
            if args.user
            else [auth.subject_for(service=args.service)]
        )
    except (keys_.KeyFileError, ValueError) as exc:
        return _fail(f"token {args.action}: {exc}", 2)
    now = int(time.time())
    tokens = [(sub, auth.mint(keys, sub, args.scope, ttl, now=now)) for sub in subjects]
    if args.json:
        doc = {"tokens": [{"sub": s, "token": t} for s, t in tokens], "expiresAt": now + ttl}
        print(json.dumps(doc))
    else:
        print("\n".join(t for _, t in tokens))
    return 0


def _fail(message: str, code: int = 1) -> int:
    print(" ".join(message.split()), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        return _token(args)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        return _fail(str(exc), 2)

    if args.command == "serve":
        from app.keys import KeyFileError
        from app.main import authenticator

        try:
            authenticator(settings)  # the key files, checked before uvicorn starts
        except KeyFileError as exc:
            return _fail(str(exc), 2)
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
