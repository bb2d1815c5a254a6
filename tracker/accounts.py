"""Console accounts: password hashing, the sign-in check, its throttle, and role → scope.

A user belongs to one instance (or to every instance: a super-admin) with a
role: `admin` may do everything its instance allows, `viewer` only read.
Signing in mints a JWT of the existing model (tracker/auth.py) with the
role's scope, so every route and both WebSockets treat a console user
exactly like a minted token.

Passwords are hashed with Argon2id (argon2-cffi's defaults: 64 MiB, 3
passes); only the hash is stored. The check costs the same whether or not
the username exists: an unknown user is verified against a dummy hash, so
the answer's timing does not tell which usernames exist. Hashing is slow on
purpose, so the server runs it in a worker thread, a few at a time.

Failed sign-ins are throttled with token buckets (tracker/ratelimit.py):
`FAILURES_PER_USERNAME` per username and `FAILURES_PER_ADDRESS` per client
address, each refilled over `THROTTLE_WINDOW_SECONDS`. Only failures take
tokens; an empty bucket refuses every attempt, right or wrong, until it
refills (the 429's Retry-After).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tracker.auth import ALL_INSTANCES, Scope, TokenVerifier
from tracker.domain import User
from tracker.ratelimit import RateLimiter

ROLES = ("admin", "viewer")
ROLE_SCOPES: dict[str, Scope] = {"admin": "admin", "viewer": "read"}
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte is work an attacker would love to hand us
FAILURES_PER_USERNAME = 5
FAILURES_PER_ADDRESS = 20
THROTTLE_WINDOW_SECONDS = 15 * 60
HASHING_AT_ONCE = 2  # each Argon2 hash holds 64 MiB while it runs

_hasher = PasswordHasher()  # Argon2id; its settings are in every hash it makes


class InvalidAccount(ValueError):
    """A username, password or role the account rules refuse; the message says which."""


def check_username(username: str) -> str:
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidAccount(
            "a username is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    return username


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidAccount(
            f"a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        )
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidAccount(f"a role is {' or '.join(ROLES)}, not {role!r}")
    return role


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


@cache
def _dummy_hash() -> str:
    return _hasher.hash("not the password of anyone")


def password_matches(user: User | None, password: str) -> bool:
    """True when the password is the user's; as slow for an unknown user as for a known one."""
    dummy = _dummy_hash()  # made on the first call, whoever signs in: no first-time tell
    stored = user.password_hash if user is not None else dummy
    try:
        matched = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        matched = False
    return matched and user is not None


@dataclass(frozen=True)
class SignIn:
    """What a successful sign-in answers."""

    token: str
    expires_at: int
    scope: Scope
    instances: list[str] | str


def scope_of(user: User) -> Scope:
    return ROLE_SCOPES[user.role]


def sign_in_token(verifier: TokenVerifier, user: User, session_seconds: int, now: float) -> SignIn:
    """A JWT for the user: its role's scope, its instance (or all), `session_seconds` long."""
    instances: list[str] | str = [user.instance_id] if user.instance_id else ALL_INSTANCES
    seconds = min(session_seconds, verifier.max_lifetime_seconds)
    token = verifier.mint(
        subject=f"user:{user.username}",
        instances=instances,
        scope=scope_of(user),
        ttl_seconds=seconds,
        now=now,
    )
    return SignIn(token, int(now) + seconds, scope_of(user), instances)


class SignInGuard:
    """One per app: the throttle of failed sign-ins (per username, any case, and per
    address) and the limit on password checks running at once."""

    def __init__(self, clock: Callable[[], float] = trio.current_time):
        self._hashing = trio.CapacityLimiter(HASHING_AT_ONCE)
        self._by_username = RateLimiter(
            FAILURES_PER_USERNAME, clock, window_seconds=THROTTLE_WINDOW_SECONDS
        )
        self._by_address = RateLimiter(
            FAILURES_PER_ADDRESS, clock, window_seconds=THROTTLE_WINDOW_SECONDS
        )

    def retry_after(self, username: str, address: str) -> int:
        """0 when an attempt may be made now, else the seconds to wait."""
        return max(
            self._by_username.wait_seconds(username.lower()),
            self._by_address.wait_seconds(address),
        )

    def failed(self, username: str, address: str) -> None:
        # take() rather than charge(): it also forgets quiet buckets past the table's bound.
        self._by_username.take(username.lower())
        self._by_address.take(address)

    async def password_matches(self, user: User | None, password: str) -> bool:
        """`password_matches` in a worker thread, at most HASHING_AT_ONCE at a time."""
        return await trio.to_thread.run_sync(
            password_matches, user, password, limiter=self._hashing
        )
