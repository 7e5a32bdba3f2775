"""The local stack's credentials, under ``<dir>/auth``: the key set the API's tokens are signed
with, the token Prometheus scrapes with, and the tokens of the stack's clients (an operator with
the admin scope, every seeded user), minted with ``python -m app token`` as an operator mints them
and reused until an hour before they expire."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rollout.local.processes import ServerError

PROJECT_DIR = Path(__file__).resolve().parents[2]
TOKEN_TTL_S = 24 * 3600
"""Lifetime of the tokens the stack mints for its clients (re-minted with an hour left)."""


@dataclass(frozen=True)
class Credentials:
    """Bearer tokens of the stack's clients: an operator with the admin scope (runbooks,
    probes, admin pages of the load) and each seeded user (their own records)."""

    admin: str
    users: dict[int, str]

    def user(self, user_id: int) -> str:
        return self.users[user_id]


class StackAuth:
    """The credentials of the local stack under ``root``."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "auth"
        self._credentials: tuple[Credentials, float] | None = None

    @property
    def keys_file(self) -> Path:
        """The key set of the API's tokens (``PORTAL_AUTH_KEYS_FILE`` of every instance)."""
        return self.dir / "keys.json"

    @property
    def scrape_token_file(self) -> Path:
        """The token Prometheus scrapes the instances with (``PORTAL_METRICS_TOKEN_FILE``)."""
        return self.dir / "scrape-token"

    def prepare(self) -> None:
        """A key set and a scrape token, made once (kept across ``down`` and ``up``)."""
        if not self.keys_file.exists():
            self._token_cli(["keygen", "--kid", "local-1"])
        if not self.scrape_token_file.exists():
            fd = os.open(self.scrape_token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(36) + "\n")

    def credentials(self, users: int) -> Credentials:
        """Tokens for the admin and users 1..``users``, minted with the stack's keys the way an
        operator mints them (``python -m app token mint``); reused until an hour before they
        expire."""
        known = self._credentials
        if known is not None and known[1] - time.time() > 3600 and len(known[0].users) >= users:
            return known[0]
        cache = self.dir / "tokens.json"
        try:
            doc = json.loads(cache.read_text())
            current = cache.stat().st_mtime >= self.keys_file.stat().st_mtime  # same keys
            if current and doc["expiresAt"] - time.time() > 3600 and len(doc["users"]) >= users:
                found = Credentials(doc["admin"], {int(k): v for k, v in doc["users"].items()})
                self._credentials = (found, float(doc["expiresAt"]))
                return found
        except (OSError, ValueError, KeyError, TypeError):
            pass
        ttl = f"{TOKEN_TTL_S}s"
        admin = self._token_cli(
            ["mint", "--service", "local-operator", "--scope", "admin", "--ttl", ttl, "--json"]
        )
        members = self._token_cli(["mint", "--user", f"1-{users}", "--ttl", ttl, "--json"])
        doc = {
            "admin": json.loads(admin)["tokens"][0]["token"],
            "users": {t["sub"]: t["token"] for t in json.loads(members)["tokens"]},
            "expiresAt": json.loads(members)["expiresAt"],
        }
        tmp = cache.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out)
        tmp.replace(cache)
        minted = Credentials(doc["admin"], {int(k): v for k, v in doc["users"].items()})
        self._credentials = (minted, float(doc["expiresAt"]))
        return minted

    def _token_cli(self, args: list[str]) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "app", "token", *args, "--keys-file", str(self.keys_file)]
        result = subprocess.run(
            argv,
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(f"python -m app token {args[0]} failed: {result.stderr.strip()}")
        return result.stdout
