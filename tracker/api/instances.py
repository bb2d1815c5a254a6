"""GET /instances/{instance_id}: an instance the token may see, with its device count."""

from __future__ import annotations

from quart import Blueprint

from tracker.api import requires
from tracker.auth import Principal
from tracker.context import current
from tracker.errors import NotFound
from tracker.store import instances

blueprint = Blueprint("instances", __name__)


@blueprint.get("/instances/<instance_id>")
@requires("read", "admin")
async def get_instance(instance_id: str, principal: Principal) -> dict:
    principal.require_instance(instance_id)
    instance = await current().db.read(instances.get, instance_id)
    if instance is None:
        raise NotFound("no such instance")
    device_count = await current().db.read(instances.device_count, instance_id)
    return {
        "instance_id": instance.id,
        "name": instance.name,
        "created_at": int(instance.created_at),
        "device_count": device_count,
    }
