"""Admin calls need a valid JWT for the right instance; everything else is a JSON 401 or 403."""

import base64
import json
import time

import jwt
import pytest
import trio

from tests.conftest import bearer
from tracker.auth import AuthConfigError
from tracker.errors import Unauthorized


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(fleet, **overrides) -> dict:
    now = int(time.time())
    claims = {
        "sub": "someone",
        "iat": now,
        "exp": now + 600,
        "scope": "admin",
        "instances": [fleet.a.instance_id],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _secret(settings) -> str:
    return settings.auth.jwt_secret


def forged_tokens(fleet, settings) -> dict[str, str | None]:
    secret = _secret(settings)
    now = int(time.time())
    return {
        "no token": None,
        "garbage": "not-a-jwt",
        "expired": jwt.encode(_claims(fleet, iat=now - 7200, exp=now - 3600), secret),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(fleet))}.",
        "signed with another key": jwt.encode(_claims(fleet), "another-key-" + "z" * 40),
        "string exp": jwt.encode(_claims(fleet, exp=str(now + 600)), secret),
        "HS512 instead of HS256": jwt.encode(_claims(fleet), secret, algorithm="HS512"),
        "no exp": jwt.encode(_claims(fleet, exp=None), secret),
        "no sub": jwt.encode(_claims(fleet, sub=None), secret),
        "no iat": jwt.encode(_claims(fleet, iat=None), secret),
        "lifetime beyond the cap": jwt.encode(_claims(fleet, exp=now + 400 * 86400), secret),
        "issued in the future": jwt.encode(_claims(fleet, iat=now + 3600, exp=now + 7200), secret),
        "unknown scope": jwt.encode(_claims(fleet, scope="root"), secret),
        "instances not a list": jwt.encode(_claims(fleet, instances=fleet.a.instance_id), secret),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "no token",
        "garbage",
        "expired",
        "alg none",
        "signed with another key",
        "string exp",
        "HS512 instead of HS256",
        "no exp",
        "no sub",
        "no iat",
        "lifetime beyond the cap",
        "issued in the future",
        "unknown scope",
        "instances not a list",
    ],
)
async def test_bad_token_is_refused_with_a_json_401(http, fleet, settings, kind):
    token = forged_tokens(fleet, settings)[kind]
    headers = bearer(token) if token else {}
    response = await http.get(f"/instances/{fleet.a.instance_id}", headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "unauthorized"


async def test_valid_token_reads_its_own_instance(http, fleet):
    response = await http.get(
        f"/instances/{fleet.a.instance_id}", headers=bearer(fleet.a.read_token)
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Alpha"
    assert response.json()["device_count"] == 1


async def test_token_for_instance_a_naming_instance_b_is_403(http, fleet):
    response = await http.get(
        f"/instances/{fleet.b.instance_id}", headers=bearer(fleet.a.admin_token)
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "Bravo" not in response.text


async def test_device_of_another_instance_is_404_as_if_missing(http, fleet):
    response = await http.delete(
        f"/devices/{fleet.b.device_token}", headers=bearer(fleet.a.admin_token)
    )
    assert response.status_code == 404
    still_there = await http.delete(
        f"/devices/{fleet.b.device_token}", headers=bearer(fleet.b.admin_token)
    )
    assert still_there.status_code == 204


async def test_super_admin_reaches_every_instance(http, fleet):
    for tenant in (fleet.a, fleet.b):
        response = await http.get(
            f"/instances/{tenant.instance_id}", headers=bearer(fleet.super_admin_token)
        )
        assert response.status_code == 200


async def test_read_scope_cannot_register_devices(http, fleet):
    response = await http.post(
        "/devices", json={"instance_id": fleet.a.instance_id}, headers=bearer(fleet.a.read_token)
    )
    assert response.status_code == 403


async def test_missing_token_is_401_before_the_body_is_judged(http):
    response = await http.post("/devices", json={"nonsense": True})
    assert response.status_code == 401


def test_short_hmac_secret_refuses_to_start(settings):
    from tracker.app import create_app
    from tracker.auth import AuthConfigError

    with pytest.raises(AuthConfigError, match="at least 32 bytes"):
        create_app(settings.replace(auth={"jwt_secret": "short"}))


async def test_public_key_mode_accepts_identity_provider_tokens(nursery, settings, tmp_path):
    import httpx
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.conftest import start_server
    from tracker.app import create_app
    from tracker.store import instances

    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    settings = settings.replace(
        auth={"jwt_secret": "", "jwt_public_key_file": str(tmp_path / "idp.pem")}
    )
    app = create_app(settings)
    instance = app.extensions["tracker"].db.write_sync(instances.create, "IdP fleet")
    server = await start_server(nursery, app, settings)
    now = int(time.time())
    claims = {
        "sub": "u1",
        "iat": now,
        "exp": now + 600,
        "scope": "read",
        "instances": [instance.id],
    }
    good = jwt.encode(claims, private, algorithm="ES256")
    hs_with_public_key = jwt.encode(claims, "x" * 40, algorithm="HS256")
    async with httpx.AsyncClient(base_url=server.api) as client:
        ok = await client.get(f"/instances/{instance.id}", headers=bearer(good))
        assert ok.status_code == 200
        forged = await client.get(f"/instances/{instance.id}", headers=bearer(hs_with_public_key))
        assert forged.status_code == 401


async def test_a_remembered_token_still_expires_and_is_not_valid_before_it_was_issued(
    tracker, fleet
):
    """Verified tokens are remembered (a dashboard polls with one token); the memory
    never outlives the token, nor makes it valid before its iat."""
    verifier = tracker.verifier
    leeway = verifier.leeway_seconds
    issued = time.time() - 600 - leeway + 1.5  # expires, leeway included, in 1.5 s
    token = verifier.mint(
        subject="poller", instances=[fleet.a.instance_id], scope="read", ttl_seconds=600, now=issued
    )
    assert verifier.verify(token).subject == "poller"
    assert verifier.verify(token).subject == "poller"  # remembered
    with pytest.raises(Unauthorized, match="issued in the future"):
        verifier.verify(token, now=issued - 3600)
    await trio.sleep(2)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)


async def test_a_token_is_refused_once_expired_past_the_configured_leeway(settings, tmp_path):
    from tracker.app import create_app

    app = create_app(settings.replace(auth={"clock_leeway_seconds": 0.5}))
    verifier = app.extensions["tracker"].verifier
    token = verifier.mint(subject="brief", instances="*", scope="read", ttl_seconds=1)
    assert verifier.verify(token).subject == "brief"
    await trio.sleep(1.7)  # 1 s of life, 0.5 s of leeway, and a margin for iat's rounding
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)


@pytest.mark.parametrize("scope", ["read", "admin"])
async def test_read_and_admin_tokens_cannot_pretend_to_be_bound_to_one_device(
    client, tracker, fleet, scope
):
    with pytest.raises(AuthConfigError, match="binds only an ingest token"):
        tracker.verifier.mint(
            subject="x",
            instances=[fleet.a.instance_id],
            scope=scope,
            ttl_seconds=60,
            device_token=fleet.a.device_token,
        )
    # A token from elsewhere (an identity provider) with such a claim is refused outright.
    now = int(time.time())
    claims = {
        "sub": "idp",
        "iat": now,
        "exp": now + 60,
        "scope": scope,
        "instances": [fleet.a.instance_id],
        "device": fleet.a.device_token,
    }
    token = jwt.encode(claims, tracker.settings.auth.jwt_secret, algorithm="HS256")
    response = await client.get(
        f"/api/v1/devices/{fleet.b.device_token}/position", headers=bearer(token)
    )
    assert response.status_code == 401
    assert "binds only an ingest token" in (await response.get_json())["error"]["message"]
