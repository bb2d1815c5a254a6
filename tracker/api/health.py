"""What operators and their tools ask: is the service up, can it store, what has it done.

- `GET {api_prefix}/health` (public): the version, the uptime, whether the
  database answers and whether it can store; `degraded` and 503 when either
  fails (a monitor's question: is everything fine).
- `GET {api_prefix}/health/ready` (public): 200 when a write commits now,
  else 503 with Retry-After (a load balancer's question: send traffic
  here?). Both ask `Database.can_store`: a real one-row write, at most once a
  second, since only a write meets a full disk.
- `GET /metrics` (at the root, not in the OpenAPI document): Prometheus'
  text format, when `metrics.enabled` (else 404), behind `metrics.token` as
  a bearer token when one is set (else 401). The figures that live in the
  database are read (off the event loop) just before the text is made.
"""

from __future__ import annotations

import hmac
import sqlite3
import time

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, request
from quart_schema import (
    document_response,
    hide,
    operation_id,
    security_scheme_blueprint,
    tag_blueprint,
)

from tracker import __version__
from tracker.api.schemas import Health, Readiness, RetryAfter
from tracker.context import current
from tracker.errors import STORAGE_RETRY_AFTER_SECONDS, NotFound, StorageUnavailable, Unauthorized
from tracker.store import positions as positions_store
from tracker.store import sessions as sessions_store

blueprint = Blueprint("health", __name__)
tag_blueprint(blueprint, ["health"])
security_scheme_blueprint(blueprint, [])  # public

metrics_blueprint = Blueprint("metrics", __name__)


@blueprint.get("/health")
@document_response(Health, 200)
@document_response(Health, 503)
@operation_id("health")
async def health() -> tuple[dict, int]:
    tracker = current()
    database_ok = await tracker.db.can_read()
    storage_ok = database_ok and await tracker.db.can_store()
    body = {
        "status": "ok" if storage_ok else "degraded",
        "version": __version__,
        "database": "ok" if database_ok else "error",
        "storage": "ok" if storage_ok else "unavailable",
        "uptime_seconds": round(time.monotonic() - tracker.started_at, 1),
    }
    return body, 200 if storage_ok else 503


@blueprint.get("/health/ready")
@document_response(Readiness, 200)
@document_response(Readiness, 503, RetryAfter)
@operation_id("health_ready")
async def ready() -> tuple[dict, int] | tuple[dict, int, dict]:
    if await current().db.can_store():
        return {"status": "ready"}, 200
    body = {"status": "unavailable", "message": "the database cannot store now"}
    return body, 503, {"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)}


def _store_figures(conn: sqlite3.Connection, now: float) -> tuple[int, float | None]:
    return sessions_store.count_active(conn, now), positions_store.newest_timestamp(conn, now)


@metrics_blueprint.get("/metrics")
@hide  # Prometheus' text format, for scrapers: README.md lists the metrics
async def metrics() -> Response:
    tracker = current()
    settings = tracker.settings.metrics
    if not settings.enabled:
        raise NotFound("metrics are off (metrics.enabled)")
    if settings.token and not _token_matches(settings.token):
        raise Unauthorized(
            "metrics need the bearer token of metrics.token",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    figures = tracker.metrics.store_figures
    try:
        sessions, newest = await tracker.db.read(_store_figures, time.time())
    except StorageUnavailable:  # logged by the store; the rest of the figures still count
        sessions, newest = None, None
    figures.active_share_sessions, figures.newest_position_at = sessions, newest
    return Response(tracker.metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


def _token_matches(expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())
