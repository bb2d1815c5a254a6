"""The validated shapes every path shares: a position, a profile, checked strings.

Every wire format ends in `Position.build(...)`, which applies the one set of
rules (finite numbers, ranges, the milliseconds rule, no fix from the far
future, clean strings), so a value that passes here is safe to store and to
send. A rule broken raises `InvalidField` naming the field.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

MAX_FUTURE_SECONDS = 24 * 3600
MILLISECONDS_THRESHOLD = 1e11
EARLIEST_TIMESTAMP = 0.0  # 1970: anything earlier is not a GPS fix
MAX_STRING_LENGTH = 1000
MAX_TRACK_TOKEN_LENGTH = 128
MAX_ATTRIBUTES = 50

PROFILE_FIELDS = ("full_name", "first_name", "last_name", "nickname", "email", "phone", "client_id")

# C0/C1 controls (tab and newline are allowed in free text), bidi overrides and
# isolates, which can make a name display as something it is not.
_FORBIDDEN_CHARS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


class InvalidField(ValueError):
    """A value broke a rule; `field` names it, as the client spelled it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def clean_text(value: Any, field: str, *, max_length: int = MAX_STRING_LENGTH) -> str:
    """A string safe to store and show: NFC, bounded, no controls, bidi overrides or surrogates."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    if _FORBIDDEN_CHARS.search(value):
        raise InvalidField(field, "contains a control, bidi-override or surrogate character")
    value = unicodedata.normalize("NFC", value)
    if len(value) > max_length:
        raise InvalidField(field, f"longer than {max_length} characters")
    return value


def finite_number(value: Any, field: str) -> float:
    """A real, finite number (bools and numeric strings are refused here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField(field, "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidField(field, "must be a finite number")
    return number


def _in_range(value: Any, field: str, low: float, high: float, *, high_open: bool = False) -> float:
    number = finite_number(value, field)
    inside = low <= number < high if high_open else low <= number <= high
    if not inside:
        bound = f"[{low:g}, {high:g})" if high_open else f"[{low:g}, {high:g}]"
        raise InvalidField(field, f"must be in {bound}, got {number:g}")
    return number


def _optional(value: Any, field: str, low: float, high: float, **kw: Any) -> float | None:
    return None if value is None else _in_range(value, field, low, high, **kw)


def parse_timestamp(value: Any, field: str = "timestamp") -> float:
    """Unix seconds from a number (>= 1e11 means milliseconds) or an ISO 8601 string.

    The one timestamp rule: every wire format hands the time as it was sent to
    `Position.build`, which applies it exactly once (applied to its own result,
    the milliseconds rule would turn a far-future ISO date into 1978).
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            if _looks_numeric(text):
                return parse_timestamp(float(text), field)
            return _parse_iso(text)
        except ValueError:
            raise InvalidField(field, f"not a unix time or ISO 8601 date: {value[:40]!r}") from None
    number = finite_number(value, field)
    if number >= MILLISECONDS_THRESHOLD:
        number /= 1000.0
    return number


def _looks_numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+(\.\d+)?", text))


def _parse_iso(text: str) -> float:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Position:
    """One GPS fix, in SI units and UTC unix seconds, valid by construction."""

    latitude: float
    longitude: float
    timestamp: float
    speed: float | None = None  # m/s
    heading: float | None = None  # degrees, [0, 360)
    accuracy: float | None = None  # metres
    altitude: float | None = None  # metres
    battery: float | None = None  # percent
    track_token: str | None = None  # the client's own trip id, when it sends one
    valid: bool = True  # False: stored, never used as the live position
    attributes: dict[str, Any] = field(default_factory=dict)  # alarm, charge, ...

    @classmethod
    def build(
        cls,
        *,
        latitude: Any,
        longitude: Any,
        timestamp: Any = None,
        speed: Any = None,
        heading: Any = None,
        accuracy: Any = None,
        altitude: Any = None,
        battery: Any = None,
        track_token: Any = None,
        valid: bool = True,
        attributes: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> Position:
        """Validate raw values (already in SI units) into a Position.

        `timestamp` None means the time of receipt. Heading 360 is taken as 0.
        """
        now = time.time() if now is None else now
        if latitude is None:
            raise InvalidField("latitude", "is required")
        if longitude is None:
            raise InvalidField("longitude", "is required")
        ts = now if timestamp is None else parse_timestamp(timestamp)
        if ts > now + MAX_FUTURE_SECONDS:
            raise InvalidField(
                "timestamp",
                "is more than 24 h in the future (expected unix seconds, milliseconds or ISO 8601)",
            )
        if ts < EARLIEST_TIMESTAMP:
            raise InvalidField("timestamp", "is before 1970")
        if heading is not None and not isinstance(heading, bool) and heading == 360:
            heading = 0.0
        if track_token is not None:
            track_token = clean_text(track_token, "track_token", max_length=MAX_TRACK_TOKEN_LENGTH)
            if not track_token:
                track_token = None
        return cls(
            latitude=_in_range(latitude, "latitude", -90, 90),
            longitude=_in_range(longitude, "longitude", -180, 180),
            timestamp=ts,
            speed=_optional(speed, "speed", 0, 1e4),
            heading=_optional(heading, "heading", 0, 360, high_open=True),
            accuracy=_optional(accuracy, "accuracy", 0, 1e7),
            altitude=_optional(altitude, "altitude", -1e5, 1e6),
            battery=_optional(battery, "battery", 0, 100),
            track_token=track_token,
            valid=valid,
            attributes=clean_attributes(attributes or {}),
        )


# The fields of Position, each set by its slot's own descriptor: `plain_position` builds
# a Position in about a third of the time of the dataclass __init__ (frozen, so every
# field goes through object.__setattr__), with the same values.
(
    _set_latitude,
    _set_longitude,
    _set_timestamp,
    _set_speed,
    _set_heading,
    _set_accuracy,
    _set_altitude,
    _set_battery,
    _set_track_token,
    _set_valid,
    _set_attributes,
) = (getattr(Position, name).__set__ for name in Position.__slots__)
_NUMBERS = (float, int)  # exactly these types: bool and subclasses take the full path
_PLAIN_RANGES = (("speed", 0.0, 1e4), ("accuracy", 0.0, 1e7), ("altitude", -1e5, 1e6))


def plain_position(item: dict[str, Any], now: float) -> Position | None:
    """`Position.build(**item, now=now)` for the common case, or None to take that path.

    The common case is a JSON object of plain numbers in range (the timestamp a
    number or absent) and a printable ASCII `track_token`, if any. For such an
    item the result equals what `build` returns, several times faster; anything
    else (an ISO time, a bool, NaN, a value out of range, another string) answers
    None and `build` decides, with its own error. Keys are not checked here.
    """
    try:
        return _plain_position(item, now)
    except OverflowError:  # an integer too large for a float: `build` says which field
        return None


def _plain_position(item: dict[str, Any], now: float) -> Position | None:
    get = item.get
    latitude = get("latitude")
    longitude = get("longitude")
    timestamp = get("timestamp")
    if type(latitude) not in _NUMBERS or type(longitude) not in _NUMBERS:
        return None
    if timestamp is None:
        timestamp = now
    elif type(timestamp) in _NUMBERS:
        timestamp = float(timestamp)
        if timestamp >= MILLISECONDS_THRESHOLD:
            timestamp /= 1000.0
    else:
        return None
    latitude, longitude = float(latitude), float(longitude)
    # NaN fails every comparison, and infinities the bounds, as in `build`.
    if not (
        -90.0 <= latitude <= 90.0
        and -180.0 <= longitude <= 180.0
        and EARLIEST_TIMESTAMP <= timestamp <= now + MAX_FUTURE_SECONDS
    ):
        return None
    optional = []
    for name, low, high in _PLAIN_RANGES:
        value = get(name)
        if value is not None:
            if type(value) not in _NUMBERS:
                return None
            value = float(value)
            if not low <= value <= high:
                return None
        optional.append(value)
    speed, accuracy, altitude = optional
    battery = get("battery")
    if battery is not None:
        if type(battery) not in _NUMBERS:
            return None
        battery = float(battery)
        if not 0.0 <= battery <= 100.0:
            return None
    heading = get("heading")
    if heading is not None:
        if type(heading) not in _NUMBERS:
            return None
        heading = float(heading)
        if heading == 360.0:
            heading = 0.0
        elif not 0.0 <= heading < 360.0:
            return None
    track_token = get("track_token")
    if track_token is not None:
        if (
            type(track_token) is not str
            or len(track_token) > MAX_TRACK_TOKEN_LENGTH
            or not track_token.isascii()
            or not track_token.isprintable()
        ):
            return None
        track_token = track_token or None
    position = object.__new__(Position)
    _set_latitude(position, latitude)
    _set_longitude(position, longitude)
    _set_timestamp(position, timestamp)
    _set_speed(position, speed)
    _set_heading(position, heading)
    _set_accuracy(position, accuracy)
    _set_altitude(position, altitude)
    _set_battery(position, battery)
    _set_track_token(position, track_token)
    _set_valid(position, True)
    _set_attributes(position, {})
    return position


def clean_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Extra attributes a device sent (alarm, charge, ...): bounded, scalar, clean."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidField("attributes", f"more than {MAX_ATTRIBUTES} extra attributes")
    cleaned: dict[str, Any] = {}
    for key, value in attributes.items():
        name = clean_text(str(key), "attributes", max_length=64)
        if isinstance(value, bool) or value is None:
            cleaned[name] = value
        elif isinstance(value, int | float):
            cleaned[name] = value if math.isfinite(value) else None
        else:
            cleaned[name] = clean_text(str(value), f"attributes.{name}", max_length=256)
    return cleaned


def _clean_short(value: str) -> str:
    return clean_text(value, "value", max_length=200)


def _clean_long(value: str) -> str:
    return clean_text(value, "value", max_length=MAX_STRING_LENGTH)


# Strings for request models: checked by clean_text (no controls, bidi or surrogates; NFC).
ShortText = Annotated[str, AfterValidator(_clean_short)]
LongText = Annotated[str, AfterValidator(_clean_long)]
DisplayField = Literal[PROFILE_FIELDS]  # type: ignore[valid-type]
# Names and ids that the REST API and the command line both take: one rule each.
DeviceToken = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_clean_short)]


def _mqtt_topic_shape(value: str) -> str:
    value = clean_text(value, "value", max_length=MAX_MQTT_TOPIC_LENGTH)
    if "+" in value or "#" in value:
        raise ValueError("must name one topic: no MQTT wildcards (+ or #)")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError("must not start or end with '/' or have an empty level")
    return value


MAX_MQTT_TOPIC_LENGTH = 256
# A device's MQTT identity: the topic its OwnTracks app publishes to, e.g. owntracks/alice/phone.
MqttTopic = Annotated[str, Field(min_length=1), AfterValidator(_mqtt_topic_shape)]
InstanceName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_clean_short),
]


def validated(kind: Any, value: Any, field: str) -> Any:
    """`value` checked against a shape above (DeviceToken, Profile, ...); InvalidField if not."""
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ").removeprefix("value: ")
        raise InvalidField(f"{field}.{where}" if where else field, message) from None


class Profile(BaseModel):
    """A driver's profile, as registered or fetched from the user service."""

    model_config = ConfigDict(extra="forbid")

    full_name: ShortText | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    nickname: ShortText | None = None
    email: ShortText | None = None
    phone: ShortText | None = None
    client_id: ShortText | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}
