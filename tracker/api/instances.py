"""GET /instances/{instance_id}: an instance the token may see, with its device count."""

from __future__ import annotations

from quart import Blueprint
from quart_schema import document_response, operation_id, security_scheme_blueprint, tag_blueprint

from tracker.api import requires
from tracker.api.schemas import Instance, document_errors
from tracker.auth import Principal
from tracker.context import current
from tracker.errors import NotFound
from tracker.store import instances

blueprint = Blueprint("instances", __name__)
tag_blueprint(blueprint, ["instances"])
security_scheme_blueprint(blueprint, [{"bearer": []}])


@blueprint.get("/instances/<instance_id>")
@document_response(Instance)
@document_errors(401, 403, 404)
@operation_id("instance")
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
