"""Timestamps out: a stored UTC unix time as unix, ISO 8601 or human-readable, in a zone.

Positions are stored as UTC unix seconds (floats). A client chooses how it
sees them with two query values, `timezone` (an IANA name, default `UTC`)
and `date_format`:

- `unix`: integer seconds (the stored value, floored), the default;
- `iso`: ISO 8601 with the zone's offset at that instant, to the second,
  e.g. `2026-04-12T14:20:00+01:00` (UTC is `+00:00`, never `Z`);
- `human`: local time with the zone's abbreviation, e.g.
  `2026-04-12 14:20:00 BST`; `localized` is accepted as a synonym because
  the vendor's other documents use it.

REST handlers and the realtime stream both parse the two values once and
then format many timestamps, so they build one `TimeStyle` and call
`TimeStyle.format`. A bad value raises `TimeFormatError` naming it; the API
layer turns that into a 400.

Zone names are checked against the list the `tzdata` package ships, not
against whatever files the host happens to have, so the same names work on
every machine (and host-specific names such as `localtime` are refused).
Names are matched case-insensitively (`europe/london` is Europe/London).
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

DateFormat = Literal["unix", "iso", "human"]

DEFAULT_TIMEZONE = "UTC"
DEFAULT_DATE_FORMAT: DateFormat = "unix"

_DATE_FORMATS: dict[str, DateFormat] = {
    "unix": "unix",
    "iso": "iso",
    "human": "human",
    "localized": "human",
}

# Long enough for any real zone name; keeps an error message about junk short.
_MAX_SHOWN_CHARS = 64


class TimeFormatError(ValueError):
    """A `timezone` or `date_format` value that cannot be used; `field` says which."""

    def __init__(self, field: Literal["timezone", "date_format"], value: str, message: str):
        super().__init__(message)
        self.field = field
        self.value = value
        self.message = message


def _shown(value: str) -> str:
    if len(value) > _MAX_SHOWN_CHARS:
        value = value[:_MAX_SHOWN_CHARS] + "…"
    return repr(value)


@functools.cache
def _zone_names() -> dict[str, str]:
    """Every IANA zone name tzdata knows, keyed by its casefolded form."""
    names = importlib.resources.files("tzdata").joinpath("zones").read_text().split()
    return {name.casefold(): name for name in names}


def resolve_zone(name: str | None) -> ZoneInfo:
    """The zone an IANA name denotes; None means UTC.

    Raises TimeFormatError (field `timezone`) for an unknown or malformed
    name, including the empty string.
    """
    if name is None:
        name = DEFAULT_TIMEZONE
    key = _zone_names().get(name.casefold())
    if key is None:
        raise TimeFormatError(
            "timezone", name, f"unknown timezone {_shown(name)}; expected an IANA name"
        )
    return ZoneInfo(key)


def check_format(name: str | None) -> DateFormat:
    """The canonical date format a `date_format` value names; None means `unix`.

    `localized` is a synonym of `human`. Raises TimeFormatError (field
    `date_format`) for anything else.
    """
    if name is None:
        return DEFAULT_DATE_FORMAT
    date_format = _DATE_FORMATS.get(name)
    if date_format is None:
        raise TimeFormatError(
            "date_format",
            name,
            f"unknown date_format {_shown(name)}; expected unix, iso or human",
        )
    return date_format


def format_time(ts: float, fmt: str, zone: ZoneInfo) -> int | str:
    """A UTC unix timestamp in the given date format and zone.

    Every format shows the same whole second (the timestamp floored), so a
    client switching formats never sees a time move.
    """
    date_format = check_format(fmt)
    seconds = math.floor(ts)
    if date_format == "unix":
        return seconds
    local = datetime.fromtimestamp(seconds, zone)
    if date_format == "iso":
        return local.isoformat(timespec="seconds")
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


@dataclass(frozen=True)
class TimeStyle:
    """How one client wants its timestamps: a zone and a date format."""

    zone: ZoneInfo
    date_format: DateFormat = DEFAULT_DATE_FORMAT

    @classmethod
    def parse(cls, timezone: str | None = None, date_format: str | None = None) -> TimeStyle:
        """The style two query values ask for; absent values mean UTC and unix.

        Raises TimeFormatError naming the first bad value (timezone first).
        """
        return cls(zone=resolve_zone(timezone), date_format=check_format(date_format))

    @property
    def timezone(self) -> str:
        """The zone's canonical IANA name, for echoing the settings back."""
        return self.zone.key

    def format(self, ts: float) -> int | str:
        """A UTC unix timestamp in this style."""
        return format_time(ts, self.date_format, self.zone)
