"""Devices over REST: the fleet list, and registration (create, rotate the ingest key,
set the profile and the MQTT topic, delete).

The ingest key is answered once, at registration or rotation, and stored
hashed. Device reads (position, tracks, stats) live in api/positions.py; the
display-name endpoints in api/metadata.py.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, request
from quart_schema import (
    document_querystring,
    document_response,
    operation_id,
    security_scheme_blueprint,
    tag_blueprint,
    validate_request,
)

from tracker.api import page, pagination, requires, visible_device
from tracker.api.schemas import (
    DeviceCreated,
    DeviceListQuery,
    DeviceMqttTopic,
    DevicePage,
    DeviceProfile,
    IngestKey,
    NoContent,
    document_errors,
)
from tracker.auth import Principal
from tracker.context import current
from tracker.errors import BadRequest, Conflict, NotFound, Unprocessable
from tracker.fleet import device_status
from tracker.ingest.mqtt import is_subscribed, subscription
from tracker.models import DeviceToken, DisplayField, MqttTopic, Position, Profile
from tracker.profiles import display_value
from tracker.store import devices, instances

blueprint = Blueprint("devices", __name__)
tag_blueprint(blueprint, ["devices"])
security_scheme_blueprint(blueprint, [{"bearer": []}])


MAX_QUERY_LENGTH = 100


def _last_fix(position: Position | None) -> dict | None:
    if position is None:
        return None
    return {
        "latitude": position.latitude,
        "longitude": position.longitude,
        "speed": position.speed,
        "heading": position.heading,
        "accuracy": position.accuracy,
        "timestamp": int(position.timestamp),
    }


@blueprint.get("/devices")
@document_querystring(DeviceListQuery)
@document_response(DevicePage)
@document_errors(400, 401, 403)
@operation_id("devices")
@requires("read", "admin")
async def list_devices(principal: Principal) -> dict:
    instance_id = request.args.get("instance_id")
    if not instance_id:
        raise BadRequest("instance_id is required")
    principal.require_instance(instance_id)
    limit, offset = pagination()
    q = request.args.get("q") or None
    if q is not None and len(q) > MAX_QUERY_LENGTH:
        raise BadRequest(f"q is at most {MAX_QUERY_LENGTH} characters")
    tracker = current()
    found, total = await tracker.db.read(devices.search, instance_id, q, limit, offset)
    now = time.time()
    offline_after = tracker.settings.console.offline_after_seconds
    items = [
        {
            "device_token": device.token,
            "display_name": display_value(device.profile, device.display_field, device.token),
            "last_position": _last_fix(position),
            "track_token": position.track_token if position else None,
            "status": device_status(position, now, offline_after),
        }
        for device, position in found
    ]
    return page(items, total, limit, offset)


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance_id: str = Field(max_length=64)
    device_token: DeviceToken | None = None
    profile: Profile | None = None
    display_field: DisplayField = "full_name"
    mqtt_topic: MqttTopic | None = None


class MqttTopicUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mqtt_topic: MqttTopic | None  # null: the device no longer takes OwnTracks over MQTT


def _subscribed_topic(topic: str | None) -> str | None:
    """The topic, if tracker's subscription covers it; 422 otherwise (it would never arrive)."""
    prefix = current().settings.ingest.mqtt_topic_prefix
    if topic is not None and not is_subscribed(topic, prefix):
        raise Unprocessable(
            f"tracker subscribes to {subscription(prefix)}: messages on {topic} would never"
            " arrive (ingest.mqtt_topic_prefix sets the first level)",
            details=[{"field": "mqtt_topic", "message": f"must match {subscription(prefix)}"}],
        )
    return topic


@blueprint.post("/devices")
@document_response(DeviceCreated, 201)
@document_errors(400, 401, 403, 404, 409, 413, 415, 422)
@operation_id("device")
@requires("admin")
@validate_request(DeviceCreate)
async def create_device(data: DeviceCreate, principal: Principal) -> tuple[dict, int]:
    principal.require_instance(data.instance_id)
    db = current().db
    if await db.read(instances.get, data.instance_id) is None:
        raise NotFound("no such instance")
    token = data.device_token or str(uuid.uuid4())
    profile = data.profile.as_dict() if data.profile else {}
    topic = _subscribed_topic(data.mqtt_topic)
    try:
        device, key = await db.write(
            devices.create, data.instance_id, token, profile, data.display_field, topic
        )
    except devices.DuplicateDevice:
        raise Conflict("a device with this token already exists") from None
    except devices.DuplicateMqttTopic:
        raise Conflict("another device already has this MQTT topic") from None
    created = {
        "device_token": device.token,
        "instance_id": device.instance_id,
        "ingest_key": key,
        "profile": device.profile,
        "display_field": device.display_field,
        "created_at": int(device.created_at),
    }
    if device.mqtt_topic is not None:
        created["mqtt_topic"] = device.mqtt_topic
    return created, 201


@blueprint.post("/devices/<device_token>/ingest-key")
@document_response(IngestKey)
@document_errors(401, 403, 404)
@operation_id("device_ingest_key")
@requires("admin")
async def rotate_ingest_key(device_token: str, principal: Principal) -> dict:
    await visible_device(principal, device_token)
    key = await current().db.write(devices.rotate_ingest_key, device_token)
    if key is None:
        raise NotFound("no such device")
    return {"device_token": device_token, "ingest_key": key}


@blueprint.put("/devices/<device_token>/profile")
@document_response(DeviceProfile)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("device_profile")
@requires("admin")
@validate_request(Profile)
async def set_profile(device_token: str, data: Profile, principal: Principal) -> dict:
    await visible_device(principal, device_token)
    await current().db.write(devices.set_profile, device_token, data.as_dict())
    return {"device_token": device_token, "profile": data.as_dict()}


@blueprint.put("/devices/<device_token>/mqtt-topic")
@document_response(DeviceMqttTopic)
@document_errors(400, 401, 403, 404, 409, 413, 415, 422)
@operation_id("device_mqtt_topic")
@requires("admin")
@validate_request(MqttTopicUpdate)
async def set_mqtt_topic(device_token: str, data: MqttTopicUpdate, principal: Principal) -> dict:
    """Give the device the topic its OwnTracks app publishes to over MQTT (null: none)."""
    await visible_device(principal, device_token)
    topic = _subscribed_topic(data.mqtt_topic)
    try:
        found = await current().db.write(devices.set_mqtt_topic, device_token, topic)
    except devices.DuplicateMqttTopic:
        raise Conflict("another device already has this MQTT topic") from None
    if not found:
        raise NotFound("no such device")
    return {"device_token": device_token, "mqtt_topic": topic}


@blueprint.delete("/devices/<device_token>")
@document_response(NoContent, 204)
@document_errors(401, 403, 404)
@operation_id("device")
@requires("admin")
async def delete_device(device_token: str, principal: Principal) -> tuple[str, int]:
    await visible_device(principal, device_token)
    await current().db.write(devices.delete, device_token)
    return "", 204
