"""A corpus of forged and malformed JWTs: none of them may ever be accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def hs256_by_hand(header: dict, claims: dict, key: bytes) -> str:
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def forged_tokens(secret: str, instance_id: str) -> dict[str, str]:
    """Name -> token; every one must be refused (401) by a server with this HS256 secret."""
    now = int(time.time())
    good = {
        "sub": "mallory",
        "iat": now,
        "exp": now + 600,
        "scope": "admin",
        "instances": [instance_id],
    }

    def claims(**changes) -> dict:
        merged = {**good, **changes}
        return {k: v for k, v in merged.items() if v is not ...}

    def signed(**changes) -> str:
        return jwt.encode(claims(**changes), secret, algorithm="HS256")

    valid = signed()
    header, payload, signature = valid.split(".")
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    corpus = {
        "alg none": f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(good)}.",
        "alg None": f"{b64json({'alg': 'None'})}.{b64json(good)}.",
        "alg NONE": f"{b64json({'alg': 'NONE'})}.{b64json(good)}.",
        "alg none with signature": f"{b64json({'alg': 'none'})}.{b64json(good)}.{signature}",
        "HS256 with another key": jwt.encode(good, "not-the-secret-" + "q" * 40, algorithm="HS256"),
        "HS384 with the secret": jwt.encode(good, secret, algorithm="HS384"),
        "HS512 with the secret": jwt.encode(good, secret, algorithm="HS512"),
        "RS256 with a stranger's key": jwt.encode(good, other_rsa, algorithm="RS256"),
        "missing exp": signed(exp=...),
        "missing iat": signed(iat=...),
        "missing sub": signed(sub=...),
        "missing scope": signed(scope=...),
        "missing instances": signed(instances=...),
        "string exp": signed(exp=str(now + 600)),
        "string iat": signed(iat=str(now)),
        "bool exp": signed(exp=True),
        "null exp": signed(exp=None),
        "exp far beyond the lifetime cap": signed(exp=now + 20 * 365 * 86400),
        "exp in 9999": signed(exp=253402300799),
        "iat in the future": signed(iat=now + 3600, exp=now + 7200),
        "expired": signed(iat=now - 7200, exp=now - 3600),
        "not yet valid (nbf)": signed(nbf=now + 3600),
        "sub a number": signed(sub=42),
        "sub empty": signed(sub=""),
        "scope a list": signed(scope=["admin"]),
        "scope unknown": signed(scope="superuser"),
        "scope empty": signed(scope=""),
        "instances a number": signed(instances=7),
        "instances empty": signed(instances=[]),
        "instances with a number": signed(instances=[instance_id, 5]),
        "instances an object": signed(instances={"id": instance_id}),
        "instances a plain string": signed(instances=instance_id),
        "device a number": signed(device=12),
        "empty": "",
        "one segment": "abc",
        "two segments": "abc.def",
        "garbage segments": "abc.def.ghi",
        "header not JSON": f"{b64(b'not json')}.{payload}.{signature}",
        "payload not JSON": f"{header}.{b64(b'not json')}.{signature}",
        "payload a list": hs256_by_hand({"alg": "HS256"}, ["admin"], secret.encode()),
        "four segments": f"{valid}.extra",
        "signature stripped": f"{header}.{payload}.",
        "signature of another token": f"{header}.{b64json(claims(instances='*'))}.{signature}",
        "payload tampered to every instance": f"{header}.{b64json({**good, 'instances': '*'})}.{signature}",
        "scope tampered to admin": f"{header}.{b64json({**good, 'scope': 'admin', 'sub': 'x'})}.{signature}",
        "oversized": signed(padding="x" * 10_000),
        "whitespace inside": valid[:20] + " " + valid[20:],
        "non-ascii": valid + "é",
    }
    return corpus


def public_key_confusion_token(public_pem: bytes, instance_id: str) -> str:
    """The classic alg-confusion attack: HS256 signed with the server's public key as secret."""
    now = int(time.time())
    claims = {
        "sub": "mallory",
        "iat": now,
        "exp": now + 600,
        "scope": "admin",
        "instances": [instance_id],
    }
    return hs256_by_hand({"alg": "HS256", "typ": "JWT"}, claims, public_pem)
