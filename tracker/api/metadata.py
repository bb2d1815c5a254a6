"""Device metadata over REST: each device's display name, the field it comes from, its profile.

Reads need a read or admin token; changes an admin token. The per-device
routes take `instance_id` optionally (the device's own instance is used, and
checked against the token); the instance-wide routes (list, bulk, refresh
all) require it. The display-name rule and the user-service client live in
tracker/profiles.py; this module parses, authorizes, and shapes the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

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
    DeviceMetadata,
    DeviceMetadataPage,
    DisplayFieldsUpdated,
    InstanceQuery,
    MetadataListQuery,
    RefreshSummary,
    RequiredInstanceQuery,
    document_errors,
)
from tracker.auth import Principal
from tracker.context import current
from tracker.domain import Device
from tracker.errors import BadRequest, NotFound, Unprocessable
from tracker.models import DisplayField, ShortText
from tracker.profiles import DISPLAY_FIELDS, RefreshReport, display_value, refresh_profiles
from tracker.store import devices, instances

blueprint = Blueprint("metadata", __name__)
tag_blueprint(blueprint, ["metadata"])
security_scheme_blueprint(blueprint, [{"bearer": []}])

MAX_BULK_MAPPINGS = 500
MAX_REFRESH_DEVICES = 500


class DisplayFieldChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    display_field: DisplayField


class DisplayFieldMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_token: ShortText = Field(min_length=1, max_length=128)
    # Checked by the handler, not by the type, so that a bad one is named
    # `mappings[i].display_field` beside the device checks of the same request.
    display_field: str = Field(max_length=64, json_schema_extra={"enum": list(DISPLAY_FIELDS)})


class BulkDisplayFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mappings: list[DisplayFieldMapping] = Field(min_length=1, max_length=MAX_BULK_MAPPINGS)


class RefreshSelection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_tokens: list[ShortText] | None = Field(None, max_length=MAX_REFRESH_DEVICES)


def metadata_of(device: Device) -> dict:
    return {
        "device_token": device.token,
        "display_field": device.display_field,
        "display_value": display_value(device.profile, device.display_field, device.token),
        "profile": device.profile,
    }


def _optional_instance() -> str | None:
    return request.args.get("instance_id") or None


async def _required_instance(principal: Principal) -> str:
    """The `instance_id` query parameter: 400 without it, 403 outside the token, 404 unknown."""
    instance_id = _optional_instance()
    if instance_id is None:
        raise BadRequest("instance_id is required")
    principal.require_instance(instance_id)
    if await current().db.read(instances.get, instance_id) is None:
        raise NotFound("no such instance")
    return instance_id


def validate_optional_request(model: type[BaseModel]) -> Callable:
    """validate_request for a body that may be left out: the handler then gets `data=None`."""

    def decorator(handler: Callable) -> Callable:
        validated = validate_request(model)(handler)

        @wraps(validated)  # keeps quart-schema's marker, so the body is in the OpenAPI document
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not await request.get_data():
                return await handler(*args, data=None, **kwargs)
            return await validated(*args, **kwargs)

        return wrapper

    return decorator


def _report(report: RefreshReport) -> dict:
    return {
        "source": report.source,
        "refreshed": [
            {
                "device_token": device.token,
                "display_value": display_value(device.profile, device.display_field, device.token),
            }
            for device in report.refreshed
        ],
        "failed": [
            {"device_token": failure.device_token, "reason": failure.reason}
            for failure in report.failed
        ],
    }


@blueprint.get("/devices/metadata")
@document_querystring(MetadataListQuery)
@document_response(DeviceMetadataPage)
@document_errors(400, 401, 403, 404)
@operation_id("devices_metadata")
@requires("read", "admin")
async def list_metadata(principal: Principal) -> dict:
    instance_id = await _required_instance(principal)
    limit, offset = pagination()
    found, total = await current().db.read(devices.list_for_instance, instance_id, limit, offset)
    return page([metadata_of(device) for device in found], total, limit, offset)


@blueprint.get("/devices/<device_token>/metadata")
@document_querystring(InstanceQuery)
@document_response(DeviceMetadata)
@document_errors(401, 403, 404)
@operation_id("device_metadata")
@requires("read", "admin")
async def get_metadata(device_token: str, principal: Principal) -> dict:
    device = await visible_device(principal, device_token, _optional_instance())
    return metadata_of(device)


@blueprint.patch("/devices/<device_token>/metadata/display-field")
@document_querystring(InstanceQuery)
@document_response(DeviceMetadata)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("device_display_field")
@requires("admin")
@validate_request(DisplayFieldChange)
async def set_display_field(
    device_token: str, data: DisplayFieldChange, principal: Principal
) -> dict:
    device = await visible_device(principal, device_token, _optional_instance())
    db = current().db
    if not await db.write(devices.set_display_field, device.token, data.display_field):
        raise NotFound("no such device")
    return metadata_of(await db.read(devices.get, device.token))


@blueprint.post("/devices/metadata/display-field/bulk")
@document_querystring(RequiredInstanceQuery)
@document_response(DisplayFieldsUpdated)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("display_fields_bulk")
@requires("admin")
@validate_request(BulkDisplayFields)
async def set_display_fields(data: BulkDisplayFields, principal: Principal) -> dict:
    instance_id = await _required_instance(principal)
    problems = _mapping_problems(data.mappings)
    if problems:
        raise _refusal(problems)
    display_fields = {mapping.device_token: mapping.display_field for mapping in data.mappings}
    try:
        updated = await current().db.write(devices.set_display_fields, instance_id, display_fields)
    except devices.MissingDevices as missing:
        index_of = {mapping.device_token: index for index, mapping in enumerate(data.mappings)}
        raise _refusal(
            [
                (f"mappings[{index_of[token]}].device_token", "no such device in this instance")
                for token in missing.tokens
            ]
        ) from None
    return {"updated": len(updated), "items": [metadata_of(device) for device in updated]}


def _mapping_problems(mappings: list[DisplayFieldMapping]) -> list[tuple[str, str]]:
    """(field, message) for each mapping that cannot be applied as written."""
    problems = []
    seen: set[str] = set()
    for index, mapping in enumerate(mappings):
        if mapping.device_token in seen:
            problems.append(
                (f"mappings[{index}].device_token", "names the same device as an earlier mapping")
            )
        seen.add(mapping.device_token)
        if mapping.display_field not in DISPLAY_FIELDS:
            allowed = ", ".join(DISPLAY_FIELDS)
            problems.append((f"mappings[{index}].display_field", f"must be one of {allowed}"))
    return problems


def _refusal(problems: list[tuple[str, str]]) -> Unprocessable:
    details = [{"field": field, "message": message} for field, message in problems]
    message = "; ".join(f"{field}: {message}" for field, message in problems)
    return Unprocessable(f"nothing was changed: {message}", details=details)


@blueprint.post("/devices/<device_token>/metadata/refresh")
@document_querystring(InstanceQuery)
@document_response(RefreshSummary)
@document_errors(401, 403, 404)
@operation_id("device_metadata_refresh")
@requires("admin")
async def refresh_one(device_token: str, principal: Principal) -> dict:
    device = await visible_device(principal, device_token, _optional_instance())
    tracker = current()
    return _report(await refresh_profiles(tracker.db, tracker.settings.user_service, [device]))


@blueprint.post("/devices/metadata/refresh")
@document_querystring(RequiredInstanceQuery)
@document_response(RefreshSummary)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("devices_metadata_refresh")
@requires("admin")
@validate_optional_request(RefreshSelection)
async def refresh_many(data: RefreshSelection | None, principal: Principal) -> dict:
    instance_id = await _required_instance(principal)
    tracker = current()
    if data is None or data.device_tokens is None:
        chosen = await tracker.db.read(devices.all_in_instance, instance_id)
        unknown: list[str] = []
    else:
        tokens = list(dict.fromkeys(data.device_tokens))
        found = await tracker.db.read(devices.in_instance, instance_id, tokens)
        chosen = [found[token] for token in tokens if token in found]
        unknown = [token for token in tokens if token not in found]
    report = _report(await refresh_profiles(tracker.db, tracker.settings.user_service, chosen))
    report["failed"] += [
        {"device_token": token, "reason": "no such device in this instance"} for token in unknown
    ]
    return report
