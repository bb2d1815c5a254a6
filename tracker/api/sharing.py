"""Share sessions, admin side: create, list, read, update, complete, cancel.

The share token is answered once, at creation (only its hash is stored).
Ending or updating an ended session is 409. Every change is an event
(tracker/events.py), announced after its commit, so live viewers see it at once.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, StrictBool
from quart import Blueprint, request
from quart_schema import (
    document_querystring,
    document_response,
    operation_id,
    security_scheme_blueprint,
    tag_blueprint,
    validate_request,
)

from tracker import events
from tracker.api import page, pagination, requires, visible_device
from tracker.api.schemas import (
    SessionListQuery,
    SessionQuery,
    ShareSessionCreated,
    ShareSessionPage,
    document_errors,
)
from tracker.api.schemas import ShareSession as ShareSessionView
from tracker.api.share import device_state
from tracker.auth import Principal
from tracker.context import current
from tracker.domain import ACTIVE, CANCELLED, COMPLETED, STATUSES, ShareSession
from tracker.errors import BadRequest, Conflict, Unprocessable
from tracker.models import LongText, ShortText
from tracker.sharing import (
    admin_view,
    effective_status,
    eta_for,
    hash_share_token,
    links,
    new_share_token,
)
from tracker.store import sessions as sessions_store

blueprint = Blueprint("sharing", __name__)
tag_blueprint(blueprint, ["sharing"])
security_scheme_blueprint(blueprint, [{"bearer": []}])

DEFAULT_EXPIRES_IN_HOURS = 4


class Destination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latitude: float = Field(ge=-90, le=90, allow_inf_nan=False, strict=True)
    longitude: float = Field(ge=-180, le=180, allow_inf_nan=False, strict=True)
    label: ShortText | None = None


class ShareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    show_speed: StrictBool | None = None
    show_heading: StrictBool | None = None
    show_eta: StrictBool | None = None
    show_destination_on_map: StrictBool | None = None
    auto_complete_on_arrival: StrictBool | None = None

    def given(self) -> dict[str, bool]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ShareCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_token: str = Field(min_length=1, max_length=128)
    instance_id: str | None = Field(None, max_length=64)
    expires_in_hours: float = Field(
        DEFAULT_EXPIRES_IN_HOURS, gt=0, allow_inf_nan=False, strict=True
    )
    recipient_name: ShortText | None = None
    notes: LongText | None = None
    order_id: ShortText | None = None
    destination: Destination | None = None
    share_config: ShareConfig | None = None


class ShareUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    destination: Destination | None = None
    share_config: ShareConfig | None = None
    notes: LongText | None = None
    recipient_name: ShortText | None = None
    order_id: ShortText | None = None


def _destination(value: Destination | None) -> dict | None:
    return value.model_dump(exclude_none=True) if value else None


@blueprint.post("/sharing/sessions")
@document_response(ShareSessionCreated, 201)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("sharing_sessions")
@requires("admin")
@validate_request(ShareCreate)
async def create_session(data: ShareCreate, principal: Principal) -> tuple[dict, int]:
    tracker = current()
    device = await visible_device(principal, data.device_token, data.instance_id)
    max_hours = tracker.settings.sharing.max_expires_in_hours
    if data.expires_in_hours > max_hours:
        raise Unprocessable(f"expires_in_hours: at most {max_hours:g}")
    token = new_share_token()
    now = time.time()
    session = ShareSession(
        id=uuid.uuid4().hex,
        token_hash=hash_share_token(token),
        instance_id=device.instance_id,
        device_token=device.token,
        status=ACTIVE,
        end_reason=None,
        created_at=now,
        expires_at=now + data.expires_in_hours * 3600,
        ended_at=None,
        recipient_name=data.recipient_name,
        notes=data.notes,
        order_id=data.order_id,
        destination=_destination(data.destination),
        share_config=data.share_config.given() if data.share_config else {},
    )
    created = await tracker.db.write(events.share_created, session, now)
    events.announce(tracker.broker, [created])
    session_links = links(tracker.settings, token)
    return {
        **admin_view(session, now),
        "share_token": token,
        "share_url": session_links["map_url"],
        "links": session_links,
    }, 201


def _instance_arg(principal: Principal) -> str:
    instance_id = request.args.get("instance_id")
    if not instance_id:
        raise BadRequest("instance_id is required")
    principal.require_instance(instance_id)
    return instance_id


@blueprint.get("/sharing/sessions")
@document_querystring(SessionListQuery)
@document_response(ShareSessionPage)
@document_errors(400, 401, 403)
@operation_id("sharing_sessions")
@requires("read", "admin")
async def list_sessions(principal: Principal) -> dict:
    instance_id = _instance_arg(principal)
    limit, offset = pagination()
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}, got {status[:40]!r}")
    now = time.time()
    sessions, total = await current().db.read(
        lambda conn: sessions_store.search(
            conn,
            instance_id,
            now,
            status=status,
            device_token=_arg("device_token"),
            order_id=_arg("order_id"),
            limit=limit,
            offset=offset,
        )
    )
    etas = await current().db.read(_etas, sessions, now, current().settings)
    items = [
        {**admin_view(s, now), **({"eta_seconds": etas[s.id]} if s.id in etas else {})}
        for s in sessions
    ]
    return page(items, total, limit, offset)


def _etas(conn, sessions: list[ShareSession], now: float, settings) -> dict[str, int | None]:
    """The ETA of each active session with a destination (what its recipient sees)."""
    etas: dict[str, int | None] = {}
    for session in sessions:
        if effective_status(session, now) == ACTIVE and session.destination:
            state = device_state(conn, session, with_trail=False)
            etas[session.id] = eta_for(session, state.position, state.speed, settings)
    return etas


def _arg(name: str) -> str | None:
    return request.args.get(name) or None


async def _visible_session(principal: Principal, session_id: str) -> ShareSession:
    """The session, when the caller's token covers its instance; else 404 (403 for a named foreign instance)."""
    session = await current().db.read(sessions_store.get, session_id)
    owner = session.instance_id if session else None
    principal.require_owner_visible(owner, request.args.get("instance_id"), "no such share session")
    return session


@blueprint.get("/sharing/sessions/<session_id>")
@document_querystring(SessionQuery)
@document_response(ShareSessionView)
@document_errors(401, 403, 404)
@operation_id("sharing_session")
@requires("read", "admin")
async def get_session(session_id: str, principal: Principal) -> dict:
    return admin_view(await _visible_session(principal, session_id))


def _already_ended(session: ShareSession) -> Conflict:
    return Conflict(
        f"the session is {effective_status(session)}", details={"status": effective_status(session)}
    )


@blueprint.patch("/sharing/sessions/<session_id>")
@document_querystring(SessionQuery)
@document_response(ShareSessionView)
@document_errors(400, 401, 403, 404, 409, 413, 415, 422)
@operation_id("sharing_session")
@requires("admin")
@validate_request(ShareUpdate)
async def update_session(session_id: str, data: ShareUpdate, principal: Principal) -> dict:
    tracker = current()
    session = await _visible_session(principal, session_id)
    changes: dict = {}
    for name in data.model_fields_set:
        value = getattr(data, name)
        if name == "destination":
            changes[name] = _destination(value)
        elif name == "share_config":
            changes[name] = {**session.share_config, **(value.given() if value else {})}
        else:
            changes[name] = value
    updated = await tracker.db.write(events.share_updated, session_id, changes, time.time())
    if updated is None:
        raise _already_ended(session)
    events.announce(tracker.broker, [updated])
    return admin_view(await tracker.db.read(sessions_store.get, session_id))


async def _end(principal: Principal, session_id: str, status: str) -> dict:
    tracker = current()
    session = await _visible_session(principal, session_id)
    now = time.time()
    ended = await tracker.db.write(events.end_share, session_id, status, status, now)
    if ended is None:
        raise _already_ended(session)
    events.announce(tracker.broker, [ended])
    return admin_view(await tracker.db.read(sessions_store.get, session_id), now)


@blueprint.post("/sharing/sessions/<session_id>/complete")
@document_querystring(SessionQuery)
@document_response(ShareSessionView)
@document_errors(401, 403, 404, 409)
@operation_id("sharing_session_complete")
@requires("admin")
async def complete_session(session_id: str, principal: Principal) -> dict:
    return await _end(principal, session_id, COMPLETED)


@blueprint.delete("/sharing/sessions/<session_id>")
@document_querystring(SessionQuery)
@document_response(ShareSessionView)
@document_errors(401, 403, 404, 409)
@operation_id("sharing_session")
@requires("admin")
async def cancel_session(session_id: str, principal: Principal) -> dict:
    return await _end(principal, session_id, CANCELLED)
