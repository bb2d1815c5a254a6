"""JWT in, principal out; and the instance-isolation rule.

Tokens are verified with pinned algorithms only: HS256 with the configured
secret (at least 32 bytes), or, in public-key mode, the algorithm family of
the configured key (RS256, ES256/384/512, EdDSA). `alg: none` never passes.
PyJWT is lenient where we are not: it accepts a string `exp` and any
lifetime, so the claims are type-checked and the lifetime capped here.

Isolation: a principal may touch the instances its token lists (or all, for
`"*"`). Naming a foreign instance is 403; a device, session or share of a
foreign instance is 404, exactly as if it did not exist.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tracker.config import AuthSettings
from tracker.errors import Forbidden, NotFound, Unauthorized

Scope = Literal["read", "admin", "ingest"]
SCOPES: tuple[Scope, ...] = ("read", "admin", "ingest")
ALL_INSTANCES = "*"
MIN_SECRET_BYTES = 32
VERIFIED_TOKENS_KEPT = 4096  # verified tokens remembered (see TokenVerifier.verify)
MAX_TOKEN_BYTES = 8192
GENERATED_SECRET_NAME = "jwt_secret"
# Read and admin tokens cover whole instances: a device claim there would look
# like a restriction that no route enforces, so it is refused.
DEVICE_CLAIM_RULE = "a device binds only an ingest token (read and admin cover whole instances)"


class AuthConfigError(Exception):
    """The auth settings cannot verify tokens safely (e.g. a short secret)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject, instances and scope."""

    subject: str
    instances: frozenset[str] | None  # None: every instance ("*")
    scope: Scope
    device_token: str | None = None  # an ingest token may be bound to one device

    def may_access(self, instance_id: str) -> bool:
        return self.instances is None or instance_id in self.instances

    def require_instance(self, instance_id: str) -> None:
        """403 when the caller names an instance outside the token."""
        if not self.may_access(instance_id):
            raise Forbidden("this token does not grant access to that instance")

    def require_owner_visible(
        self, owner_instance: str | None, named_instance: str | None, what: str
    ) -> None:
        """The isolation rule for one object (a device, a session) the caller asked for.

        403 when the caller named an instance outside its token; 404 when the
        object is missing (owner None), belongs to an instance outside the
        token, or is not in the instance the caller named.
        """
        if named_instance is not None:
            self.require_instance(named_instance)
        if owner_instance is None or not self.may_access(owner_instance):
            raise NotFound(what)
        if named_instance is not None and owner_instance != named_instance:
            raise NotFound(what)

    def require_scope(self, *allowed: Scope) -> None:
        if self.scope not in allowed:
            raise Forbidden(f"this needs a token with scope {' or '.join(allowed)}")


def _pinned_algorithms(key: object) -> list[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {256: ["ES256"], 384: ["ES384"], 521: ["ES512"]}[key.curve.key_size]
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    raise AuthConfigError("jwt_public_key_file: unsupported key type (use RSA, EC or Ed25519)")


class TokenVerifier:
    """Verifies bearer tokens and mints them (in secret mode)."""

    def __init__(self, settings: AuthSettings, secret: str | None):
        self.max_lifetime_seconds = settings.max_token_lifetime_days * 86400
        self.leeway_seconds = settings.clock_leeway_seconds
        if settings.jwt_public_key_file:
            pem = Path(settings.jwt_public_key_file).read_bytes()
            try:
                self._key: object = serialization.load_pem_public_key(pem)
            except ValueError as error:
                raise AuthConfigError(
                    f"jwt_public_key_file: not a PEM public key: {error}"
                ) from None
            self.algorithms = _pinned_algorithms(self._key)
            self._secret: str | None = None
        else:
            if not secret or len(secret.encode()) < MIN_SECRET_BYTES:
                raise AuthConfigError(
                    f"auth.jwt_secret must be at least {MIN_SECRET_BYTES} bytes "
                    "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
                )
            self._key = secret
            self._secret = secret
            self.algorithms = ["HS256"]
        self._verified: dict[str, tuple[Principal, float, float]] = {}  # see verify()

    @property
    def can_mint(self) -> bool:
        return self._secret is not None

    def mint(
        self,
        *,
        subject: str,
        instances: list[str] | str,
        scope: Scope,
        ttl_seconds: int,
        device_token: str | None = None,
        now: float | None = None,
    ) -> str:
        if self._secret is None:
            raise AuthConfigError("public-key mode: tokens come from your identity provider")
        if ttl_seconds > self.max_lifetime_seconds:
            raise AuthConfigError("ttl exceeds auth.max_token_lifetime_days")
        if device_token and scope != "ingest":
            raise AuthConfigError(DEVICE_CLAIM_RULE)
        issued = int(time.time() if now is None else now)
        claims: dict[str, object] = {
            "sub": subject,
            "iat": issued,
            "exp": issued + int(ttl_seconds),
            "scope": scope,
            "instances": instances,
            "jti": secrets.token_hex(8),
        }
        if device_token:
            claims["device"] = device_token
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str, now: float | None = None) -> Principal:
        """A Principal for a valid token; Unauthorized (401) for anything else.

        A token that verified is remembered until it expires (tokens cannot be
        revoked, and a token string is only ever the same signed claims), so a
        dashboard polling with one token pays for the signature check once;
        failures are never remembered.
        """
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("missing or oversized token")
        now = time.time() if now is None else now
        remembered = self._verified.get(token)
        if remembered is not None and remembered[1] <= now < remembered[2]:
            return remembered[0]
        principal, claims = self._verify(token, now)
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            self._verified.clear()
        self._verified[token] = (
            principal,
            claims["iat"] - self.leeway_seconds,
            claims["exp"] + self.leeway_seconds,
        )
        return principal

    def _verify(self, token: str, now: float) -> tuple[Principal, dict]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                options={"require": ["exp", "iat", "sub"], "verify_aud": False},
                leeway=self.leeway_seconds,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise Unauthorized("invalid token") from None
        return self._principal(claims, now), claims

    def _principal(self, claims: dict, now: float) -> Principal:
        exp, iat, sub = claims.get("exp"), claims.get("iat"), claims.get("sub")
        for name, value in (("exp", exp), ("iat", iat)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Unauthorized(f"invalid token: claim {name} must be a number")
        if iat > now + self.leeway_seconds:
            raise Unauthorized("invalid token: issued in the future")
        if exp - iat > self.max_lifetime_seconds:
            raise Unauthorized("invalid token: lifetime exceeds the allowed maximum")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("invalid token: claim sub must be a string")
        scope = claims.get("scope")
        if scope not in SCOPES:
            raise Unauthorized("invalid token: claim scope must be read, admin or ingest")
        raw_instances = claims.get("instances")
        if raw_instances == ALL_INSTANCES:
            instances = None
        elif (
            isinstance(raw_instances, list)
            and raw_instances
            and all(isinstance(item, str) and item for item in raw_instances)
        ):
            instances = frozenset(raw_instances)
        else:
            raise Unauthorized("invalid token: claim instances must be a list of ids or '*'")
        device = claims.get("device")
        if device is not None and not isinstance(device, str):
            raise Unauthorized("invalid token: claim device must be a string")
        if device is not None and scope != "ingest":
            raise Unauthorized(f"invalid token: {DEVICE_CLAIM_RULE}")
        return Principal(subject=sub, instances=instances, scope=scope, device_token=device)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or 401."""
    if not authorization:
        raise Unauthorized("missing Authorization: Bearer token")
    kind, _, token = authorization.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    return token.strip()


def parse_ttl(text: str) -> int:
    """'30d', '12h', '15m', '90s' or plain seconds, as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    try:
        if text[-1:] in units:
            seconds = int(float(text[:-1]) * units[text[-1]])
        else:
            seconds = int(text)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 15m)") from None
    if seconds <= 0:
        raise ValueError("a token lifetime must be positive")
    return seconds


def is_instance_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True
