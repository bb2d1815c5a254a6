"""OwnTracks' HTTP mode: one JSON message in, at most one Position out.

The app posts every message it builds, not only locations. A `location`
gives a position: `tst` is the time of the fix (`created_at`, when the
message was built, is later for a backlog), `vel` is km/h, `cog` degrees,
`acc`/`alt` metres, `batt` percent, and fields that are zero are left out.
Every other `_type` (transition, waypoint, lwt, card, status, ...) and an
empty body are acknowledged and give no position; so does a `location`
without coordinates. An `encrypted` message cannot be read without the app's
secret: the result says so, and the caller answers 422 so the user sees that
encryption must be turned off.

Like the other phone apps, OwnTracks retries a refused request forever: `-1`
means unknown (iOS sends it for vel, cog, batt and vac), numbers may arrive as
strings, and labels (`tid`, `topic`, `conn`, `t`, `bs`, ...) are kept as
attributes, never as identity, which comes from Basic auth alone. A value that
is wrong raises `IngestError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracker.ingest.native import IngestError, refused_at
from tracker.ingest.osmand import extra_attributes, lenient_number, minus_one_as_unknown
from tracker.models import InvalidField, Position, clean_text

KMH_PER_METRE_PER_SECOND = 3.6

# Position fields as OwnTracks spells them, so an error names what the app sent.
_SPELLED = {
    "latitude": "lat",
    "longitude": "lon",
    "timestamp": "tst",
    "speed": "vel",
    "heading": "cog",
    "accuracy": "acc",
    "altitude": "alt",
    "battery": "batt",
}
_POSITION_KEYS = frozenset(_SPELLED.values())
_ABSENT = (None, "")


@dataclass(frozen=True, slots=True)
class OwnTracksResult:
    """What one OwnTracks message gives: a position, or none (and why, for the log)."""

    position: Position | None = None
    encrypted: bool = False  # `_type: encrypted`: unreadable, answer 422
    message_type: str | None = None  # the `_type`, e.g. "transition", for the log


def parse_owntracks(body: object, now: float | None = None) -> OwnTracksResult:
    """Read one decoded OwnTracks message (None or "" for an empty body)."""
    if body is None or body in ("", b""):
        return OwnTracksResult()
    if not isinstance(body, dict):
        raise IngestError(None, "body", "must be a JSON object")
    with refused_at(None):
        message_type = body.get("_type")
        if message_type is not None:
            message_type = clean_text(message_type, "_type", max_length=64)
        if message_type == "encrypted":
            return OwnTracksResult(encrypted=True, message_type=message_type)
        no_coordinates = body.get("lat") in _ABSENT and body.get("lon") in _ABSENT
        if message_type != "location" or no_coordinates:
            return OwnTracksResult(message_type=message_type)
        return OwnTracksResult(position=_location(body, now), message_type=message_type)


def _location(message: dict[str, Any], now: float | None) -> Position:
    def number(key: str) -> float | None:
        return lenient_number(message.get(key), key)

    tst = message.get("tst")
    km_per_hour = minus_one_as_unknown(number("vel"))
    values = {
        "latitude": number("lat"),
        "longitude": number("lon"),
        "timestamp": None if tst in _ABSENT else tst,
        "speed": None if km_per_hour is None else km_per_hour / KMH_PER_METRE_PER_SECOND,
        "heading": minus_one_as_unknown(number("cog")),
        "accuracy": minus_one_as_unknown(number("acc")),
        "altitude": number("alt"),
        "battery": minus_one_as_unknown(number("batt")),
    }
    attributes = {
        key: value
        for key, value in message.items()
        if key not in _POSITION_KEYS and not key.startswith("_") and value != -1
    }
    try:
        return Position.build(**values, attributes=extra_attributes(attributes), now=now)
    except InvalidField as error:
        raise InvalidField(_SPELLED.get(error.field, error.field), error.message) from None
