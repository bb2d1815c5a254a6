"""Native JSON positions into Positions: strictly typed, a batch refused whole.

`POST /devices/{device_token}/positions` takes one position object or
`{"positions": [...]}`. Its clients are written against our own docs and can
read an error, so nothing is guessed: an unknown key, a numeric string or a
boolean where a number belongs, a negative speed, an empty or oversized batch
are refused. The first wrong value raises `IngestError` naming the index and
the field (`positions[3].latitude`), and nothing of the batch is stored, so
the client can fix and resend it without double-storing.

`IngestError` is the one error of every ingest parser: the OsmAnd and
OwnTracks modules raise it too, and `refused_at` turns the models' own
`InvalidField` into it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from tracker.models import InvalidField, Position, plain_position

MAX_BATCH_POSITIONS = 10_000

NATIVE_FIELDS = frozenset(
    {
        "latitude",
        "longitude",
        "timestamp",
        "speed",
        "heading",
        "accuracy",
        "altitude",
        "battery",
        "track_token",
    }
)


class IngestError(ValueError):
    """A payload refused whole; `path` says where, as the client spelled it.

    `index` is the position's place in its batch (None outside a batch),
    `field` the name inside that position, and `path` both together, e.g.
    `positions[3].latitude`, `location[0].coords.speed` or `lat`.
    """

    def __init__(self, index: int | None, field: str, message: str, *, batch: str = "positions"):
        self.index = index
        self.field = field
        self.message = message
        if index is None:
            self.path = field or "body"
        else:
            self.path = f"{batch}[{index}]" + (f".{field}" if field else "")
        super().__init__(f"{self.path}: {message}")


@contextmanager
def refused_at(index: int | None, batch: str = "positions") -> Iterator[None]:
    """Turn an `InvalidField` raised inside into an `IngestError` at that batch index."""
    try:
        yield
    except InvalidField as error:
        raise IngestError(index, error.field, error.message, batch=batch) from None


def parse_native(body: object, now: float | None = None) -> list[Position]:
    """The positions of a native JSON body, all valid, or IngestError for the first wrong one.

    A position without `timestamp` gets `now` (the time of receipt).
    """
    now = time.time() if now is None else now
    if not isinstance(body, dict):
        raise IngestError(None, "body", 'must be a position object or {"positions": [...]}')
    if "positions" not in body:
        return [_native_position(body, None, now)]
    for key in body:
        if key != "positions":
            raise IngestError(None, _spelled_key(key), "unknown field")
    items = body["positions"]
    if not isinstance(items, list):
        raise IngestError(None, "positions", "must be an array")
    if not items:
        raise IngestError(None, "positions", "is empty")
    if len(items) > MAX_BATCH_POSITIONS:
        raise IngestError(None, "positions", f"more than {MAX_BATCH_POSITIONS} in one batch")
    positions = []
    for index, item in enumerate(items):
        # The common case first: a well-formed fix of plain numbers. Anything else takes
        # the full path, which gives the same Position or the error naming the field.
        position = (
            plain_position(item, now)
            if type(item) is dict and item.keys() <= NATIVE_FIELDS
            else None
        )
        positions.append(position or _native_position(item, index, now))
    return positions


def _native_position(item: object, index: int | None, now: float) -> Position:
    with refused_at(index):
        if not isinstance(item, dict):
            raise InvalidField("", "must be a position object")
        for key in item:
            if key not in NATIVE_FIELDS:
                raise InvalidField(_spelled_key(key), "unknown field")
        timestamp = item.get("timestamp")
        if isinstance(timestamp, str) and _is_number_text(timestamp):
            # models.parse_timestamp would read it as seconds; native JSON is typed.
            raise InvalidField("timestamp", "must be a number or an ISO 8601 string")
        return Position.build(**{"latitude": None, "longitude": None, **item}, now=now)


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _spelled_key(key: object) -> str:
    # An unknown key is echoed to the client; a hostile one is not echoed whole.
    return str(key)[:64]
