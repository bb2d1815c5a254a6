"""Signing in: `POST {api_prefix}/auth/login` trades a username and password for a JWT.

The token is of the existing model (tracker/accounts.py says how the role
becomes a scope), valid `auth.session_hours`, and accepted everywhere a
minted token is. Signing out is the client forgetting it.

A failure is one answer whatever went wrong (unknown user, wrong password):
401 "wrong username or password", after a password check that costs the
same either way. Failures are throttled per username and per client address
(429 with Retry-After) and logged with the username and address, never the
password.
"""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, request
from quart_schema import (
    document_response,
    operation_id,
    security_scheme_blueprint,
    tag_blueprint,
    validate_request,
)

from tracker.accounts import MAX_PASSWORD_LENGTH, sign_in_token
from tracker.api.schemas import SignedIn, document_errors
from tracker.auth import AuthConfigError
from tracker.context import current
from tracker.errors import Forbidden, RateLimited, Unauthorized
from tracker.store import users as users_store

log = logging.getLogger("tracker")

blueprint = Blueprint("auth", __name__)
tag_blueprint(blueprint, ["auth"])
security_scheme_blueprint(blueprint, [])  # the credential is in the body

MAX_USERNAME_LENGTH = 64


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=MAX_USERNAME_LENGTH)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


@blueprint.post("/auth/login")
@document_response(SignedIn)
@document_errors(400, 401, 403, 413, 415, 422, 429)
@operation_id("auth_login")
@validate_request(Login)
async def login(data: Login) -> dict:
    tracker = current()
    address = request.remote_addr or "?"
    wait = tracker.sign_ins.retry_after(data.username, address)
    if wait:
        log.warning("sign-in throttled for username %r from %s", data.username, address)
        raise RateLimited(wait)
    user = await tracker.db.read(users_store.by_username, data.username)
    if not await tracker.sign_ins.password_matches(user, data.password):
        tracker.sign_ins.failed(data.username, address)
        log.warning("failed sign-in for username %r from %s", data.username, address)
        raise Unauthorized("wrong username or password")
    try:
        signed_in = sign_in_token(
            tracker.verifier, user, int(tracker.settings.auth.session_hours * 3600), time.time()
        )
    except AuthConfigError:
        raise Forbidden(
            "sign-in is off: this server accepts tokens from its identity provider only"
        ) from None
    log.info("%s signed in from %s", user.username, address)
    return {
        "token": signed_in.token,
        "expires_at": signed_in.expires_at,
        "scope": signed_in.scope,
        "instances": signed_in.instances,
        "username": user.username,
    }
