"""A device's history: its trips over time, one trip's waypoints, exports and a GPX import.

- `GET /devices/{device_token}/trips?from=&to=`: the trips that overlap the
  window (default: the last 7 days), newest first, paged like every list,
  each with exactly the fields of `/stats` (`positions.trip_fields`).
- `GET /devices/{device_token}/trips/{track_token}`: one trip's stats and a
  page of its waypoints (`limit`, `since`, `next_since` as in `/tracks`).
- `GET .../trips/{track_token}/export` and `GET .../positions/export?from=&to=`:
  a GPX, GeoJSON or CSV file (tracker/exports.py), streamed: `export_chunks`
  reads the store a page at a time (trips by keyset on their start, fixes by
  keyset on their time) and sends each page's text on before reading the
  next, so a range of any size is served in constant memory. The
  `tracker export` command runs the same function on the database directly.
- `POST /devices/{device_token}/positions/import` (admin): a GPX file's
  track points (tracker/ingest/gpx.py), stored through the writer like any
  ingest, 1,000 at a time: validated, duplicates skipped, trips joined, and a
  backlog never broadcast as live.

`from` and `to` are unix seconds or ISO 8601 (models.parse_timestamp).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import trio
from quart import Blueprint, Response, request
from quart_schema import (
    document_querystring,
    document_request,
    document_response,
    operation_id,
    security_scheme_blueprint,
    tag_blueprint,
)

from tracker.api import page, pagination, requires, time_style, visible_device, waypoint_page
from tracker.api.positions import position_fields, trip_fields
from tracker.api.schemas import (
    Attachment,
    DeviceTrackQuery,
    ExportFile,
    GpxUpload,
    InstanceQuery,
    PositionsAccepted,
    RangeExportQuery,
    TripDetail,
    TripExportQuery,
    TripListQuery,
    TripPage,
    document_errors,
)
from tracker.auth import Principal
from tracker.context import current
from tracker.domain import Device
from tracker.errors import BadRequest, NotFound, Unprocessable
from tracker.exports import FORMATS, MEDIA_TYPES, ExportHeader, Writer, writer_for
from tracker.ingest.gpx import parse_gpx
from tracker.ingest.native import IngestError
from tracker.models import InvalidField, parse_timestamp
from tracker.profiles import display_value
from tracker.store import positions as positions_store
from tracker.store import trips as trips_store
from tracker.timefmt import TimeStyle
from tracker.trips import Trip
from tracker.writer import DeviceGone, IngestResult

blueprint = Blueprint("history", __name__)
tag_blueprint(blueprint, ["history"])
security_scheme_blueprint(blueprint, [{"bearer": []}])

DEFAULT_WINDOW_SECONDS = 7 * 24 * 3600
LATEST_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
EXPORT_PAGE_POSITIONS = 5_000  # one `db.read` of an export: ~1 MB of GPX
EXPORT_PAGE_TRIPS = 100
IMPORT_BATCH_POSITIONS = 1_000  # one `Writer.submit` of an import
IMPORT_MAX_BODY_BYTES = 20 * 1024 * 1024  # the import route's body limit (app.py)
_UTC_ISO = TimeStyle.parse("UTC", "iso")

Read = Callable[..., Awaitable]


# -- shared with the command line -------------------------------------------------


def parse_window(
    raw_from: str | None, raw_to: str | None, now: float | None = None
) -> tuple[float, float]:
    """[from, to] in unix seconds: `to` defaults to now, `from` to 7 days before `to`.

    Raises InvalidField naming `from` or `to` for a value that is not a time
    between 1970 and 9999, or a `from` after `to`.
    """
    now = time.time() if now is None else now
    high = now if raw_to is None else _bounded(raw_to, "to")
    low = high - DEFAULT_WINDOW_SECONDS if raw_from is None else _bounded(raw_from, "from")
    if low > high:
        raise InvalidField("from", "is after to")
    return max(low, 0.0), high


def _bounded(raw: str, name: str) -> float:
    value = parse_timestamp(raw, name)
    if not 0 <= value <= LATEST_TIME:
        raise InvalidField(name, "must be between 1970 and 9999")
    return value


def export_filename(device_token: str, low: float, high: float, file_format: str) -> str:
    """`<device>_<from>_<to>.<format>`, the device token reduced to safe characters."""
    device = re.sub(r"[^A-Za-z0-9._-]+", "-", device_token).strip(".-")[:64] or "device"

    def stamp(ts: float) -> str:
        return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y%m%dT%H%M%SZ")

    return f"{device}_{stamp(low)}_{stamp(high)}.{file_format}"


async def export_chunks(
    read: Read,
    device: Device,
    low: float,
    high: float,
    writer: Writer,
    gap_seconds: float,
    trip: Trip | None = None,
) -> AsyncIterator[str]:
    """The file's text, a page at a time: the device's trips that overlap [low, high]
    in order of start (or only `trip`), each trip's fixes in the window in time order.

    `read` is `Database.read`: each call is one bounded query.
    """
    yield writer.begin(
        ExportHeader(
            device_token=device.token,
            device_name=display_value(device.profile, device.display_field, device.token),
            low=low,
            high=high,
            created_at=time.time(),
            track_token=trip.track_token if trip else None,
        )
    )
    async for each in _trips(read, device.token, low, high, trip):
        count = await read(positions_store.count_in_trip, each, low, high)
        if not count:
            continue  # the trip spans the window, but its fixes lie outside it
        yield writer.begin_trip(trip_fields(each, _UTC_ISO, gap_seconds), count)
        for pass_number in range(writer.passes):
            if pass_number:
                yield writer.next_pass()
            after = math.nextafter(low, -math.inf)
            while True:
                positions = await read(
                    positions_store.trip_window_page,
                    each,
                    after,
                    high,
                    EXPORT_PAGE_POSITIONS,
                )
                if positions:
                    yield writer.points(positions)
                    after = positions[-1].timestamp
                if len(positions) < EXPORT_PAGE_POSITIONS:
                    break
        yield writer.end_trip()
    yield writer.end()


async def _trips(
    read: Read, device_token: str, low: float, high: float, only: Trip | None
) -> AsyncIterator[Trip]:
    if only is not None:
        yield only
        return
    after = None
    while True:
        trips = await read(
            trips_store.oldest_in_window_after, device_token, low, high, after, EXPORT_PAGE_TRIPS
        )
        for trip in trips:
            yield trip
        if len(trips) < EXPORT_PAGE_TRIPS:
            return
        after = (trips[-1].started_at, trips[-1].track_token)


# -- routes -----------------------------------------------------------------------


def _window() -> tuple[float, float]:
    try:
        return parse_window(request.args.get("from"), request.args.get("to"))
    except InvalidField as error:
        raise BadRequest(str(error)) from None


def _export_format() -> tuple[str, bool]:
    file_format = request.args.get("format", "gpx")
    if file_format not in FORMATS:
        raise BadRequest(f"format must be gpx, geojson or csv, got {file_format[:40]!r}")
    points = request.args.get("points", "false").lower()
    if points not in ("true", "false", "1", "0"):
        raise BadRequest(f"points must be true or false, got {points[:40]!r}")
    return file_format, points in ("true", "1")


async def _device(principal: Principal, device_token: str) -> Device:
    return await visible_device(principal, device_token, request.args.get("instance_id"))


async def _trip(device_token: str, track_token: str) -> Trip:
    trip = await current().db.read(trips_store.get, device_token, track_token)
    if trip is None:
        raise NotFound("this device has no such trip")
    return trip


@blueprint.get("/devices/<device_token>/trips")
@document_querystring(TripListQuery)
@document_response(TripPage)
@document_errors(400, 401, 403, 404)
@operation_id("device_trips")
@requires("read", "admin")
async def list_trips(device_token: str, principal: Principal) -> dict:
    limit, offset = pagination()
    low, high = _window()
    style = time_style()
    await _device(principal, device_token)
    db = current().db
    total = await db.read(trips_store.count_in_window, device_token, low, high)
    trips = await db.read(trips_store.newest_in_window, device_token, low, high, limit, offset)
    gap = current().settings.trips.split_gap_seconds
    return page([trip_fields(trip, style, gap) for trip in trips], total, limit, offset)


@blueprint.get("/devices/<device_token>/trips/<track_token>")
@document_querystring(DeviceTrackQuery)
@document_response(TripDetail)
@document_errors(400, 401, 403, 404)
@operation_id("device_trip")
@requires("read", "admin")
async def get_trip(device_token: str, track_token: str, principal: Principal) -> dict:
    limit, since = waypoint_page()
    style = time_style()
    await _device(principal, device_token)
    trip = await _trip(device_token, track_token)
    waypoints = await current().db.read(positions_store.trip_page, trip, since, limit + 1)
    has_more = len(waypoints) > limit
    del waypoints[limit:]
    return {
        **trip_fields(trip, style, current().settings.trips.split_gap_seconds),
        "count": len(waypoints),
        "waypoints": [position_fields(p, style) for p in waypoints],
        "has_more": has_more,
        "next_since": waypoints[-1].timestamp if has_more else None,
    }


def _file_response(
    device: Device, low: float, high: float, file_format: str, chunks: AsyncIterator[str]
) -> Response:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if chunk:
                yield chunk.encode()

    response = Response(body(), content_type=MEDIA_TYPES[file_format])
    response.timeout = None  # Quart's 60 s response timeout would cut a long download short
    filename = export_filename(device.token, low, high, file_format)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@blueprint.get("/devices/<device_token>/trips/<track_token>/export")
@document_querystring(TripExportQuery)
@document_response(ExportFile, 200, Attachment)
@document_errors(400, 401, 403, 404)
@operation_id("device_trip_export")
@requires("read", "admin")
async def export_trip(device_token: str, track_token: str, principal: Principal) -> Response:
    file_format, points = _export_format()
    device = await _device(principal, device_token)
    trip = await _trip(device_token, track_token)
    tracker = current()
    chunks = export_chunks(
        tracker.db.read,
        device,
        trip.started_at,
        trip.ended_at,
        writer_for(file_format, points),
        tracker.settings.trips.split_gap_seconds,
        trip,
    )
    return _file_response(device, trip.started_at, trip.ended_at, file_format, chunks)


@blueprint.get("/devices/<device_token>/positions/export")
@document_querystring(RangeExportQuery)
@document_response(ExportFile, 200, Attachment)
@document_errors(400, 401, 403, 404)
@operation_id("device_positions_export")
@requires("read", "admin")
async def export_positions(device_token: str, principal: Principal) -> Response:
    file_format, points = _export_format()
    low, high = _window()
    device = await _device(principal, device_token)
    tracker = current()
    chunks = export_chunks(
        tracker.db.read,
        device,
        low,
        high,
        writer_for(file_format, points),
        tracker.settings.trips.split_gap_seconds,
    )
    return _file_response(device, low, high, file_format, chunks)


@blueprint.post("/devices/<device_token>/positions/import")
@document_querystring(InstanceQuery)
@document_request(GpxUpload)
@document_response(PositionsAccepted, 201)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("device_positions_import")
@requires("admin")
async def import_positions(device_token: str, principal: Principal) -> tuple[dict, int]:
    device = await _device(principal, device_token)
    body = await request.get_data()
    try:
        positions = await trio.to_thread.run_sync(parse_gpx, body)
    except IngestError as error:
        if error.path == "body":
            raise BadRequest(f"GPX {error.message}") from None
        details = [{"field": error.path, "message": error.message}]
        raise Unprocessable(str(error), details=details) from None
    total = IngestResult()
    for start in range(0, len(positions), IMPORT_BATCH_POSITIONS):
        try:
            result = await current().writer.submit(
                device.token, positions[start : start + IMPORT_BATCH_POSITIONS]
            )
        except DeviceGone:
            raise NotFound("no such device") from None
        total.accepted += result.accepted
        total.duplicates += result.duplicates
    return {"accepted": total.accepted, "duplicates": total.duplicates}, 201
