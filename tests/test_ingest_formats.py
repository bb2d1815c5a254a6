"""What lands when each phone app's exact payload reaches the ingest parsers.

Payloads are the ones in spec/ingest-formats.md: Traccar Client classic
(query string, speed in knots), Traccar Client 10 (form body and JSON array),
Traccar Client 9 (JSON with the `_` fallback and a `location` backlog),
OwnTracks (km/h, iOS's -1 values, numeric-string tst), and our native JSON.
Every speed lands in m/s, every unknown as None, and every wrong value is
refused with the field named as the client spelled it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from tracker.ingest.native import IngestError, parse_native
from tracker.ingest.osmand import OsmandFix, parse_osmand_json, parse_osmand_params
from tracker.ingest.owntracks import parse_owntracks

FIX_TIME = 1776001200.0  # 2026-04-12 13:40:00 UTC
NOW = FIX_TIME + 60
TWO_DAYS = 2 * 24 * 3600
KEY = "4ak2VqZr8wXc1nP0"

CLASSIC_QUERY = (
    f"id={KEY}&timestamp=1776001200&lat=51.5074&lon=-0.1278&speed=24.3"
    "&bearing=245.0&altitude=21.0&accuracy=5.0&batt=87.0&charge=false"
)
CLIENT_10_FORM_BODY = (
    f"id={KEY}&lat=51.5074&lon=-0.1278&timestamp=1776001200&accuracy=5.0&altitude=21.0"
    "&speed=24.30&bearing=245.0&batt=87&charge=true&alarm=sos&battery_health=good"
    "&battery_voltage=4.1&battery_temp=31.5&shift=night"
)


def form(text: str) -> dict[str, str]:
    """A query string or form body as the endpoint hands it over: one value a name."""
    return dict(parse_qsl(text, keep_blank_values=True))


def osmand(text: str) -> OsmandFix:
    fix = parse_osmand_params(form(text), now=NOW)
    assert fix is not None
    return fix


def traccar_client_9_body(**coords: object) -> dict:
    return {
        "device_id": KEY,
        "location": {
            "timestamp": "2026-04-12T13:20:00.000Z",
            "coords": {
                "latitude": 51.5074,
                "longitude": -0.1278,
                "accuracy": 5.0,
                "speed": 12.5,
                "heading": 245.0,
                "altitude": 21.0,
                **coords,
            },
            "is_moving": True,
            "odometer": 1234.5,
            "event": "motionchange",
            "battery": {"level": 0.87, "is_charging": False},
            "activity": {"type": "in_vehicle"},
        },
    }


# -- Traccar Client classic and 10: form A ------------------------------------------------------


def test_traccar_client_speed_in_knots_lands_in_metres_per_second():
    fix = osmand(CLASSIC_QUERY)
    position = fix.position
    assert fix.identifier == KEY
    assert position.latitude == 51.5074 and position.longitude == -0.1278
    assert position.timestamp == FIX_TIME
    assert position.speed == pytest.approx(12.501, abs=1e-3)
    assert position.heading == 245.0
    assert position.altitude == 21.0
    assert position.accuracy == 5.0
    assert position.battery == 87.0
    assert position.attributes == {"charge": False}
    assert position.valid


def test_traccar_client_10_form_body_keeps_sos_alarm_and_battery_details_for_dispatchers():
    position = osmand(CLIENT_10_FORM_BODY).position
    assert position.speed == pytest.approx(24.30 * 1852 / 3600)
    assert position.battery == 87.0
    assert position.attributes == {
        "charge": True,
        "alarm": "sos",
        "battery_health": "good",
        "battery_voltage": 4.1,
        "battery_temp": 31.5,
        "shift": "night",
    }


def test_device_identifier_may_be_sent_as_deviceid():
    fix = osmand(f"deviceid={KEY}&lat=51.5074&lon=-0.1278")
    assert fix.identifier == KEY


def test_ingest_key_never_shows_in_a_logged_fix():
    assert KEY not in repr(osmand(CLASSIC_QUERY))


def test_classic_android_accuracy_zero_is_stored_as_unknown():
    assert osmand(CLASSIC_QUERY.replace("accuracy=5.0", "accuracy=0")).position.accuracy is None


def test_minus_one_speed_bearing_and_battery_are_stored_as_unknown_not_refused():
    query = CLASSIC_QUERY.replace("speed=24.3", "speed=-1").replace("bearing=245.0", "bearing=-1")
    position = osmand(query.replace("batt=87.0", "batt=-1")).position
    assert (position.speed, position.heading, position.battery) == (None, None, None)


def test_stopped_phone_facing_due_north_keeps_zero_speed_and_zero_heading():
    position = osmand(CLASSIC_QUERY.replace("speed=24.3", "speed=0").replace("245.0", "0")).position
    assert position.speed == 0.0
    assert position.heading == 0.0


def test_heading_param_is_read_when_bearing_is_absent():
    position = osmand(f"id={KEY}&lat=1&lon=2&heading=360").position
    assert position.heading == 0.0


def test_millisecond_timestamp_is_read_as_seconds():
    position = osmand(CLASSIC_QUERY.replace("1776001200", "1776001200500")).position
    assert position.timestamp == FIX_TIME + 0.5


def test_iso_timestamp_with_t_is_read_as_utc():
    position = osmand(f"id={KEY}&lat=1&lon=2&timestamp=2026-04-12T13:40:00Z").position
    assert position.timestamp == FIX_TIME


def test_space_separated_timestamp_is_read_as_utc():
    position = osmand(f"id={KEY}&lat=1&lon=2&timestamp=2026-04-12%2013:40:00").position
    assert position.timestamp == FIX_TIME


def test_iso_offset_sent_unencoded_in_a_query_string_survives_form_decoding():
    position = osmand(f"id={KEY}&lat=1&lon=2&timestamp=2026-04-12T14:40:00.250+01:00").position
    assert position.timestamp == FIX_TIME + 0.25


def test_fix_without_timestamp_gets_time_of_receipt():
    assert osmand(f"id={KEY}&lat=1&lon=2").position.timestamp == NOW


def test_coordinates_may_come_as_one_location_pair():
    position = osmand(f"id={KEY}&location=51.5074,-0.1278").position
    assert (position.latitude, position.longitude) == (51.5074, -0.1278)


@pytest.mark.parametrize("flag", ["false", "0"])
def test_fix_flagged_invalid_is_stored_but_marked_invalid(flag):
    assert not osmand(f"{CLASSIC_QUERY}&valid={flag}").position.valid


@pytest.mark.parametrize("flag", ["true", "1"])
def test_fix_flagged_valid_is_valid(flag):
    assert osmand(f"{CLASSIC_QUERY}&valid={flag}").position.valid


def test_cell_only_request_is_acknowledged_and_stores_no_position():
    fix = osmand(f"id={KEY}&timestamp=1776001200&cell=234,15,1234,5678&wifi=aa-bb-cc-dd-ee-ff,-60")
    assert fix.identifier == KEY
    assert fix.position is None


def test_request_without_any_parameter_gives_nothing_to_store():
    assert parse_osmand_params({}, now=NOW) is None


def test_oversized_unknown_parameter_is_dropped_rather_than_refusing_the_fix():
    wifi = ",".join(["aa-bb-cc-dd-ee-ff,-60"] * 40)
    position = osmand(f"{CLASSIC_QUERY}&wifi={wifi}&hdop=0.9").position
    assert "wifi" not in position.attributes
    assert position.attributes["hdop"] == 0.9


def test_request_without_device_identifier_is_refused():
    with pytest.raises(IngestError) as refused:
        parse_osmand_params(form("lat=51.5074&lon=-0.1278"), now=NOW)
    assert refused.value.path == "id"


@pytest.mark.parametrize(
    ("replace", "by", "field"),
    [
        ("lat=51.5074", "lat=91", "lat"),
        ("lat=51.5074", "lat=nan", "lat"),
        ("lon=-0.1278", "lon=inf", "lon"),
        ("lon=-0.1278", "lon=-Infinity", "lon"),
        ("speed=24.3", "speed=1e999", "speed"),
        ("altitude=21.0", "altitude=NaN", "altitude"),
        ("accuracy=5.0", "accuracy=1_000", "accuracy"),
        ("bearing=245.0", "bearing=400", "bearing"),
        ("batt=87.0", "batt=187", "batt"),
        ("speed=24.3", "speed=-5", "speed"),
        ("timestamp=1776001200", "timestamp=nan", "timestamp"),
        ("timestamp=1776001200", f"timestamp={int(FIX_TIME + TWO_DAYS)}", "timestamp"),
        ("timestamp=1776001200", "timestamp=yesterday", "timestamp"),
    ],
)
def test_hostile_form_value_is_refused_naming_the_parameter(replace, by, field):
    with pytest.raises(IngestError) as refused:
        osmand(CLASSIC_QUERY.replace(replace, by))
    assert refused.value.path == field


def test_non_finite_string_is_refused_as_not_finite():
    with pytest.raises(IngestError, match="finite"):
        osmand(CLASSIC_QUERY.replace("speed=24.3", "speed=1e999"))


def test_malformed_location_pair_is_refused():
    with pytest.raises(IngestError) as refused:
        osmand(f"id={KEY}&location=51.5074")
    assert refused.value.path == "location"


# -- Traccar Client 10 uploadJson: an array of flat objects --------------------------------------


def test_traccar_client_10_json_array_lands_every_fix_in_metres_per_second():
    body = [
        {"id": KEY, "lat": 51.5074, "lon": -0.1278, "timestamp": 1776001200, "speed": 24.3,
         "bearing": 245.0, "accuracy": 5.0, "batt": 87, "charge": False, "alarm": "sos"},
        {"id": KEY, "lat": "51.5075", "lon": "-0.1279", "timestamp": "1776001210", "speed": "0"},
    ]  # fmt: skip
    first, second = parse_osmand_json(body, now=NOW)
    assert first.identifier == second.identifier == KEY
    assert first.position.speed == pytest.approx(12.501, abs=1e-3)
    assert first.position.attributes == {"charge": False, "alarm": "sos"}
    assert second.position.latitude == 51.5075
    assert second.position.timestamp == FIX_TIME + 10
    assert second.position.speed == 0.0


def test_json_array_names_the_index_of_the_wrong_fix():
    body = [{"id": KEY, "lat": 51.5, "lon": 0.1}, {"id": KEY, "lat": 91, "lon": 0.1}]
    with pytest.raises(IngestError) as refused:
        parse_osmand_json(body, now=NOW)
    assert refused.value.path == "[1].lat"
    assert refused.value.index == 1


# -- Traccar Client 9: form B JSON ---------------------------------------------------------------


def test_traccar_client_9_json_speed_is_already_metres_per_second():
    (fix,) = parse_osmand_json(traccar_client_9_body(), now=NOW)
    position = fix.position
    assert fix.identifier == KEY
    assert position.timestamp == FIX_TIME - 1200
    assert position.speed == 12.5
    assert (position.heading, position.accuracy, position.altitude) == (245.0, 5.0, 21.0)


def test_traccar_client_9_battery_fraction_lands_as_percent_with_charging_state():
    (fix,) = parse_osmand_json(traccar_client_9_body(), now=NOW)
    assert fix.position.battery == 87.0
    assert fix.position.attributes == {
        "charge": False,
        "is_moving": True,
        "odometer": 1234.5,
        "event": "motionchange",
        "activity.type": "in_vehicle",
    }


def test_traccar_client_9_minus_one_speed_and_heading_are_unknown():
    (fix,) = parse_osmand_json(traccar_client_9_body(speed=-1, heading=-1), now=NOW)
    assert fix.position.speed is None
    assert fix.position.heading is None


def test_traccar_client_9_json_fields_win_over_the_underscore_fallback():
    body = traccar_client_9_body()
    body["_"] = "&id=someone-else&lat=10&lon=20&speed=99&timestamp=1776000000&"
    body["location"]["_"] = "&lat=11&lon=21&bearing=90&"
    (fix,) = parse_osmand_json(body, now=NOW)
    assert fix.identifier == KEY
    assert (fix.position.latitude, fix.position.longitude) == (51.5074, -0.1278)
    assert fix.position.speed == 12.5
    assert fix.position.heading == 245.0


def test_traccar_client_9_underscore_fallback_fills_what_the_json_lacks():
    body = {
        "location": {
            "timestamp": "2026-04-12T13:20:00.000Z",
            "_": f"&id={KEY}&lat=51.5074&lon=-0.1278&speed=24.3&batt=87&",
        },
        "_": f"&id={KEY}&lat=10&lon=20&altitude=21.0&",
    }
    (fix,) = parse_osmand_json(body, now=NOW)
    assert fix.identifier == KEY
    assert (fix.position.latitude, fix.position.longitude) == (51.5074, -0.1278)
    assert fix.position.speed == pytest.approx(12.501, abs=1e-3)  # the form string is in knots
    assert fix.position.battery == 87.0
    assert fix.position.altitude == 21.0
    assert fix.position.timestamp == FIX_TIME - 1200


def test_traccar_client_9_backlog_array_lands_every_location():
    body = traccar_client_9_body()
    first = body["location"]
    second = {"timestamp": 1776001200000, "coords": {"latitude": 51.6, "longitude": -0.2}}
    body["location"] = [first, second]
    fixes = parse_osmand_json(body, now=NOW)
    assert [fix.position.latitude for fix in fixes] == [51.5074, 51.6]
    assert fixes[1].position.timestamp == FIX_TIME
    assert {fix.identifier for fix in fixes} == {KEY}


def test_traccar_client_9_backlog_error_names_the_location_index():
    body = traccar_client_9_body()
    body["location"] = [body["location"], {"coords": {"latitude": 51.6, "longitude": 181}}]
    with pytest.raises(IngestError) as refused:
        parse_osmand_json(body, now=NOW)
    assert refused.value.path == "location[1].coords.longitude"


def test_traccar_client_9_location_without_coords_stores_nothing():
    body = {"device_id": KEY, "location": {"timestamp": "2026-04-12T13:20:00Z", "battery": {}}}
    (fix,) = parse_osmand_json(body, now=NOW)
    assert fix.position is None


def test_traccar_client_9_coords_with_only_longitude_is_refused_naming_latitude():
    body = {"device_id": KEY, "location": {"coords": {"longitude": -0.1278}}}
    with pytest.raises(IngestError) as refused:
        parse_osmand_json(body, now=NOW)
    assert refused.value.path == "location.coords.latitude"


def test_traccar_client_9_body_without_device_id_is_refused():
    body = traccar_client_9_body()
    del body["device_id"]
    with pytest.raises(IngestError) as refused:
        parse_osmand_json(body, now=NOW)
    assert refused.value.path == "device_id"


# -- OwnTracks ----------------------------------------------------------------------------------

OWNTRACKS_LOCATION = {
    "_type": "location", "lat": 51.5074, "lon": -0.1278, "tst": 1776001200, "acc": 5,
    "alt": 21, "vel": 45, "cog": 245, "batt": 87, "bs": 1, "tid": "JS", "conn": "m", "t": "u",
}  # fmt: skip


def test_owntracks_speed_in_km_per_hour_lands_in_metres_per_second():
    result = parse_owntracks(OWNTRACKS_LOCATION, now=NOW)
    position = result.position
    assert not result.encrypted
    assert position.speed == 12.5
    assert (position.latitude, position.longitude) == (51.5074, -0.1278)
    assert position.timestamp == FIX_TIME
    assert (position.heading, position.accuracy, position.altitude) == (245.0, 5.0, 21.0)
    assert position.battery == 87.0


def test_owntracks_labels_are_kept_as_attributes():
    body = {**OWNTRACKS_LOCATION, "topic": "owntracks/jane/phone", "inregions": ["Home"]}
    attributes = parse_owntracks(body, now=NOW).position.attributes
    assert attributes == {
        "bs": 1,
        "tid": "JS",
        "conn": "m",
        "t": "u",
        "topic": "owntracks/jane/phone",
        "inregions": "Home",
    }


def test_owntracks_ios_minus_one_values_are_stored_as_unknown():
    body = {**OWNTRACKS_LOCATION, "vel": -1, "cog": -1, "batt": -1, "vac": -1}
    position = parse_owntracks(body, now=NOW).position
    assert (position.speed, position.heading, position.battery) == (None, None, None)
    assert "vac" not in position.attributes


def test_owntracks_fields_left_out_when_zero_are_unknown():
    body = {"_type": "location", "lat": 51, "lon": 0, "tst": 1776001200}
    position = parse_owntracks(body, now=NOW).position
    assert (position.latitude, position.longitude) == (51.0, 0.0)
    assert (position.speed, position.heading, position.accuracy) == (None, None, None)


def test_owntracks_numeric_string_tst_is_the_fix_time():
    body = {**OWNTRACKS_LOCATION, "tst": "1776001200", "created_at": 1776001250}
    assert parse_owntracks(body, now=NOW).position.timestamp == FIX_TIME


def test_owntracks_millisecond_tst_is_read_as_seconds():
    body = {**OWNTRACKS_LOCATION, "tst": 1776001200000}
    assert parse_owntracks(body, now=NOW).position.timestamp == FIX_TIME


def test_owntracks_encrypted_payload_is_flagged_for_a_clear_refusal():
    result = parse_owntracks({"_type": "encrypted", "data": "q83vEj..."}, now=NOW)
    assert result.encrypted
    assert result.position is None


@pytest.mark.parametrize(
    "message_type",
    ["transition", "waypoint", "waypoints", "lwt", "card", "status", "request", "steps"],
)
def test_owntracks_messages_other_than_location_store_nothing(message_type):
    result = parse_owntracks({"_type": message_type, "tst": 1776001200, "lat": 1}, now=NOW)
    assert result.position is None
    assert not result.encrypted
    assert result.message_type == message_type


@pytest.mark.parametrize("body", [None, "", {}])
def test_owntracks_empty_body_is_accepted_and_stores_nothing(body):
    result = parse_owntracks(body, now=NOW)
    assert result.position is None
    assert not result.encrypted


def test_owntracks_location_without_coordinates_stores_nothing():
    body = {"_type": "location", "tst": 1776001200, "batt": 50, "conn": "w"}
    assert parse_owntracks(body, now=NOW).position is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lat", 91),
        ("lon", "nan"),
        ("vel", "inf"),
        ("alt", "1e999"),
        ("cog", 400),
        ("batt", True),
        ("tst", FIX_TIME + TWO_DAYS),
        ("tst", "soon"),
    ],
)
def test_owntracks_wrong_value_is_refused_naming_the_field(key, value):
    with pytest.raises(IngestError) as refused:
        parse_owntracks({**OWNTRACKS_LOCATION, key: value}, now=NOW)
    assert refused.value.path == key


def test_owntracks_body_that_is_not_an_object_is_refused():
    with pytest.raises(IngestError):
        parse_owntracks([OWNTRACKS_LOCATION], now=NOW)


# -- native JSON ---------------------------------------------------------------------------------

NATIVE_POSITION = {
    "latitude": 51.5074, "longitude": -0.1278, "timestamp": 1776001200, "speed": 12.5,
    "heading": 245.0, "accuracy": 5.0, "altitude": 21.0, "battery": 87,
    "track_token": "optional-client-trip-id",
}  # fmt: skip


def test_native_batch_lands_as_given_in_si_units():
    (position,) = parse_native({"positions": [NATIVE_POSITION]}, now=NOW)
    assert position.timestamp == FIX_TIME
    assert position.speed == 12.5
    assert (position.heading, position.accuracy, position.altitude) == (245.0, 5.0, 21.0)
    assert position.battery == 87.0
    assert position.track_token == "optional-client-trip-id"


def test_native_single_position_without_wrapper_is_accepted():
    (position,) = parse_native({"latitude": 51, "longitude": 0}, now=NOW)
    assert (position.latitude, position.longitude, position.timestamp) == (51.0, 0.0, NOW)


def test_native_millisecond_and_iso_timestamps_are_read_as_seconds():
    positions = parse_native(
        {"positions": [
            {**NATIVE_POSITION, "timestamp": 1776001200000},
            {**NATIVE_POSITION, "timestamp": "2026-04-12T14:40:00+01:00"},
        ]},
        now=NOW,
    )  # fmt: skip
    assert [position.timestamp for position in positions] == [FIX_TIME, FIX_TIME]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("speed", -1),
        ("accuracy", -1),
        ("battery", -1),
        ("latitude", 91),
        ("latitude", "51.5"),
        ("speed", True),
        ("timestamp", "1776001200"),
        ("timestamp", FIX_TIME + TWO_DAYS),
        ("track_token", "trip\x00"),
    ],
)
def test_native_wrong_value_refuses_the_whole_batch_naming_index_and_field(field, value):
    batch = {"positions": [NATIVE_POSITION, {**NATIVE_POSITION, field: value}]}
    with pytest.raises(IngestError) as refused:
        parse_native(batch, now=NOW)
    assert refused.value.path == f"positions[1].{field}"
    assert refused.value.index == 1


def test_native_unknown_key_is_refused_by_name():
    with pytest.raises(IngestError) as refused:
        parse_native({"positions": [{**NATIVE_POSITION, "lat": 51.5}]}, now=NOW)
    assert refused.value.path == "positions[0].lat"


def test_native_position_without_latitude_is_refused():
    with pytest.raises(IngestError) as refused:
        parse_native({"longitude": 0.1}, now=NOW)
    assert refused.value.path == "latitude"


@pytest.mark.parametrize(
    "body",
    [{"positions": []}, {"positions": [NATIVE_POSITION] * 10_001}, {"positions": {}}],
)
def test_native_empty_or_oversized_batch_is_refused(body):
    with pytest.raises(IngestError) as refused:
        parse_native(body, now=NOW)
    assert refused.value.path == "positions"


def test_native_body_that_is_not_a_position_is_refused():
    with pytest.raises(IngestError) as refused:
        parse_native([NATIVE_POSITION], now=NOW)
    assert refused.value.path == "body"
