"""Overland (iOS, Android) batches into positions: GeoJSON Point features, one bad one skipped.

Overland posts `{"locations": [Feature, ...], "current": Feature?, "trip": {...}?}`
with each location a GeoJSON Point feature: `geometry.coordinates` is
`[longitude, latitude]` (GeoJSON's order), `properties.timestamp` ISO 8601
(often with a `-0700` offset), `speed` in m/s and `course` in degrees (`-1`:
unknown), `horizontal_accuracy` and `altitude` in metres, `battery_level` a
fraction of 1, and free-form extras (`motion`, `battery_state`, `wifi`,
`device_id`, tracking stats) kept as attributes.

The app keeps a batch and resends it until the answer is `{"result": "ok"}`,
so one location that cannot be stored (out of range, no coordinates) must
not hold the whole queue back forever: it is skipped and reported, and the
rest is stored. `current` is the phone's newest fix when its queue is long
(it is not in the batch): it is stored too, so the live position moves
while a backlog uploads, and it is a duplicate when its batch comes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tracker.ingest.native import MAX_BATCH_POSITIONS, IngestError, refused_at
from tracker.ingest.osmand import extra_attributes, lenient_number, minus_one_as_unknown
from tracker.models import InvalidField, Position

# Properties that become the position itself; every other one is an attribute.
_POSITION_PROPERTIES = frozenset(
    {"timestamp", "speed", "course", "horizontal_accuracy", "altitude", "battery_level"}
)


@dataclass
class OverlandBatch:
    positions: list[Position] = field(default_factory=list)
    skipped: list[IngestError] = field(default_factory=list)


def parse_overland(body: object, now: float | None = None) -> OverlandBatch:
    """The positions of an Overland body; IngestError only when the body itself is not one."""
    now = time.time() if now is None else now
    if not isinstance(body, dict):
        raise IngestError(None, "body", 'must be an object with "locations"')
    locations = body.get("locations")
    if not isinstance(locations, list):
        raise IngestError(None, "locations", "must be an array of GeoJSON Point features")
    if len(locations) > MAX_BATCH_POSITIONS:
        raise IngestError(None, "locations", f"more than {MAX_BATCH_POSITIONS} in one batch")
    batch = OverlandBatch()
    features = [(index, location, "locations") for index, location in enumerate(locations)]
    if isinstance(body.get("current"), dict):
        features.append((None, body["current"], "current"))
    for index, feature, where in features:
        try:
            with refused_at(index, batch=where):
                batch.positions.append(_position(feature, now))
        except IngestError as error:
            if where == "current":
                error = IngestError(None, f"current.{error.field}", error.message)
            batch.skipped.append(error)
    return batch


def _position(feature: object, now: float) -> Position:
    if not isinstance(feature, dict):
        raise InvalidField("", "must be a GeoJSON feature")
    geometry = feature.get("geometry")
    coordinates = geometry.get("coordinates") if isinstance(geometry, dict) else None
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        raise InvalidField("geometry.coordinates", "must be [longitude, latitude]")
    properties = feature.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    if properties.get("timestamp") in (None, ""):
        raise InvalidField("properties.timestamp", "is required")

    def number(key: str) -> float | None:
        return lenient_number(properties.get(key), f"properties.{key}")

    battery = minus_one_as_unknown(number("battery_level"))
    attributes = {k: v for k, v in properties.items() if k not in _POSITION_PROPERTIES}
    try:
        return Position.build(
            latitude=lenient_number(coordinates[1], "geometry.coordinates[1]"),
            longitude=lenient_number(coordinates[0], "geometry.coordinates[0]"),
            timestamp=properties.get("timestamp"),
            speed=minus_one_as_unknown(number("speed")),
            heading=minus_one_as_unknown(number("course")),
            accuracy=minus_one_as_unknown(number("horizontal_accuracy")),
            altitude=number("altitude"),
            battery=None if battery is None else battery * 100,
            attributes=extra_attributes(_without_empty(attributes)),
            now=now,
        )
    except InvalidField as error:
        raise InvalidField(_SPELLED.get(error.field, error.field), error.message) from None


_SPELLED: dict[str, Any] = {
    "latitude": "geometry.coordinates[1]",
    "longitude": "geometry.coordinates[0]",
    "timestamp": "properties.timestamp",
    "speed": "properties.speed",
    "heading": "properties.course",
    "accuracy": "properties.horizontal_accuracy",
    "altitude": "properties.altitude",
    "battery": "properties.battery_level",
}


def _without_empty(attributes: dict[str, Any]) -> dict[str, Any]:
    """Overland sends `""` for what it does not have (`device_id`, `wifi`): leave those out."""
    return {k: v for k, v in attributes.items() if v not in ("", None, [])}
