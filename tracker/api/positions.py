"""Device reads: last position, the current trip's waypoints, the latest trip's stats.

The waypoints come a page at a time (`limit`, default 1,000, at most 10,000),
in time order from `since` (exclusive); `next_since`, the exact time of the
page's last waypoint, asks for the next page, so no answer grows with the trip.

Times come out in the caller's `timezone` and `date_format`; naming an
`instance_id` adds the device's display name and profile to the position.
"""

from __future__ import annotations

import time

from quart import Blueprint, request
from quart_schema import (
    document_querystring,
    document_response,
    operation_id,
    security_scheme_blueprint,
    tag_blueprint,
)

from tracker.api import requires, time_style, visible_device, waypoint_page
from tracker.api.schemas import (
    DevicePosition,
    DeviceReadQuery,
    DeviceTrack,
    DeviceTrackQuery,
    PositionQuery,
    TripStats,
    document_errors,
)
from tracker.auth import Principal
from tracker.context import current
from tracker.domain import Device
from tracker.errors import NotFound
from tracker.models import Position
from tracker.profiles import display_value
from tracker.store import positions as positions_store
from tracker.store import trips as trips_store
from tracker.timefmt import TimeStyle
from tracker.trips import Trip

blueprint = Blueprint("positions", __name__)
tag_blueprint(blueprint, ["positions"])
security_scheme_blueprint(blueprint, [{"bearer": []}])


def position_fields(position: Position, style: TimeStyle) -> dict:
    return {
        "latitude": position.latitude,
        "longitude": position.longitude,
        "speed": position.speed,
        "heading": position.heading,
        "accuracy": position.accuracy,
        "altitude": position.altitude,
        "battery": position.battery,
        "timestamp": style.format(position.timestamp),
    }


@blueprint.get("/devices/<device_token>/position")
@document_querystring(PositionQuery)
@document_response(DevicePosition)
@document_errors(400, 401, 403, 404)
@operation_id("device_position")
@requires("read", "admin")
async def get_position(device_token: str, principal: Principal) -> dict:
    instance_id = request.args.get("instance_id")
    device = await visible_device(principal, device_token, instance_id)
    style = time_style()
    position = await current().db.read(positions_store.latest, device_token)
    if position is None:
        raise NotFound("this device has not reported a position yet")
    return position_body(device, position, style, with_profile=instance_id is not None)


def position_body(
    device: Device, position: Position, style: TimeStyle, *, with_profile: bool
) -> dict:
    """The answer of GET /devices/{token}/position (with `?instance_id=`: with_profile)."""
    body = {"device_token": device.token, **position_fields(position, style)}
    body["track_token"] = position.track_token
    if position.attributes:
        body["attributes"] = position.attributes
    if with_profile:
        body["display_identifier"] = display_value(
            device.profile, device.display_field, device.token
        )
        body["display_field"] = device.display_field
        body["driver_profile"] = device.profile
    return body


async def _latest_trip(principal: Principal, device_token: str) -> Trip:
    """The device's latest trip, after the isolation check; 404 when it has none."""
    await visible_device(principal, device_token, request.args.get("instance_id"))
    trip = await current().db.read(trips_store.latest, device_token)
    if trip is None:
        raise NotFound("this device has no trip yet")
    return trip


@blueprint.get("/devices/<device_token>/tracks")
@document_querystring(DeviceTrackQuery)
@document_response(DeviceTrack)
@document_errors(400, 401, 403, 404)
@operation_id("device_tracks")
@requires("read", "admin")
async def get_tracks(device_token: str, principal: Principal) -> dict:
    limit, since = waypoint_page()
    trip = await _latest_trip(principal, device_token)
    style = time_style()
    waypoints = await current().db.read(positions_store.trip_page, trip, since, limit + 1)
    has_more = len(waypoints) > limit
    del waypoints[limit:]
    gap = current().settings.trips.split_gap_seconds
    return {
        "device_token": device_token,
        "track_token": trip.track_token,
        "active": trip.is_active(time.time(), gap),
        "count": len(waypoints),
        "waypoints": [position_fields(p, style) for p in waypoints],
        "has_more": has_more,
        "next_since": waypoints[-1].timestamp if has_more else None,
    }


@blueprint.get("/devices/<device_token>/stats")
@document_querystring(DeviceReadQuery)
@document_response(TripStats)
@document_errors(400, 401, 403, 404)
@operation_id("device_stats")
@requires("read", "admin")
async def get_stats(device_token: str, principal: Principal) -> dict:
    trip = await _latest_trip(principal, device_token)
    return trip_fields(trip, time_style(), current().settings.trips.split_gap_seconds)


def trip_fields(trip: Trip, style: TimeStyle, gap_seconds: float) -> dict:
    """A trip's stats as `/stats` answers them; `/trips` lists the same fields."""
    return {
        "device_token": trip.device_token,
        "track_token": trip.track_token,
        "started_at": style.format(trip.started_at),
        "ended_at": style.format(trip.ended_at),
        "duration_seconds": round(trip.duration_seconds, 3),
        "distance_meters": round(trip.distance_m, 2),
        "average_speed": trip.average_speed,
        "max_speed": trip.max_speed,
        "waypoint_count": trip.waypoint_count,
        "start": {"latitude": trip.start_lat, "longitude": trip.start_lon},
        "end": {"latitude": trip.end_lat, "longitude": trip.end_lon},
        "active": trip.is_active(time.time(), gap_seconds),
    }
