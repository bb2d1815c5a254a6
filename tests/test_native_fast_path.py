"""A native client's fixes are judged the same whichever way they are validated.

Well-formed fixes of plain numbers take a fast path (`models.plain_position`);
everything else goes through `Position.build`. A client must not be able to
tell: the same body gives the same stored positions, and the same error.
"""

import itertools
import math

import pytest

from tracker.ingest.native import IngestError, parse_native
from tracker.models import InvalidField, Position, plain_position

NOW = 1_750_000_000.0

# Each field's values worth trying: in range, at the bounds, just outside, the wrong type.
VALUES = {
    "latitude": [51.5, 0, -90, 90, 90.0001, -90.5, True, "51.5", None, math.nan, math.inf, 10**400],
    "longitude": [-0.12, 180, -180.0, 180.5, False, "x", None, -math.inf],
    "timestamp": [
        NOW - 60,
        int(NOW),
        (NOW - 60) * 1000,
        NOW + 23 * 3600,
        NOW + 25 * 3600,
        -1,
        0,
        1e11,
        "2025-06-15T12:00:00Z",
        "1750000000",
        True,
        None,
        math.nan,
    ],
    "speed": [None, 0, 12.5, 1e4, 10001, -0.1, "5", math.nan],
    "heading": [None, 0, 359.9, 360, 360.0, 361, -1, True],
    "accuracy": [None, 0, 5, 1e7, 1e7 + 1, -1],
    "altitude": [None, -1e5, 35.2, 1e6, 1e6 + 1, -1e5 - 1],
    "battery": [None, 0, 55.5, 100, 100.5, -1],
    "track_token": [None, "", "trip-42", "x" * 128, "x" * 129, "tab\there", "é", "\u202e", 7],
}


def full_rules(item: dict) -> Position | str:
    try:
        return Position.build(**{"latitude": None, "longitude": None, **item}, now=NOW)
    except (InvalidField, OverflowError) as error:
        return f"{type(error).__name__}: {error}"


def items():
    """One field at a time from its list, the others at a plain in-range value."""
    plain = {"latitude": 51.5, "longitude": -0.12, "timestamp": NOW - 60, "speed": 3.0}
    for name, values in VALUES.items():
        for value in values:
            yield {**plain, name: value}
    for lat, ts, heading in itertools.product([1, 45.25], [NOW - 5, int(NOW) * 1000], [None, 360]):
        yield {"latitude": lat, "longitude": 2, "timestamp": ts, "heading": heading}
    yield {"latitude": 1.0, "longitude": 2.0}  # no timestamp: the time of receipt


@pytest.mark.parametrize("item", list(items()), ids=repr)
def test_the_fast_path_gives_what_the_full_rules_give_or_leaves_it_to_them(item):
    fast = plain_position(item, NOW)
    expected = full_rules(item)
    if fast is None:
        return
    assert isinstance(expected, Position), f"the full rules refuse it: {expected}"
    assert fast == expected
    assert [type(getattr(fast, f)) for f in Position.__slots__] == [
        type(getattr(expected, f)) for f in Position.__slots__
    ]


def test_a_plain_batch_takes_the_fast_path():
    fixes = [{"latitude": 51.5, "longitude": -0.12, "timestamp": NOW - 60 + i} for i in range(3)]
    assert all(plain_position(fix, NOW) is not None for fix in fixes)
    assert parse_native({"positions": fixes}, NOW) == [full_rules(fix) for fix in fixes]


@pytest.mark.parametrize(
    "bad, path",
    [
        ({"latitude": 91}, "positions[1].latitude"),
        ({"latitude": True}, "positions[1].latitude"),
        ({"timestamp": "1750000000"}, "positions[1].timestamp"),
        ({"heading": 360.5}, "positions[1].heading"),
        ({"track_token": "\u202e"}, "positions[1].track_token"),
        ({"colour": "red"}, "positions[1].colour"),
    ],
)
def test_a_bad_fix_after_plain_ones_is_refused_naming_it(bad, path):
    plain = {"latitude": 51.5, "longitude": -0.12, "timestamp": NOW - 60}
    body = {"positions": [plain, {**plain, "timestamp": NOW - 30, **bad}]}
    with pytest.raises(IngestError) as refused:
        parse_native(body, NOW)
    assert refused.value.path == path
