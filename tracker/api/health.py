"""GET /health: is the service up and its database answering (public)."""

from __future__ import annotations

import time

from quart import Blueprint
from quart_schema import document_response, operation_id, security_scheme_blueprint, tag_blueprint

from tracker import __version__
from tracker.api.schemas import Health
from tracker.context import current

blueprint = Blueprint("health", __name__)
tag_blueprint(blueprint, ["health"])
security_scheme_blueprint(blueprint, [])  # public


@blueprint.get("/health")
@document_response(Health, 200)
@document_response(Health, 503)
@operation_id("health")
async def health() -> tuple[dict, int]:
    tracker = current()
    try:
        database_ok = await tracker.db.read(
            lambda conn: conn.execute("SELECT 1").fetchone()[0] == 1
        )
    except Exception:
        database_ok = False
    body = {
        "status": "ok" if database_ok else "degraded",
        "version": __version__,
        "database": "ok" if database_ok else "error",
        "uptime_seconds": round(time.monotonic() - tracker.started_at, 1),
    }
    return body, 200 if database_ok else 503
