"""``python -m app seed``: realistic member-portal data, deterministic for a given seed.

Tops up: with N users already present and ``--users`` M, it adds M - N users (and their
profiles, subscriptions, tokens, activity and rate-limit counters) or, when N >= M, says so and
changes nothing. One top-up is one transaction (nothing half-seeded after a crash) written with
COPY; 10,000 users take a few seconds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from app.migrate import connect

SEED_LOCK_KEY = 0x706F7274616D  # one seeder at a time per database

FIRST_NAMES = (
    "Ada",
    "Alan",
    "Amara",
    "Ana",
    "Aria",
    "Ben",
    "Bruno",
    "Chen",
    "Chloe",
    "Dario",
    "Diego",
    "Elena",
    "Emil",
    "Eva",
    "Farah",
    "Finn",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Isaac",
    "Jana",
    "Jonas",
    "Kai",
    "Kenji",
    "Lara",
    "Leo",
    "Lina",
    "Luca",
    "Maya",
    "Mei",
    "Mila",
    "Nadia",
    "Noah",
    "Nora",
    "Omar",
    "Oskar",
    "Priya",
    "Rafael",
    "Rosa",
    "Sami",
    "Sara",
    "Sofia",
    "Tariq",
    "Theo",
    "Uma",
    "Vera",
    "Wei",
    "Yara",
    "Zoe",
)
LAST_NAMES = (
    "Adams",
    "Ahmed",
    "Alvarez",
    "Berg",
    "Bianchi",
    "Brown",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Gupta",
    "Hansen",
    "Hoffmann",
    "Ito",
    "Jensen",
    "Kim",
    "Kowalski",
    "Larsen",
    "Lee",
    "Lopez",
    "Martin",
    "Meyer",
    "Moreau",
    "Murphy",
    "Nakamura",
    "Nguyen",
    "Novak",
    "O'Brien",
    "Okafor",
    "Park",
    "Patel",
    "Petrov",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Tanaka",
    "Torres",
    "Varga",
    "Wagner",
    "Walsh",
    "Weber",
    "Wilson",
    "Yamamoto",
    "Young",
    "Zhang",
    "Zimmermann",
)
DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com", "corp.example")
COMPANIES = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Stark Industries",
    "Wayne Corp",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    None,
    None,
    None,
)
CITIES = (
    "Berlin",
    "Lisbon",
    "Toronto",
    "Osaka",
    "Nairobi",
    "Austin",
    "Dublin",
    "Warsaw",
    "Seoul",
    "Sydney",
    "Bogotá",
    "Lyon",
    None,
)
TIMEZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/Lisbon",
    "America/Toronto",
    "Asia/Tokyo",
    "Africa/Nairobi",
    "America/Chicago",
    "Australia/Sydney",
)
LOCALES = ("en", "en", "en", "de", "pt", "fr", "ja", "es", "pl", "ko")
BIOS = (
    "Building things on the web.",
    "Platform engineer.",
    "Data person.",
    "Product designer who codes.",
    "Coffee first.",
    None,
    None,
)
STATUSES = (("active", 85), ("pending", 6), ("suspended", 6), ("deleted", 3))
PLANS = (("free", 35), ("starter", 25), ("pro", 25), ("team", 10), ("enterprise", 5))
SUB_STATUSES = (("active", 60), ("past_due", 8), ("trialing", 8), ("canceled", 16), ("expired", 8))
SCOPES = (["read"], ["read", "write"], ["read", "write", "admin"], ["billing"])
ACTIONS = (
    "auth.login",
    "auth.login",
    "auth.login",
    "auth.logout",
    "profile.updated",
    "token.created",
    "token.revoked",
    "subscription.renewed",
    "subscription.canceled",
    "password.changed",
    "settings.updated",
)
ENDPOINTS = (
    "/api/users",
    "/api/users/{id}/dashboard",
    "/api/users/{id}/activity",
    "/api/exports",
    "/api/search",
)


_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("id", "email", "name", "role", "status", "created_at", "updated_at"),
    "profiles": (
        "user_id",
        "bio",
        "avatar_url",
        "company",
        "location",
        "timezone",
        "locale",
        "created_at",
        "updated_at",
    ),
    "subscriptions": (
        "user_id",
        "plan_code",
        "status",
        "current_period_start",
        "current_period_end",
        "canceled_at",
        "created_at",
        "updated_at",
    ),
    "api_tokens": (
        "user_id",
        "name",
        "token_prefix",
        "token_hash",
        "scopes",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "created_at",
    ),
    "activity_log": ("user_id", "action", "details", "ip_address", "created_at"),
    "rate_limits": ("user_id", "endpoint", "window_start", "request_count"),
}
"""The columns each table is filled with, in the order the row generators yield them."""

_Rows = Callable[[random.Random, range, datetime], Iterator[Sequence[Any]]]


class SeedError(RuntimeError):
    """Seeding cannot proceed; the message says why and what to do."""


def _weighted(rng: random.Random, table: Sequence[tuple[str, int]]) -> str:
    return rng.choices([v for v, _ in table], [w for _, w in table])[0]


class Seeder:
    def __init__(self, dsn: str, say: Callable[[str], None] = print) -> None:
        self.dsn = dsn
        self.say = say

    def run(self, users: int, seed: int = 42) -> dict[str, int]:
        """Top the users up to ``users``; returns the rows added per table."""
        if users < 0:
            raise SeedError("--users must be 0 or more")
        started = time.monotonic()
        with connect(self.dsn, "portal-seed") as conn:
            self._check_schema(conn)
            self._lock(conn)
            try:
                row = conn.execute("SELECT count(*), COALESCE(max(id), 0) FROM users").fetchone()
                existing, max_id = (int(row[0]), int(row[1])) if row else (0, 0)
                if existing >= users:
                    self.say(
                        f"the database already has {existing} users (>= {users} "
                        f"requested); nothing to do"
                    )
                    return {}
                missing = users - existing
                if existing:
                    self.say(
                        f"the database has {existing} users; adding {missing} to reach "
                        f"{users} (seed {seed})"
                    )
                else:
                    self.say(f"seeding {missing} users (seed {seed})")
                added = self._insert(conn, max_id + 1, missing, seed)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (SEED_LOCK_KEY,))
            for table in added:
                conn.execute(f"ANALYZE {table}")
        total = sum(added.values())
        self.say(f"done: {total} rows in {time.monotonic() - started:.1f}s")
        return added

    def _check_schema(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(
            "SELECT to_regclass('users') IS NOT NULL AND to_regclass('rate_limits') IS NOT NULL"
        ).fetchone()
        if not row or not row[0]:
            raise SeedError("the portal schema is missing; run `python -m app migrate` first")

    def _lock(self, conn: psycopg.Connection[Any]) -> None:
        told = False
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SEED_LOCK_KEY,)).fetchone()
            if row and row[0]:
                return
            if not told:
                self.say("another seeder is running; waiting for it")
                told = True
            time.sleep(0.2)

    def _insert(
        self, conn: psycopg.Connection[Any], first_id: int, count: int, seed: int
    ) -> dict[str, int]:
        rng = random.Random(f"{seed}:{first_id}")
        now = datetime.now(UTC).replace(microsecond=0)
        ids = range(first_id, first_id + count)
        # (table, rows, rows expected): one row per user where it is known. In this order: the
        # generators draw from one random stream.
        tables: tuple[tuple[str, _Rows, int | None], ...] = (
            ("users", self._users, count),
            ("profiles", self._profiles, count),
            ("subscriptions", self._subscriptions, None),
            ("api_tokens", self._tokens, None),
            ("activity_log", self._activity, None),
            ("rate_limits", self._rate_limits, None),
        )
        added: dict[str, int] = {}
        with conn.transaction():
            for table, rows, expected in tables:
                added[table] = self._copy(
                    conn, table, _COLUMNS[table], rows(rng, ids, now), expected
                )
                if table == "users":
                    conn.execute(
                        "SELECT setval(pg_get_serial_sequence('users', 'id'), "
                        "(SELECT max(id) FROM users))"
                    )
        return added

    def _copy(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        columns: Sequence[str],
        rows: Iterator[Sequence[Any]],
        expected: int | None,
    ) -> int:
        started = time.monotonic()
        n = 0
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with conn.cursor() as cur, cur.copy(statement.encode()) as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
                if n % 50_000 == 0:
                    of = f"/{expected}" if expected else ""
                    self.say(f"  {table}: {n}{of} rows")
        self.say(f"  {table}: {n} rows in {time.monotonic() - started:.1f}s")
        return n

    # ----------------------------------------------------------------------- generators

    @staticmethod
    def _users(rng: random.Random, ids: range, now: datetime) -> Iterator[Sequence[Any]]:
        for uid in ids:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            local = f"{first}.{last}".lower().replace("'", "")
            email = f"{local}.{uid}@{rng.choice(DOMAINS)}"
            created = now - timedelta(days=rng.uniform(0, 1095))
            updated = created + (now - created) * rng.random()
            role = "admin" if rng.random() < 0.01 else "member"
            yield (uid, email, f"{first} {last}", role, _weighted(rng, STATUSES), created, updated)

    @staticmethod
    def _profiles(rng: random.Random, ids: range, now: datetime) -> Iterator[Sequence[Any]]:
        for uid in ids:
            created = now - timedelta(days=rng.uniform(0, 1095))
            avatar = f"https://avatars.example.com/{uid}.png" if rng.random() < 0.6 else None
            yield (
                uid,
                rng.choice(BIOS),
                avatar,
                rng.choice(COMPANIES),
                rng.choice(CITIES),
                rng.choice(TIMEZONES),
                rng.choice(LOCALES),
                created,
                created + (now - created) * rng.random(),
            )

    @staticmethod
    def _subscriptions(rng: random.Random, ids: range, now: datetime) -> Iterator[Sequence[Any]]:
        for uid in ids:
            for _ in range(rng.choices((0, 1, 2, 3), (15, 60, 20, 5))[0]):
                status = _weighted(rng, SUB_STATUSES)
                start = now - timedelta(days=rng.uniform(0, 30 if status != "expired" else 400))
                end = start + timedelta(days=30 if rng.random() < 0.8 else 365)
                if status == "expired":
                    end = min(end, now - timedelta(days=1))
                canceled = (
                    start + (now - start) * rng.random()
                    if status in ("canceled", "expired")
                    else None
                )
                created = start - timedelta(days=rng.uniform(0, 700))
                yield (
                    uid,
                    _weighted(rng, PLANS),
                    status,
                    start,
                    end,
                    canceled,
                    created,
                    max(created, start),
                )

    @staticmethod
    def _tokens(rng: random.Random, ids: range, now: datetime) -> Iterator[Sequence[Any]]:
        for uid in ids:
            for n in range(rng.choices((0, 1, 2, 3, 4), (20, 35, 25, 12, 8))[0]):
                secret = f"pt_{rng.getrandbits(128):032x}"
                created = now - timedelta(days=rng.uniform(1, 400))
                expires = now + timedelta(days=rng.uniform(-180, 365))
                used = created + (now - created) * rng.random() if rng.random() < 0.7 else None
                revoked = now - timedelta(days=rng.uniform(0, 30)) if rng.random() < 0.05 else None
                yield (
                    uid,
                    rng.choice(("ci", "laptop", "deploy", "backup", "cli")) + f"-{n + 1}",
                    secret[:9],
                    hashlib.sha256(secret.encode()).hexdigest(),
                    rng.choice(SCOPES),
                    expires,
                    used,
                    revoked,
                    created,
                )

    @staticmethod
    def _activity(rng: random.Random, ids: range, now: datetime) -> Iterator[Sequence[Any]]:
        for uid in ids:
            for _ in range(int(rng.expovariate(1 / 8))):
                ip = ipaddress.IPv4Address(0xCB007100 + rng.randrange(256))  # 203.0.113.0/24
                details = {"userAgent": rng.choice(("Mozilla/5.0", "curl/8.5", "portal-cli/2.1"))}
                yield (
                    uid,
                    rng.choice(ACTIONS),
                    json.dumps(details),
                    str(ip),
                    now - timedelta(minutes=rng.uniform(0, 90 * 24 * 60)),
                )

    @staticmethod
    def _rate_limits(rng: random.Random, ids: range, now: datetime) -> Iterator[Sequence[Any]]:
        minute = now.replace(second=0)
        for uid in ids:
            for _ in range(rng.choices((0, 1, 2, 3, 5), (40, 25, 15, 12, 8))[0]):
                window = minute - timedelta(minutes=rng.randrange(24 * 60))
                yield (uid, rng.choice(ENDPOINTS), window, rng.randrange(1, 120))
