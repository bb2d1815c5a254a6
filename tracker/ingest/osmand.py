"""The OsmAnd protocol (Traccar Client, OsmAnd, GPSLogger, ...) into fixes.

Three shapes reach the OsmAnd endpoint:

- form A: flat parameters (`id`, `lat`, `lon`, `timestamp`, `speed` in knots,
  `bearing`, `batt` ...) in a query string or a form body, which the caller
  merges into one single-valued mapping: `parse_osmand_params`;
- the same flat objects as JSON, one or an array of them (Traccar Client 10
  with `uploadJson`): `parse_osmand_json`;
- form B, Traccar Client 9's JSON object, `{"device_id", "location": {...}}`
  with `location.coords` (speed in m/s), `location.battery.level` as a
  fraction of 1, and `location` possibly an array (a backlog):
  `parse_osmand_json`. A `_` field, at the root and inside `location`,
  carries the same data as a form string for servers that read bodies as
  forms; the JSON fields win over it.

Each fix names its device by `identifier` (`id`, `deviceid` or `device_id`),
which is the device's ingest key: a credential, kept out of reprs and error
messages.

Phone apps retry a refused request forever and show the answer to no one, so
what is odd but harmless is accepted: `-1` means unknown (speed, bearing,
battery, accuracy), so does `accuracy=0` (classic Android), numbers arrive as
strings, any other parameter becomes an attribute (dropped if it breaks the
models' rules, never an error), and a request with no coordinates (only
`cell=` or `wifi=`) is a fix without a position. Only a value that is wrong
(not a number, out of range, 24 h in the future) raises `IngestError`.

That leniency lives here (`lenient_number`, `minus_one_as_unknown`,
`extra_attributes`) and the OwnTracks module uses it too.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from tracker.ingest.native import MAX_BATCH_POSITIONS, IngestError, refused_at
from tracker.models import (
    MAX_ATTRIBUTES,
    InvalidField,
    Position,
    clean_attributes,
    clean_text,
)

METRES_PER_SECOND_PER_KNOT = 1852 / 3600
MAX_IDENTIFIER_LENGTH = 256

IDENTIFIER_KEYS = ("id", "deviceid", "device_id")
# Attributes form A sends as text that are numbers (Traccar Client 10, hdop of many trackers).
NUMERIC_ATTRIBUTES = frozenset({"hdop", "battery_voltage", "battery_temp"})

_DECODED_PLUS_OFFSET = re.compile(r"(T\d\d:\d\d:\d\d(?:\.\d+)?) (\d\d:?\d\d)$")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class OsmandFix:
    """What one OsmAnd reading says: which device (its ingest key), and where, if it knew."""

    identifier: str = field(repr=False)
    position: Position | None  # None: no coordinates (cell/wifi only); acknowledge, store nothing


# -- the leniency every phone-app format needs -------------------------------------------------


def lenient_number(value: object, field: str) -> float | None:
    """A finite number from a JSON number or a decimal string; None or "" is None (unknown).

    Strings are read strictly (no `nan`, `inf`, `1_000`, non-ASCII digits) and
    `1e999` is refused as not finite, naming the field.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _DECIMAL.fullmatch(text):
            raise InvalidField(field, "must be a number")
        number = float(text)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise InvalidField(field, "must be a number")
    if not math.isfinite(number):
        raise InvalidField(field, "must be a finite number")
    return number


def minus_one_as_unknown(number: float | None) -> float | None:
    """Phone apps send -1 for a value the phone does not have: that is None, not -1."""
    return None if number == -1 else number


def extra_attributes(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes a phone app sent beyond the position, as the models accept them.

    An object is flattened one level (`activity.type`), a list of scalars
    joined with commas; whatever the models would refuse (too long, control
    characters, past MAX_ATTRIBUTES) is dropped rather than refusing the fix.
    """
    kept: dict[str, Any] = {}
    for name, value in _flattened(raw):
        if len(kept) >= MAX_ATTRIBUTES:
            break
        try:
            kept.update(clean_attributes({name: value}))
        except InvalidField:
            continue
    return kept


def _flattened(raw: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    for name, value in raw.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                if _is_scalar(inner_value):
                    yield f"{name}.{inner}", inner_value
        elif isinstance(value, list):
            if all(_is_scalar(item) and item is not None for item in value):
                yield name, ",".join(str(item) for item in value)
        else:
            yield name, value


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


# -- the three shapes ----------------------------------------------------------------------------


def parse_osmand_params(
    params: Mapping[str, str], now: float | None = None, *, speed_in_knots: bool = True
) -> OsmandFix | None:
    """The fix of a form A request; None when it carried no parameters at all.

    A missing identifier or a wrong value raises IngestError naming the parameter.
    `speed_in_knots=False` reads `speed` in m/s (GPSLogger's `%SPD`).
    """
    if not params:
        return None
    with refused_at(None):
        identifier = _identifier(params, "")
        if identifier is None:
            raise InvalidField("id", "is required")
        reading = _read_form(params, "", speed_in_knots=speed_in_knots)
        return OsmandFix(identifier, _position(reading, now))


def parse_osmand_json(
    body: object, now: float | None = None, *, speed_in_knots: bool = True
) -> list[OsmandFix]:
    """The fixes of a JSON body: form B (Traccar Client 9), or one or an array of flat objects.

    Every fix of one body gets the same `now` when it has no timestamp.
    """
    now = time.time() if now is None else now
    if isinstance(body, list):
        if len(body) > MAX_BATCH_POSITIONS:
            raise IngestError(None, "body", f"more than {MAX_BATCH_POSITIONS} fixes in one body")
        return [_flat_fix(item, index, now, speed_in_knots) for index, item in enumerate(body)]
    if not isinstance(body, dict):
        raise IngestError(None, "body", "must be a JSON object or array")
    location = body.get("location")
    if isinstance(location, dict | list):
        return _traccar_json_fixes(body, location, now)
    return [_flat_fix(body, None, now, speed_in_knots)]


def _flat_fix(item: object, index: int | None, now: float, speed_in_knots: bool) -> OsmandFix:
    with refused_at(index, batch=""):
        if not isinstance(item, dict):
            raise InvalidField("", "must be an object")
        fallback = _form_string(item.get("_"))
        identifier = _identifier(item, "") or _identifier(fallback, "_.")
        if identifier is None:
            raise InvalidField("id", "is required")
        reading = _read_form(item, "", speed_in_knots=speed_in_knots)
        fallback_reading = _read_form(
            fallback, "_.", known=reading.values, speed_in_knots=speed_in_knots
        )
        reading = reading.over(fallback_reading)
        return OsmandFix(identifier, _position(reading, now))


def _traccar_json_fixes(
    body: dict[str, Any], location: dict[str, Any] | list[Any], now: float
) -> list[OsmandFix]:
    root_fallback = _form_string(body.get("_"))
    single = isinstance(location, dict)
    locations = [location] if single else location
    if len(locations) > MAX_BATCH_POSITIONS:
        raise IngestError(None, "location", f"more than {MAX_BATCH_POSITIONS} fixes in one body")
    with refused_at(None):
        identifier = _identifier(body, "") or _identifier(root_fallback, "_.")
        for index, element in enumerate(locations):
            if identifier is None and isinstance(element, dict):
                prefix = "location._." if single else f"location[{index}]._."
                identifier = _identifier(_form_string(element.get("_")), prefix)
        if identifier is None:
            raise InvalidField("device_id", "is required")
    fixes = []
    for index, element in enumerate(locations):
        # A single location is spelled `location.coords...`, a backlog `location[3].coords...`.
        prefix = "location." if single else ""
        with refused_at(None if single else index, batch="location"):
            if not isinstance(element, dict):
                raise InvalidField(prefix.rstrip("."), "must be an object")
            reading = _read_location(element, prefix)
            inner = _form_string(element.get("_"))
            reading = reading.over(_read_form(inner, prefix + "_.", known=reading.values))
            if single:
                # The root `_` mirrors the one location; for a backlog it would invent positions.
                reading = reading.over(_read_form(root_fallback, "_.", known=reading.values))
            fixes.append(OsmandFix(identifier, _position(reading, now)))
    return fixes


# -- one reading, whatever shape it came in ------------------------------------------------------


@dataclass
class _Reading:
    """One fix's values in SI units, as Position.build takes them, and how the client spelled each."""

    values: dict[str, Any] = field(default_factory=dict)
    spelled: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)

    def set(self, name: str, spelled: str, value: Any) -> None:
        self.values[name] = value
        self.spelled[name] = spelled

    def over(self, fallback: _Reading) -> _Reading:
        """This reading, with what it lacks taken from `fallback`."""
        return _Reading(
            values=fallback.values | self.values,
            spelled=fallback.spelled | self.spelled,
            attributes=fallback.attributes | self.attributes,
        )


def _position(reading: _Reading, now: float | None) -> Position | None:
    values = {"latitude": None, "longitude": None} | reading.values
    if values["latitude"] is None and values["longitude"] is None:
        return None
    try:
        return Position.build(**values, attributes=extra_attributes(reading.attributes), now=now)
    except InvalidField as error:
        raise InvalidField(reading.spelled.get(error.field, error.field), error.message) from None


_FORM_KEYS = frozenset(
    {*IDENTIFIER_KEYS, "_", "lat", "lon", "location", "timestamp", "speed", "bearing", "heading"}
    | {"altitude", "accuracy", "batt", "valid", "charge"}
)


def _read_form(
    params: Mapping[str, Any],
    prefix: str,
    known: Collection[str] = (),
    *,
    speed_in_knots: bool = True,
) -> _Reading:
    """Form A parameters (strings, or JSON scalars in the flat JSON objects), speed in knots
    (or in m/s when not `speed_in_knots`).

    Fields already `known` from JSON are not read again, so a stale fallback cannot fail the fix.
    """
    reading = _Reading()

    def present(key: str) -> bool:
        return params.get(key) not in (None, "")

    if "latitude" not in known and "longitude" not in known:
        if present("lat") or present("lon"):
            for key, name in (("lat", "latitude"), ("lon", "longitude")):
                reading.set(name, prefix + key, lenient_number(params.get(key), prefix + key))
        elif present("location"):
            spelled = prefix + "location"
            latitude, longitude = _lat_lon(params["location"], spelled)
            reading.set("latitude", spelled, latitude)
            reading.set("longitude", spelled, longitude)
    if "timestamp" not in known and present("timestamp"):
        spelled = prefix + "timestamp"
        reading.set("timestamp", spelled, _timestamp(params["timestamp"]))
    if "speed" not in known and present("speed"):
        sent = minus_one_as_unknown(lenient_number(params["speed"], prefix + "speed"))
        factor = METRES_PER_SECOND_PER_KNOT if speed_in_knots else 1.0
        speed = None if sent is None else sent * factor
        reading.set("speed", prefix + "speed", speed)
    if "heading" not in known:
        key = "bearing" if present("bearing") else "heading"
        if present(key):
            heading = minus_one_as_unknown(lenient_number(params[key], prefix + key))
            reading.set("heading", prefix + key, heading)
    for key, name in (("altitude", "altitude"), ("accuracy", "accuracy"), ("batt", "battery")):
        if name not in known and present(key):
            number = lenient_number(params[key], prefix + key)
            if name != "altitude":
                number = minus_one_as_unknown(number)
            if name == "accuracy" and number == 0:
                number = None  # classic Android clients send 0 for a GPS fix
            reading.set(name, prefix + key, number)
    if "valid" not in known and present("valid"):
        reading.set("valid", prefix + "valid", _flag(params["valid"]) is True)
    if present("charge"):
        reading.attributes["charge"] = _flag(params["charge"])
    for key, value in params.items():
        if key not in _FORM_KEYS:
            reading.attributes[key] = _form_attribute(key, value)
    return reading


def _read_location(location: Mapping[str, Any], prefix: str) -> _Reading:
    """Traccar Client 9's `location` object: coords in m/s, battery level as a fraction of 1."""
    reading = _Reading()
    if location.get("timestamp") is not None:
        spelled = prefix + "timestamp"
        reading.set("timestamp", spelled, _timestamp(location["timestamp"]))
    coords = location.get("coords")
    if coords is not None:
        if not isinstance(coords, dict):
            raise InvalidField(prefix + "coords", "must be an object")
        for key, value in coords.items():
            spelled = f"{prefix}coords.{key}"
            if key in ("latitude", "longitude", "altitude"):
                reading.set(key, spelled, lenient_number(value, spelled))
            elif key in ("speed", "heading"):
                reading.set(key, spelled, minus_one_as_unknown(lenient_number(value, spelled)))
            elif key == "accuracy":
                accuracy = minus_one_as_unknown(lenient_number(value, spelled))
                reading.set(key, spelled, None if accuracy == 0 else accuracy)
            else:
                reading.attributes[key] = value
        if "latitude" in reading.values or "longitude" in reading.values:
            for key in ("latitude", "longitude"):
                reading.spelled.setdefault(key, f"{prefix}coords.{key}")
    battery = location.get("battery")
    if battery is not None and not isinstance(battery, dict):
        reading.attributes["battery"] = battery
    elif battery is not None:
        if battery.get("level") is not None:
            spelled = prefix + "battery.level"
            level = minus_one_as_unknown(lenient_number(battery["level"], spelled))
            reading.set("battery", spelled, None if level is None else round(level * 100, 2))
        if battery.get("is_charging") is not None:
            reading.attributes["charge"] = _flag(battery["is_charging"])
    for key, value in location.items():
        if key not in ("timestamp", "coords", "battery", "_"):
            reading.attributes[key] = value
    return reading


def _identifier(source: Mapping[str, Any], prefix: str) -> str | None:
    for key in IDENTIFIER_KEYS:
        value = source.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidField(prefix + key, "must be a string")
        identifier = clean_text(str(value).strip(), prefix + key, max_length=MAX_IDENTIFIER_LENGTH)
        if identifier:
            return identifier
    return None


def _form_string(value: object) -> dict[str, str]:
    """The `_` fallback of Traccar Client 9 (`"&id=...&lat=...&"`) as parameters; else none."""
    if not isinstance(value, str):
        return {}
    return dict(parse_qsl(value, keep_blank_values=True))


def _lat_lon(value: object, spelled: str) -> tuple[float | None, float | None]:
    parts = value.split(",") if isinstance(value, str) else []
    if len(parts) != 2:
        raise InvalidField(spelled, "must be 'latitude,longitude'")
    return lenient_number(parts[0], spelled), lenient_number(parts[1], spelled)


def _timestamp(value: object) -> object:
    """The time as sent, with an ISO offset's `+` restored (Position.build reads it once)."""
    if isinstance(value, str):
        # An ISO offset sent unencoded in a query string ("+01:00") arrives as " 01:00".
        return _DECODED_PLUS_OFFSET.sub(r"\1+\2", value.strip())
    return value


def _flag(value: object) -> object:
    """`true`/`1` and `false`/`0` as booleans; anything else as it came."""
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    return value


def _form_attribute(key: str, value: object) -> object:
    if key in NUMERIC_ATTRIBUTES and isinstance(value, str):
        try:
            return lenient_number(value, key)
        except InvalidField:
            return value
    return value
