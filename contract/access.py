"""Who may do what in the data stores: the Postgres roles (``postgres_roles.sql``, run by psql
as the superuser) and the Redis ACL users, one definition for the cluster (the roles Job, the
Redis Secret), the local stack and the tests.

Where the roles are made: a Job of the Postgres component (``postgres-roles``) runs the script
after Postgres is ready and before the migration Job, whenever the script or a password changes.
The script converges (creates what is missing, resets passwords, hands an existing database's
objects to the migrator, grants what is due), so it works on a new database and on one that
predates the roles. Migrations then run as ``portal_migrator`` and never need the superuser;
``portalctl``'s migration Jobs neither.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from contract.names import (
    PG_APP,
    PG_MIGRATOR,
    PG_READONLY,
    REDIS_APP_USER,
    REDIS_EXPORTER_USER,
)

ROLES_SQL = (Path(__file__).with_name("postgres_roles.sql")).read_text()
"""The psql script; ``psql -v secrets=DIR -f postgres_roles.sql`` with the passwords in DIR."""

PASSWORD_FILES: Mapping[str, str] = {
    PG_MIGRATOR: "migrator-password",
    PG_APP: "app-password",
    PG_READONLY: "readonly-password",
}
"""Role -> the file (and Secret key) holding its password."""

ROLES_SCRIPT_FILE = "roles.sql"


def psql_command(script: str, secrets_dir: str) -> list[str]:
    """The psql invocation that applies the roles script (connection from ``PG*`` variables)."""
    return ["psql", "--no-psqlrc", "--quiet", "-v", f"secrets={secrets_dir}", "-f", script]


# ------------------------------------------------------------------------------- Redis

APP_KEY_PATTERNS = ("user:*", "users:*", "plans:*", "admin:*", "tag:*")
"""The service's cache keys (``app/cache.py``): dashboards, user lists, the plans, the admin
statistics, tag tokens."""
APP_COMMANDS = ("ping", "get", "mget", "set", "del", "unlink", "scan")
"""What the cache runs: reads, writes with a TTL, pattern flushes (SCAN + UNLINK)."""
EXPORTER_COMMANDS = (
    "ping",
    "info",
    "config|get",
    "client|list",
    "client|setname",
    "slowlog|get",
    "slowlog|len",
    "latency|latest",
    "memory|stats",
    "select",
    "dbsize",
    "cluster|info",
)
"""What redis_exporter reads (server metadata, never a key's value) and the probes' PING."""


def sha256_hex(password: str) -> str:
    """The SHA-256 of ``password`` in hex, as Redis's ACL file keeps it."""
    return hashlib.sha256(password.encode()).hexdigest()


FINGERPRINT_DIGITS = 16


def fingerprint(value: str) -> str:
    """The first 16 hex digits of the SHA-256 of ``value``: it changes with the value and tells
    nothing usable about a generated password."""
    return sha256_hex(value)[:FINGERPRINT_DIGITS]


def checksum(*values: str) -> str:
    """What a pod template's ``checksum/...`` annotation holds so the pod is replaced when one of
    ``values`` changes: their fingerprints, one by one (so that ``make manifests`` can show the
    fingerprint of a password's placeholder in place of the password's)."""
    return ".".join(fingerprint(v) for v in values)


def redis_acl(app_password: str, exporter_password: str) -> str:
    """The ACL file: no default user; the app's keys and commands; the exporter's reads.
    Passwords are stored as SHA-256 hashes (``#...``), as Redis keeps them."""
    app = " ".join(
        [
            f"user {REDIS_APP_USER} on #{sha256_hex(app_password)} resetchannels",
            *(f"~{p}" for p in APP_KEY_PATTERNS),
            "-@all",
            *(f"+{c}" for c in APP_COMMANDS),
        ]
    )
    exporter = " ".join(
        [
            f"user {REDIS_EXPORTER_USER} on #{sha256_hex(exporter_password)}",
            "resetchannels resetkeys",
            "-@all",
            *(f"+{c}" for c in EXPORTER_COMMANDS),
        ]
    )
    return f"user default off resetchannels resetkeys -@all\n{app}\n{exporter}\n"


REDIS_ACL_FILE = "users.acl"
REDIS_APP_PASSWORD_KEY = "app-password"  # noqa: S105 - a key name
REDIS_EXPORTER_PASSWORD_KEY = "exporter-password"  # noqa: S105 - a key name
REDIS_EXPORTER_PASSWORD_FILE = "exporter-password-file.json"  # noqa: S105 - a key name
"""redis_exporter's ``--redis.password-file``: a JSON map of address to password."""
