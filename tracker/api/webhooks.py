"""Webhooks, admin side: create (the secret shown once), list, read, change, delete,
the delivery log, and a test event. Delivery itself is tracker/webhooks.py."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Literal

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
from tracker.api import pagination, requires
from tracker.api.schemas import (
    NoContent,
    WebhookCreated,
    WebhookDeliveryPage,
    WebhookList,
    WebhookListQuery,
    WebhookPageQuery,
    WebhookQuery,
    WebhookTestQueued,
    WebhookView,
    document_errors,
)
from tracker.auth import Principal
from tracker.context import current
from tracker.domain import Webhook
from tracker.errors import BadRequest, NotFound, Unprocessable
from tracker.models import ShortText
from tracker.store import events as events_store
from tracker.store import webhooks as webhooks_store
from tracker.webhooks import UnsafeTarget, new_secret, resolve_target

blueprint = Blueprint("webhooks", __name__)
tag_blueprint(blueprint, ["webhooks"])
security_scheme_blueprint(blueprint, [{"bearer": []}])

MAX_URL_LENGTH = 2048
EventType = Literal[events.EVENT_TYPES]  # type: ignore[valid-type]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    event_types: list[EventType] = Field(min_length=1, max_length=len(events.EVENT_TYPES))
    enabled: StrictBool = True
    description: ShortText | None = None


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=MAX_URL_LENGTH)
    event_types: list[EventType] | None = Field(
        None, min_length=1, max_length=len(events.EVENT_TYPES)
    )
    enabled: StrictBool | None = None
    description: ShortText | None = None


def _event_types(given: list[str]) -> list[str]:
    return sorted(set(given), key=events.EVENT_TYPES.index)


async def _checked_url(url: str) -> str:
    try:
        await resolve_target(url, current().settings.webhooks.allow_private_targets)
    except UnsafeTarget as problem:
        raise Unprocessable(str(problem)) from None
    return url


def view(webhook: Webhook) -> dict:
    def whole(value: float | None) -> int | None:
        return None if value is None else int(value)

    return {
        "id": webhook.id,
        "instance_id": webhook.instance_id,
        "url": webhook.url,
        "event_types": webhook.event_types,
        "enabled": webhook.enabled,
        "disabled_reason": webhook.disabled_reason,
        "description": webhook.description,
        "created_at": int(webhook.created_at),
        "failing_since": whole(webhook.failing_since),
        "next_attempt_at": whole(webhook.next_attempt_at),
    }


def _instance_arg(principal: Principal) -> str:
    instance_id = request.args.get("instance_id")
    if not instance_id:
        raise BadRequest("instance_id is required")
    principal.require_instance(instance_id)
    return instance_id


async def _visible_webhook(principal: Principal, webhook_id: str) -> Webhook:
    webhook = await current().db.read(webhooks_store.get, webhook_id)
    owner = webhook.instance_id if webhook else None
    principal.require_owner_visible(owner, request.args.get("instance_id"), "no such webhook")
    return webhook


def _create(conn, webhook: Webhook) -> None:
    """New webhooks hear events from now on, not the outbox's past."""
    webhooks_store.create(conn, replace(webhook, cursor=events_store.last_seq(conn)))


@blueprint.post("/webhooks")
@document_querystring(WebhookListQuery)
@document_response(WebhookCreated, 201)
@document_errors(400, 401, 403, 413, 415, 422)
@operation_id("webhooks")
@requires("admin")
@validate_request(WebhookCreate)
async def create_webhook(data: WebhookCreate, principal: Principal) -> tuple[dict, int]:
    instance_id = _instance_arg(principal)
    webhook = Webhook(
        id=uuid.uuid4().hex,
        instance_id=instance_id,
        url=await _checked_url(data.url),
        event_types=_event_types(data.event_types),
        enabled=data.enabled,
        disabled_reason=None,
        secret=new_secret(),
        description=data.description,
        created_at=time.time(),
        cursor=0,
        failing_since=None,
        next_attempt_at=None,
    )
    tracker = current()
    await tracker.db.write(_create, webhook)
    return {**view(webhook), "secret": webhook.secret}, 201


@blueprint.get("/webhooks")
@document_querystring(WebhookListQuery)
@document_response(WebhookList)
@document_errors(400, 401, 403)
@operation_id("webhooks")
@requires("admin")
async def list_webhooks(principal: Principal) -> dict:
    instance_id = _instance_arg(principal)
    found = await current().db.read(webhooks_store.list_for_instance, instance_id)
    return {"items": [view(webhook) for webhook in found]}


@blueprint.get("/webhooks/<webhook_id>")
@document_querystring(WebhookQuery)
@document_response(WebhookView)
@document_errors(401, 403, 404)
@operation_id("webhook")
@requires("admin")
async def get_webhook(webhook_id: str, principal: Principal) -> dict:
    return view(await _visible_webhook(principal, webhook_id))


@blueprint.patch("/webhooks/<webhook_id>")
@document_querystring(WebhookQuery)
@document_response(WebhookView)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("webhook")
@requires("admin")
@validate_request(WebhookUpdate)
async def update_webhook(webhook_id: str, data: WebhookUpdate, principal: Principal) -> dict:
    await _visible_webhook(principal, webhook_id)
    changes: dict = {}
    for name in data.model_fields_set:
        value = getattr(data, name)
        if name == "url":
            if value is None:
                raise Unprocessable("url: may not be null")
            changes[name] = await _checked_url(value)
        elif name == "event_types":
            if value is None:
                raise Unprocessable("event_types: may not be null")
            changes[name] = _event_types(value)
        elif name == "enabled":
            if value is None:
                raise Unprocessable("enabled: may not be null")
            changes[name] = value
        else:
            changes[name] = value
    db = current().db
    if not await db.write(webhooks_store.update, webhook_id, changes):
        raise NotFound("no such webhook")
    return view(await db.read(webhooks_store.get, webhook_id))


@blueprint.delete("/webhooks/<webhook_id>")
@document_querystring(WebhookQuery)
@document_response(NoContent, 204)
@document_errors(401, 403, 404)
@operation_id("webhook")
@requires("admin")
async def delete_webhook(webhook_id: str, principal: Principal) -> tuple[str, int]:
    await _visible_webhook(principal, webhook_id)
    await current().db.write(webhooks_store.delete, webhook_id)
    return "", 204


@blueprint.get("/webhooks/<webhook_id>/deliveries")
@document_querystring(WebhookPageQuery)
@document_response(WebhookDeliveryPage)
@document_errors(400, 401, 403, 404)
@operation_id("webhook_deliveries")
@requires("admin")
async def list_deliveries(webhook_id: str, principal: Principal) -> dict:
    await _visible_webhook(principal, webhook_id)
    limit, offset = pagination()
    found, total = await current().db.read(webhooks_store.deliveries, webhook_id, limit, offset)
    items = [
        {
            "event_id": d.event_id,
            "event_type": d.event_type,
            "attempt": d.attempt,
            "attempted_at": d.attempted_at,
            "duration_ms": d.duration_ms,
            "status_code": d.status_code,
            "error": d.error,
            "outcome": d.outcome,
        }
        for d in found
    ]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@blueprint.post("/webhooks/<webhook_id>/test")
@document_querystring(WebhookQuery)
@document_response(WebhookTestQueued, 202)
@document_errors(401, 403, 404)
@operation_id("webhook_test")
@requires("admin")
async def send_test_event(webhook_id: str, principal: Principal) -> tuple[dict, int]:
    webhook = await _visible_webhook(principal, webhook_id)
    tracker = current()
    data = {"webhook_id": webhook.id, "message": "a test event from tracker"}
    event = await tracker.db.write(
        events.emit, webhook.instance_id, events.WEBHOOK_TEST, data, time.time(), webhook.id
    )
    events.announce(tracker.broker, [event])
    return {"event_id": event.id}, 202
