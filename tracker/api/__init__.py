"""The HTTP and WebSocket API, one module per resource, plus what every route shares.

Shared here: who is calling (`authenticate`), and the query parameters many
routes take (`pagination`, `waypoint_page`, `time_style`), each refused with a 400 naming the
bad value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any

from quart import request

from tracker.auth import Principal, Scope, bearer_token
from tracker.context import current
from tracker.domain import Device
from tracker.errors import BadRequest
from tracker.store import devices as device_store
from tracker.timefmt import TimeFormatError, TimeStyle

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_OFFSET = 2**63 - 1  # SQLite's largest integer: a larger offset cannot be bound
# /tracks pages waypoints (about 140 bytes each in JSON): 1,000 is ~140 KB, 10,000 ~1.4 MB.
DEFAULT_WAYPOINT_PAGE = 1_000
MAX_WAYPOINT_PAGE = 10_000


def requires(*scopes: Scope) -> Callable:
    """Route decorator: authenticate first (before any body validation), pass `principal`."""

    def decorator(handler: Callable) -> Callable:
        @wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = await authenticate(*scopes)
            return await handler(*args, principal=principal, **kwargs)

        return wrapper

    return decorator


async def authenticate(*scopes: Scope) -> Principal:
    """The caller's principal from the bearer token; 401 without one, 403 for a wrong scope."""
    principal = current().verifier.verify(bearer_token(request.headers.get("Authorization")))
    if scopes:
        principal.require_scope(*scopes)
    return principal


async def visible_device(
    principal: Principal, device_token: str, instance_id: str | None = None
) -> Device:
    """The device, when it exists in one of the caller's instances; else 404.

    A named instance outside the token is 403; a device outside the named instance 404.
    """
    device = await current().db.read(device_store.get, device_token)
    owner = device.instance_id if device else None
    principal.require_owner_visible(owner, instance_id, "no such device")
    return device


def time_style() -> TimeStyle:
    """The `timezone` and `date_format` query parameters; 400 naming a bad value."""
    try:
        return TimeStyle.parse(request.args.get("timezone"), request.args.get("date_format"))
    except TimeFormatError as error:
        raise BadRequest(str(error)) from None


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw[:40]!r}") from None


def pagination() -> tuple[int, int]:
    """(limit, offset) from the query: limit 1-500 (default 50), offset 0 to 2^63 - 1; else 400."""
    limit = _int_arg("limit", DEFAULT_PAGE_SIZE)
    offset = _int_arg("offset", 0)
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    if not 0 <= offset <= MAX_OFFSET:
        raise BadRequest(f"offset must be between 0 and {MAX_OFFSET}, got {str(offset)[:40]}")
    return limit, offset


def waypoint_page() -> tuple[int, float | None]:
    """(limit, since) for /tracks: limit 1-10,000 (default 1,000); since, finite unix
    seconds (fractions allowed), or None; else 400."""
    limit = _int_arg("limit", DEFAULT_WAYPOINT_PAGE)
    if not 1 <= limit <= MAX_WAYPOINT_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_WAYPOINT_PAGE}, got {limit}")
    raw = request.args.get("since")
    if raw is None:
        return limit, None
    try:
        since = float(raw)
    except ValueError:
        since = math.nan
    if not math.isfinite(since):
        raise BadRequest(f"since must be unix seconds, got {raw[:40]!r}")
    return limit, since


def page(items: list, total: int, limit: int, offset: int) -> dict:
    return {"items": items, "total": total, "limit": limit, "offset": offset}
