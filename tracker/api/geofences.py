"""Geofences: create and change (admin), list and read (read or admin), per instance.

A fence is a circle (`circle`: centre and radius) or a GeoJSON `polygon`,
optionally only for some of the instance's devices. Entering and leaving are
decided by tracker/geofences.py on each live fix.
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

from tracker.api import requires
from tracker.api.schemas import (
    GeofenceList,
    GeofenceQuery,
    GeofenceView,
    NoContent,
    RequiredInstanceQuery,
    document_errors,
)
from tracker.auth import Principal
from tracker.context import current
from tracker.domain import StoredGeofence
from tracker.errors import BadRequest, NotFound, Unprocessable
from tracker.geofences import GeofenceIndex, polygon_problem
from tracker.models import ShortText
from tracker.store import devices as devices_store
from tracker.store import geofences as geofences_store

blueprint = Blueprint("geofences", __name__)
tag_blueprint(blueprint, ["geofences"])
security_scheme_blueprint(blueprint, [{"bearer": []}])

MAX_DEVICES_PER_FENCE = 1000


class Circle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latitude: float = Field(ge=-90, le=90, allow_inf_nan=False, strict=True)
    longitude: float = Field(ge=-180, le=180, allow_inf_nan=False, strict=True)
    radius_m: float = Field(gt=0, le=1_000_000, allow_inf_nan=False, strict=True)


class GeofenceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ShortText
    circle: Circle | None = None
    polygon: dict | None = None
    device_tokens: list[str] | None = Field(None, max_length=MAX_DEVICES_PER_FENCE)


class GeofenceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ShortText | None = None
    circle: Circle | None = None
    polygon: dict | None = None
    device_tokens: list[str] | None = Field(None, max_length=MAX_DEVICES_PER_FENCE)


def _shape(circle: Circle | None, polygon: dict | None) -> dict:
    if (circle is None) == (polygon is None):
        raise Unprocessable("give exactly one of circle and polygon")
    if circle is not None:
        return {"circle": circle.model_dump()}
    problem = polygon_problem(polygon)
    if problem:
        raise Unprocessable(problem)
    return {"polygon": {"type": "Polygon", "coordinates": polygon["coordinates"]}}


async def _devices(instance_id: str, tokens: list[str] | None) -> list[str] | None:
    if tokens is None:
        return None
    found = await current().db.read(devices_store.in_instance, instance_id, tokens)
    missing = [token for token in tokens if token not in found]
    if missing:
        raise Unprocessable(f"device_tokens: no such device {missing[0][:64]!r} in the instance")
    return sorted(set(tokens))


def view(fence: StoredGeofence) -> dict:
    return {
        "id": fence.id,
        "instance_id": fence.instance_id,
        "name": fence.name,
        **fence.shape,
        "device_tokens": fence.device_tokens,
        "created_at": int(fence.created_at),
    }


def _instance_arg(principal: Principal) -> str:
    instance_id = request.args.get("instance_id")
    if not instance_id:
        raise BadRequest("instance_id is required")
    principal.require_instance(instance_id)
    return instance_id


async def _visible_fence(principal: Principal, fence_id: str) -> StoredGeofence:
    fence = await current().db.read(geofences_store.get, fence_id)
    owner = fence.instance_id if fence else None
    principal.require_owner_visible(owner, request.args.get("instance_id"), "no such geofence")
    return fence


def _changed(index: GeofenceIndex, instance_id: str, change, *args):
    """A store change, and the writer's cache of the instance's fences forgotten, in one
    transaction (the writer thread is the cache's only user)."""

    def apply(conn):
        result = change(conn, *args)
        index.forget(instance_id)
        return result

    return apply


@blueprint.post("/geofences")
@document_querystring(RequiredInstanceQuery)
@document_response(GeofenceView, 201)
@document_errors(400, 401, 403, 413, 415, 422)
@operation_id("geofences")
@requires("admin")
@validate_request(GeofenceCreate)
async def create_geofence(data: GeofenceCreate, principal: Principal) -> tuple[dict, int]:
    instance_id = _instance_arg(principal)
    fence = StoredGeofence(
        id=uuid.uuid4().hex,
        instance_id=instance_id,
        name=data.name,
        shape=_shape(data.circle, data.polygon),
        device_tokens=await _devices(instance_id, data.device_tokens),
        created_at=time.time(),
    )
    tracker = current()
    await tracker.db.write(
        _changed(tracker.writer.geofences, instance_id, geofences_store.create, fence)
    )
    return view(fence), 201


@blueprint.get("/geofences")
@document_querystring(RequiredInstanceQuery)
@document_response(GeofenceList)
@document_errors(400, 401, 403)
@operation_id("geofences")
@requires("read", "admin")
async def list_geofences(principal: Principal) -> dict:
    instance_id = _instance_arg(principal)
    found = await current().db.read(geofences_store.list_for_instance, instance_id)
    return {"items": [view(fence) for fence in found]}


@blueprint.get("/geofences/<geofence_id>")
@document_querystring(GeofenceQuery)
@document_response(GeofenceView)
@document_errors(401, 403, 404)
@operation_id("geofence")
@requires("read", "admin")
async def get_geofence(geofence_id: str, principal: Principal) -> dict:
    return view(await _visible_fence(principal, geofence_id))


@blueprint.patch("/geofences/<geofence_id>")
@document_querystring(GeofenceQuery)
@document_response(GeofenceView)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("geofence")
@requires("admin")
@validate_request(GeofenceUpdate)
async def update_geofence(geofence_id: str, data: GeofenceUpdate, principal: Principal) -> dict:
    fence = await _visible_fence(principal, geofence_id)
    given = data.model_fields_set
    changes: dict = {}
    if "name" in given:
        if data.name is None:
            raise Unprocessable("name: may not be null")
        changes["name"] = data.name
    if given & {"circle", "polygon"}:
        changes["shape"] = _shape(data.circle, data.polygon)
    if "device_tokens" in given:
        changes["device_tokens"] = await _devices(fence.instance_id, data.device_tokens)
    tracker = current()
    if not await tracker.db.write(
        _changed(
            tracker.writer.geofences,
            fence.instance_id,
            geofences_store.update,
            geofence_id,
            changes,
        )
    ):
        raise NotFound("no such geofence")
    return view(await tracker.db.read(geofences_store.get, geofence_id))


@blueprint.delete("/geofences/<geofence_id>")
@document_querystring(GeofenceQuery)
@document_response(NoContent, 204)
@document_errors(401, 403, 404)
@operation_id("geofence")
@requires("admin")
async def delete_geofence(geofence_id: str, principal: Principal) -> tuple[str, int]:
    fence = await _visible_fence(principal, geofence_id)
    tracker = current()
    await tracker.db.write(
        _changed(tracker.writer.geofences, fence.instance_id, geofences_store.delete, geofence_id)
    )
    return "", 204
