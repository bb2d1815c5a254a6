"""Timestamps as a client asks for them: unix, ISO 8601 or human, in a zone."""

from datetime import UTC, datetime

import pytest

from tracker.timefmt import (
    TimeFormatError,
    TimeStyle,
    check_format,
    format_time,
    resolve_zone,
)

SUMMER = datetime(2026, 4, 12, 13, 20, 0, tzinfo=UTC).timestamp()
WINTER = datetime(2026, 1, 12, 14, 20, 0, tzinfo=UTC).timestamp()


def test_unix_is_whole_seconds_as_an_int():
    value = format_time(SUMMER + 0.75, "unix", resolve_zone("UTC"))
    assert value == int(SUMMER)
    assert type(value) is int


def test_defaults_are_utc_and_unix():
    style = TimeStyle.parse(None, None)
    assert style.timezone == "UTC"
    assert style.date_format == "unix"
    assert style.format(SUMMER) == int(SUMMER)


def test_iso_in_utc_has_a_zero_offset():
    assert format_time(SUMMER, "iso", resolve_zone(None)) == "2026-04-12T13:20:00+00:00"


def test_london_in_summer_is_bst():
    london = resolve_zone("Europe/London")
    assert format_time(SUMMER, "iso", london) == "2026-04-12T14:20:00+01:00"
    assert format_time(SUMMER, "human", london) == "2026-04-12 14:20:00 BST"


def test_london_in_winter_is_gmt():
    london = resolve_zone("Europe/London")
    assert format_time(WINTER, "iso", london) == "2026-01-12T14:20:00+00:00"
    assert format_time(WINTER, "human", london) == "2026-01-12 14:20:00 GMT"


def test_zones_west_of_utc_and_with_half_hour_offsets():
    assert TimeStyle.parse("America/New_York", "iso").format(WINTER) == "2026-01-12T09:20:00-05:00"
    assert TimeStyle.parse("Asia/Kolkata", "human").format(WINTER) == "2026-01-12 19:50:00 IST"


def test_every_format_shows_the_same_second():
    style_iso = TimeStyle.parse("UTC", "iso")
    almost_next_second = SUMMER + 0.999
    assert style_iso.format(almost_next_second) == "2026-04-12T13:20:00+00:00"
    assert TimeStyle.parse("UTC", "unix").format(almost_next_second) == int(SUMMER)


def test_localized_is_a_synonym_of_human():
    assert check_format("localized") == "human"
    style = TimeStyle.parse("Europe/London", "localized")
    assert style.format(SUMMER) == "2026-04-12 14:20:00 BST"


def test_zone_names_are_matched_case_insensitively():
    assert resolve_zone("europe/london").key == "Europe/London"
    assert TimeStyle.parse("utc").timezone == "UTC"


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "../etc", "", "/etc/passwd", "Europe", "localtime", "UTC\x00"]
)
def test_unknown_timezone_is_refused_naming_the_value(name):
    with pytest.raises(TimeFormatError) as caught:
        resolve_zone(name)
    assert caught.value.field == "timezone"
    assert caught.value.value == name
    assert repr(name) in str(caught.value)


def test_a_very_long_timezone_is_named_but_cut_short():
    with pytest.raises(TimeFormatError) as caught:
        resolve_zone("A" * 5000)
    assert "AAAA" in str(caught.value)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("name", ["rfc2822", "", "ISO", "epoch"])
def test_unknown_date_format_is_refused_naming_the_value(name):
    with pytest.raises(TimeFormatError) as caught:
        check_format(name)
    assert caught.value.field == "date_format"
    assert repr(name) in str(caught.value)


def test_time_format_error_is_a_value_error():
    with pytest.raises(ValueError, match="Mars/Olympus"):
        TimeStyle.parse("Mars/Olympus", "iso")


def test_parse_reports_the_timezone_first_when_both_are_bad():
    with pytest.raises(TimeFormatError) as caught:
        TimeStyle.parse("Mars/Olympus", "rfc2822")
    assert caught.value.field == "timezone"


def test_a_style_is_an_immutable_value():
    style = TimeStyle.parse("Europe/London", "human")
    assert style == TimeStyle.parse("Europe/London", "localized")
    with pytest.raises(AttributeError):
        style.date_format = "iso"  # type: ignore[misc]
