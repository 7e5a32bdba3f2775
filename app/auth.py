"""Who is calling, and what each kind of route lets them do.

Requests carry ``Authorization: Bearer <JWT>``: HS256, signed with one key of a key set read from
a file (a JWK Set, ``PORTAL_AUTH_KEYS_FILE``), the header's ``kid`` naming the key. The first key
of the set signs (``python -m app token mint``); every key verifies, so keys rotate without a
moment when valid tokens fail. Claims: ``iss`` and ``aud`` ``portal``, ``sub`` (a user id, or
``svc:<name>`` for an operator or a program), ``scope`` (space-separated: ``admin``,
``metrics``), ``iat`` and ``exp``.

Verifying a token with PyJWT costs about as much CPU as a whole cached read, so a verified token is
remembered (keyed by the whole token, until it expires or the key set changes): a client's
later requests pay a dictionary lookup. ``/metrics`` also takes the scraper's opaque token
(``PORTAL_METRICS_TOKEN_FILE``), compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import jwt
from starlette.exceptions import HTTPException
from starlette.types import Scope

from app.keys import ALGORITHM, KeyFileError, KeySet

log = logging.getLogger("app.auth")

ISSUER = "portal"
AUDIENCE = "portal"
ADMIN = "admin"
METRICS = "metrics"
SCOPES = (ADMIN, METRICS)
MIN_SCRAPE_TOKEN = 32
MAX_TOKEN_BYTES = 4096
MAX_TTL_S = 366 * 86_400
LEEWAY_S = 30
"""Clock skew tolerated between the machine that minted a token and this one."""
RELOAD_S = 10.0
"""How often the key files are checked for a change (a Secret update reaches a pod so)."""
VERIFIED_MAX = 20_000
"""Verified tokens remembered; past it the memory is cleared (and tokens verified again)."""
MAX_USER_ID = 2**63 - 1

PRINCIPAL = "portal.principal"
"""ASGI scope key of the caller (a ``Principal``) on a request that was authenticated."""

_SERVICE = re.compile(r"^svc:[a-z0-9][a-z0-9._-]{0,62}$")
_REALM = 'Bearer realm="portal"'


class Access(Enum):
    """What a route asks of its caller."""

    PUBLIC = "public"
    """Anyone; a token is not even read (liveness)."""
    OPTIONAL = "optional"
    """Anyone; a token, when sent, must be valid and may show more (advanced health)."""
    MEMBER = "member"
    """Any valid token (the plan catalogue)."""
    OWN_RECORD = "own-record"
    """A member for their own ``{user_id}``, or the admin scope for any."""
    ADMIN = "admin"
    """The admin scope."""
    METRICS = "metrics"
    """The scraper's token, or the metrics or admin scope."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    user_id: int | None
    """The user the token speaks for (``sub`` of digits); None for an operator or a program."""
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return ADMIN in self.scopes


UNCHECKED = Principal("authentication-off", None, frozenset(SCOPES))
"""Every caller when ``PORTAL_AUTH=off`` (benchmarks only)."""
SCRAPER = Principal("svc:scraper", None, frozenset({METRICS}))


def subject_for(user_id: int | None = None, service: str | None = None) -> str:
    if (user_id is None) == (service is None):
        raise ValueError("a token speaks for one user or one service")
    if user_id is not None:
        if not 1 <= user_id <= MAX_USER_ID:
            raise ValueError(f"user id {user_id} is out of range")
        return str(user_id)
    sub = f"svc:{service}"
    if not _SERVICE.match(sub):
        raise ValueError(f"service name {service!r}: 1-63 of a-z0-9._- starting with a-z0-9")
    return sub


def mint(
    keys: KeySet,
    subject: str,
    scopes: Iterable[str] = (),
    ttl_s: int = 3600,
    now: float | None = None,
) -> str:
    """A token for ``subject`` (see ``subject_for``) signed with the key set's first key."""
    scopes = sorted(set(scopes))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; scopes are {', '.join(SCOPES)}")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl {ttl_s}s: must be 1 s to {MAX_TTL_S // 86_400} days")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    kid, secret = keys.keys[0]
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid})


def unauthorized(detail: str, error: str | None = "invalid_token") -> HTTPException:
    challenge = _REALM if error is None else f'{_REALM}, error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def forbidden(detail: str, scope: str | None = None) -> HTTPException:
    challenge = f'{_REALM}, error="insufficient_scope"'
    if scope:
        challenge += f', scope="{scope}"'
    return HTTPException(403, detail, headers={"WWW-Authenticate": challenge})


NO_TOKEN = "send a token: `Authorization: Bearer <token>` (python -m app token mint)"  # noqa: S105 - a message


class _Watched:
    """A file read again when it changes (a Kubernetes Secret volume swaps it atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        try:
            st = self.path.stat()
        except OSError:
            return self.stamp is not None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self.stamp:
            return False
        self.stamp = stamp
        return True


class Authenticator:
    """Turns a request's credentials into a ``Principal``, or a 401 / 403 to answer."""

    def __init__(
        self,
        keys_file: Path | None,
        metrics_token_file: Path | None = None,
        *,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self._keys_file = _Watched(keys_file) if keys_file else None
        self._metrics_file = _Watched(metrics_token_file) if metrics_token_file else None
        self.keys: KeySet | None = None
        self._scrape_token: bytes | None = None
        self._verified: dict[bytes, tuple[Principal, float]] = {}

    # ------------------------------------------------------------------ key files

    def load(self) -> None:
        """Read the key files; ``KeyFileError`` when one is missing or wrong."""
        if not self.enabled:
            return
        if self._keys_file is None:
            raise KeyFileError(
                "PORTAL_AUTH_KEYS_FILE: not set; the service needs the key set its tokens are "
                "signed with (python -m app token keygen writes one)"
            )
        self._keys_file.changed()
        self.keys = KeySet.read(self._keys_file.path)
        if self._metrics_file is not None:
            self._metrics_file.changed()
            self._scrape_token = self._read_scrape_token(self._metrics_file.path)

    @staticmethod
    def _read_scrape_token(path: Path) -> bytes:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if len(token) < MIN_SCRAPE_TOKEN or any(c.isspace() for c in token):
            raise KeyFileError(
                f"{path}: the scrape token must be at least {MIN_SCRAPE_TOKEN} characters "
                "without spaces"
            )
        return token.encode()

    def reload_if_changed(self) -> bool:
        """Read the files again when they changed; a broken new file keeps the old keys (and
        is logged). True when something was reloaded."""
        reloaded = False
        if self._keys_file is not None and self._keys_file.changed():
            try:
                keys = KeySet.read(self._keys_file.path)
            except KeyFileError as exc:
                log.error("auth keys not reloaded, the previous ones stay in use: %s", exc)
            else:
                if keys != self.keys:
                    self.keys = keys
                    self._verified.clear()
                    log.warning("auth keys reloaded: %s", keys.describe())
                    reloaded = True
        if self._metrics_file is not None and self._metrics_file.changed():
            try:
                token = self._read_scrape_token(self._metrics_file.path)
            except KeyFileError as exc:
                log.error("scrape token not reloaded, the previous one stays in use: %s", exc)
            else:
                if token != self._scrape_token:
                    self._scrape_token = token
                    log.warning("scrape token reloaded")
                    reloaded = True
        return reloaded

    # ------------------------------------------------------------------ requests

    def authorize(self, access: Access, scope: Scope) -> Principal | None:
        """The caller of a request to a route with ``access``; raises the 401 or 403 to answer.
        None: an anonymous caller of a public route."""
        if access is Access.PUBLIC:
            return None
        if not self.enabled:
            return UNCHECKED
        token = _bearer(scope)
        if access is Access.METRICS and token is not None and self._is_scrape_token(token):
            return SCRAPER
        if token is None:
            if access is Access.OPTIONAL:
                return None
            raise unauthorized(NO_TOKEN, error=None)
        principal = self.verify(token)
        if access is Access.MEMBER or access is Access.OPTIONAL:
            return principal
        if access is Access.OWN_RECORD:
            if principal.admin:
                return principal
            raw = scope["path_params"].get("user_id", "")
            if principal.user_id is not None and raw.isdigit() and int(raw) == principal.user_id:
                return principal
            raise forbidden(
                f"a token of {_who(principal)} may only read and change that user's own record"
                " (other users' records need the admin scope)",
                ADMIN,
            )
        if access is Access.ADMIN:
            if principal.admin:
                return principal
            raise forbidden(f"this route needs the admin scope ({_who(principal)} has none)", ADMIN)
        if principal.admin or METRICS in principal.scopes:
            return principal
        raise forbidden("metrics need the scrape token, or the metrics or admin scope", METRICS)

    def _is_scrape_token(self, token: bytes) -> bool:
        expected = self._scrape_token
        return expected is not None and hmac.compare_digest(token, expected)

    def verify(self, token: bytes) -> Principal:
        """The principal of a valid token; raises the 401 to answer."""
        known = self._verified.get(token)
        if known is not None:
            principal, expires = known
            if time.time() < expires + LEEWAY_S:
                return principal
            del self._verified[token]
            raise unauthorized("the token has expired; mint a new one")
        principal, expires = self._decode(token)
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (principal, expires)
        return principal

    def _decode(self, token: bytes) -> tuple[Principal, float]:
        keys = self.keys
        if keys is None:
            raise unauthorized("the service has no keys to verify tokens with")
        if len(token) > MAX_TOKEN_BYTES:
            raise unauthorized(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized("the token is not a JWT") from None
        kid = header.get("kid")
        secret = keys.secret(kid) if isinstance(kid, str) else None
        if secret is None:
            raise unauthorized("the token was not signed with a key of this service (kid)")
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the token has expired; mint a new one") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("the token's signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"the token has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"the token is invalid: {_one_line(exc)}") from None
        return _principal(claims), float(claims["exp"])


def _principal(claims: dict[str, Any]) -> Principal:
    sub = claims["sub"]
    if not isinstance(sub, str):
        raise unauthorized("the token's sub is not a string")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise unauthorized("the token's scope is not a space-separated string")
    scopes = frozenset(s for s in scope.split() if s in SCOPES)
    if sub.isdigit() and sub.isascii() and 1 <= int(sub) <= MAX_USER_ID:
        return Principal(sub, int(sub), scopes)
    if _SERVICE.match(sub):
        return Principal(sub, None, scopes)
    raise unauthorized("the token's sub is neither a user id nor svc:<name>")


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[:7].lower() != b"bearer ":
                raise unauthorized(
                    "only bearer tokens are accepted: `Authorization: Bearer <token>`"
                )
            token: bytes = value[7:].strip()
            if not token:
                raise unauthorized(NO_TOKEN)
            return token
    return None


def _who(principal: Principal) -> str:
    if principal.user_id is not None:
        return f"user {principal.user_id}"
    return principal.subject


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def parse_ttl(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``12h``, ``7d`` -> seconds."""
    match = re.fullmatch(r"(\d{1,9})([smhd]?)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 3600, 30m, 12h or 7d")
    value = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[match.group(2)]
    if not 1 <= value <= MAX_TTL_S:
        raise ValueError(f"{text!r}: must be 1 s to {MAX_TTL_S // 86_400} days")
    return value


def parse_user_ids(specs: Sequence[str]) -> list[int]:
    """``["7", "1-3"]`` -> ``[7, 1, 2, 3]``."""
    out: list[int] = []
    for spec in specs:
        match = re.fullmatch(r"(\d{1,19})(?:-(\d{1,19}))?", spec.strip())
        if not match:
            raise ValueError(f"{spec!r} is not a user id or a range like 1-2000")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 1 <= first <= last <= MAX_USER_ID or last - first >= 1_000_000:
            raise ValueError(f"{spec!r}: ids 1 to 2^63-1, at most 1,000,000 at once")
        out.extend(range(first, last + 1))
    return out
