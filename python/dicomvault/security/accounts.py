"""Users, roles and API tokens: ``<root>/users.json`` (mode 0600), read by the server whenever
the file changes and written by ``dicomvault user`` and ``dicomvault token``.

Passwords are kept as scrypt hashes (OWASP's parameters: N=2^17, r=8, p=1; each hash says its
own, so they can be raised), never plain. A token is ``dvt_<id>_<secret>``: the id names it in
lists, audit records and revocation, the 256-bit secret is shown once and kept only as its
SHA-256 (a secret that long needs no slow hash). Every comparison of secrets is constant-time,
and an unknown user costs a password check as a known one does.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from functools import cache
from pathlib import Path

FILE_NAME = "users.json"

# scrypt's cost: N, r, p (OWASP's minimum for scrypt), and the memory it needs.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 17, 8, 1
_MAXMEM = 256 << 20
TOKEN_PREFIX = "dvt_"
_TOKEN = re.compile(r"dvt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class Role(IntEnum):
    """What a principal may do; each role may do what the ones below it may."""

    READ = 1  # query, retrieve, view
    WRITE = 2  # + store, upload
    ADMIN = 3  # + delete, send, migrate, repack, user administration

    @classmethod
    def named(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: read, write or admin") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who a request is from: a user name (``token:<id>`` for an API token, the subject or
    preferred name of an OpenID Connect token) and the role it has."""

    name: str
    role: Role
    via: str  # "password", "token", "oidc", "session" or "none"


class AccountError(ValueError):
    """A user or token that cannot be added, changed or found."""


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64 without padding)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_MAXMEM, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=32,
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, _unb64(expected))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@cache
def _decoy() -> str:
    """What an unknown user's password is checked against: it takes as long as a known one."""
    return hash_password(secrets.token_urlsafe(16))


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s``, or ``never`` (a timedelta of 0)."""
    if text.strip().lower() == "never":
        return timedelta(0)
    match = re.fullmatch(r"\s*(\d+)\s*([dhms])\s*", text.lower())
    if not match or int(match[1]) == 0:
        raise ValueError(f"a duration is like 30d, 12h, 90m, 3600s or never, not {text!r}")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match[2]]
    return timedelta(**{unit: int(match[1])})


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class User:
    name: str
    role: str
    password: str
    created: str


@dataclass
class Token:
    id: str
    name: str
    role: str
    digest: str
    created: str
    expires: str | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= datetime.fromisoformat(
            self.expires.replace("Z", "+00:00")
        )


@dataclass
class _Accounts:
    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)


class Accounts:
    """The users and tokens of an archive root. Thread-safe; every read sees the file as it is
    now (it is read again when it changed), every change replaces it atomically."""

    def __init__(self, root: Path) -> None:
        self.path = root / FILE_NAME
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._data = _Accounts()

    # Reading ------------------------------------------------------------------------------

    def _current(self) -> _Accounts:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._seen, self._data = None, _Accounts()
                return self._data
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                raw = json.loads(self.path.read_text())
                self._data = _Accounts(
                    {u["name"]: User(**u) for u in raw.get("users", [])},
                    {t["id"]: Token(**t) for t in raw.get("tokens", [])},
                )
                self._seen = seen
            return self._data

    def users(self) -> list[User]:
        return sorted(self._current().users.values(), key=lambda u: u.name)

    def tokens(self) -> list[Token]:
        return sorted(self._current().tokens.values(), key=lambda t: t.created)

    def has_users(self) -> bool:
        data = self._current()
        return bool(data.users or data.tokens)

    def password_hash(self, name: str) -> str | None:
        """The user's stored hash (what a cached password check is valid for), or None."""
        user = self._current().users.get(name)
        return user.password if user else None

    def check_password(self, name: str, password: str) -> Principal | None:
        """The user, when the password is theirs. Takes as long for an unknown user."""
        user = self._current().users.get(name)
        if not verify_password(password, user.password if user else _decoy()) or user is None:
            return None
        return Principal(user.name, Role.named(user.role), "password")

    def role_of(self, name: str) -> Role | None:
        user = self._current().users.get(name)
        return Role.named(user.role) if user else None

    def check_token(self, presented: str) -> Principal | None:
        """The token's principal, when ``presented`` is a live token of this archive."""
        match = _TOKEN.fullmatch(presented)
        if not match:
            return None
        token = self._current().tokens.get(match[1])
        expected = token.digest if token else _token_digest("")
        if not hmac.compare_digest(_token_digest(match[2]), expected) or token is None:
            return None
        if token.expired(_now()):
            return None
        return Principal(f"token:{token.name}", Role.named(token.role), "token")

    # Changing -----------------------------------------------------------------------------

    def _write(self, data: _Accounts) -> None:
        body = json.dumps(
            {
                "users": [asdict(u) for u in data.users.values()],
                "tokens": [asdict(t) for t in data.tokens.values()],
            },
            indent=1,
        )
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def _change(self, change: Callable[[_Accounts], None]) -> None:
        """Applies ``change`` to the file as it is now, one writer at a time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with self._lock:
                self._seen = None  # read afresh: what another process wrote counts
            data = self._current()
            change(data)
            self._write(data)
            with self._lock:
                self._seen = None

    def add_user(self, name: str, role: Role, password: str) -> None:
        if not _USER_NAME.fullmatch(name):
            raise AccountError(
                f"a user name is 1-64 letters, digits and . _ @ -, starting with a letter or "
                f"digit: {name!r}"
            )
        _check_password_strength(password)

        def add(data: _Accounts) -> None:
            if name in data.users:
                raise AccountError(f"user {name} exists: use passwd to change the password")
            data.users[name] = User(name, role.label, hash_password(password), _stamp(_now()))

        self._change(add)

    def set_password(self, name: str, password: str) -> None:
        _check_password_strength(password)

        def change(data: _Accounts) -> None:
            if name not in data.users:
                raise AccountError(f"no user {name}")
            data.users[name].password = hash_password(password)

        self._change(change)

    def remove_user(self, name: str) -> None:
        def remove(data: _Accounts) -> None:
            if data.users.pop(name, None) is None:
                raise AccountError(f"no user {name}")

        self._change(remove)

    def create_token(self, role: Role, lifetime: timedelta, name: str | None = None) -> str:
        """A new token, returned this once (only its digest is kept)."""
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = _now()

        def add(data: _Accounts) -> None:
            data.tokens[token_id] = Token(
                token_id,
                name or token_id,
                role.label,
                _token_digest(secret),
                _stamp(now),
                _stamp(now + lifetime) if lifetime else None,
            )

        self._change(add)
        return f"{TOKEN_PREFIX}{token_id}_{secret}"

    def revoke_token(self, token_id: str) -> None:
        def revoke(data: _Accounts) -> None:
            if data.tokens.pop(token_id, None) is None:
                raise AccountError(f"no token {token_id}")

        self._change(revoke)


def _check_password_strength(password: str) -> None:
    if len(password) < 12:
        raise AccountError("a password has at least 12 characters")
