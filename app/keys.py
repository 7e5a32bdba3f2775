"""The key set the API's tokens are signed with: a JWK Set of HS256 secrets in a file
(``PORTAL_AUTH_KEYS_FILE``, a mounted Secret), read, checked and rotated here."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

ALGORITHM = "HS256"
MIN_KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class KeyFileError(ValueError):
    """A key file is missing or wrong; the message names the file and what is wrong."""


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class KeySet:
    """HS256 keys by key id, in the file's order: the first signs, all verify."""

    keys: tuple[tuple[str, bytes], ...]

    @property
    def signing_kid(self) -> str:
        return self.keys[0][0]

    def secret(self, kid: str) -> bytes | None:
        for k, secret in self.keys:
            if k == kid:
                return secret
        return None

    @classmethod
    def parse(cls, text: str, source: str) -> KeySet:
        """A JWK Set of ``oct`` keys: ``{"keys": [{"kty": "oct", "kid": ..., "k": ...}]}``."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise KeyFileError(f"{source}: not JSON ({exc})") from None
        raw = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(raw, list) or not raw:
            raise KeyFileError(
                f'{source}: expected a JWK Set {{"keys": [...]}} with at least one key'
            )
        keys: list[tuple[str, bytes]] = []
        for i, jwk in enumerate(raw):
            where = f"{source}: keys[{i}]"
            if not isinstance(jwk, dict):
                raise KeyFileError(f"{where}: not an object")
            if jwk.get("kty") != "oct":
                raise KeyFileError(f'{where}: kty must be "oct" (an HS256 secret)')
            if jwk.get("alg", ALGORITHM) != ALGORITHM:
                raise KeyFileError(f"{where}: alg {jwk.get('alg')!r} is not {ALGORITHM}")
            kid = jwk.get("kid")
            if not isinstance(kid, str) or not _KID.match(kid):
                raise KeyFileError(f"{where}: kid must be 1-64 of A-Za-z0-9._-")
            if any(kid == k for k, _ in keys):
                raise KeyFileError(f"{where}: kid {kid!r} appears twice")
            k = jwk.get("k")
            try:
                secret = _b64url_decode(k) if isinstance(k, str) else b""
            except (binascii.Error, ValueError):
                secret = b""
            if len(secret) < MIN_KEY_BYTES:
                raise KeyFileError(
                    f"{where} ({kid}): k must be base64url of at least {MIN_KEY_BYTES} bytes"
                )
            keys.append((kid, secret))
        return cls(tuple(keys))

    @classmethod
    def read(cls, path: Path) -> KeySet:
        try:
            text = path.read_text()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        return cls.parse(text, str(path))

    def to_json(self) -> str:
        return json.dumps(
            {
                "keys": [
                    {"kty": "oct", "kid": kid, "alg": ALGORITHM, "k": _b64url_encode(secret)}
                    for kid, secret in self.keys
                ]
            },
            indent=1,
        )

    def with_new_key(self, kid: str | None = None) -> KeySet:
        """A new random key first (it signs from now on); the others still verify."""
        kid = kid or time.strftime("%Y%m%d-", time.gmtime()) + secrets.token_hex(3)
        if not _KID.match(kid):
            raise KeyFileError(f"kid {kid!r}: must be 1-64 of A-Za-z0-9._-")
        if self.secret(kid) is not None:
            raise KeyFileError(f"kid {kid!r} is already in the key set")
        return KeySet(((kid, secrets.token_bytes(MIN_KEY_BYTES)), *self.keys))

    def without(self, kid: str) -> KeySet:
        if self.secret(kid) is None:
            raise KeyFileError(f"kid {kid!r} is not in the key set ({self.describe()})")
        if len(self.keys) == 1:
            raise KeyFileError(f"kid {kid!r} is the only key; add another first (token keygen)")
        return KeySet(tuple((k, s) for k, s in self.keys if k != kid))

    def describe(self) -> str:
        return ", ".join(k + (" (signs)" if i == 0 else "") for i, (k, _) in enumerate(self.keys))


def write_key_file(path: Path, keys: KeySet) -> None:
    """Atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(keys.to_json() + "\n")
    tmp.replace(path)
