"""Overland, GPSLogger and μlogger, unchanged, against the real server.

Each test replays what the app sends, written from the app's own published
format: Overland's README (a `locations` array of GeoJSON Point features,
`Authorization: Bearer <access token>`, success only on `{"result": "ok"}`),
GPSLogger's custom-URL substitutions (`%LAT`, `%SPD` in m/s, `%TIMESTAMP`
in seconds, `%TIME` ISO, values as Java prints doubles) and μlogger's client
protocol (`client/index.php` with `action=auth|addtrack|addpos`, form or
multipart, a session cookie). Positions are read back through
`GET /position` and `/tracks`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from tests.conftest import bearer

BASE = time.time() - 3600  # an hour ago: fixes in order from here


@pytest.fixture
async def apps(server):
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def latest(http, fleet) -> dict:
    response = await http.get(
        f"/devices/{fleet.a.device_token}/position",
        params={"date_format": "unix"},
        headers=bearer(fleet.a.read_token),
    )
    assert response.status_code == 200, response.text
    return response.json()


async def track(http, fleet) -> list[dict]:
    response = await http.get(
        f"/devices/{fleet.a.device_token}/tracks",
        params={"date_format": "unix"},
        headers=bearer(fleet.a.read_token),
    )
    assert response.status_code == 200, response.text
    return response.json()["waypoints"]


async def nothing_stored(http, fleet) -> bool:
    response = await http.get(
        f"/devices/{fleet.a.device_token}/position", headers=bearer(fleet.a.read_token)
    )
    return response.status_code == 404


# -- Overland -----------------------------------------------------------------------------------


def overland_feature(at: float, lat: float, lon: float, **properties) -> dict:
    """One location as Overland's README shows it (local time with a -0700 offset)."""
    local = datetime.fromtimestamp(at, timezone(timedelta(hours=-7)))
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": {
            "timestamp": local.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "altitude": 21,
            "speed": 4,
            "horizontal_accuracy": 30,
            "vertical_accuracy": -1,
            "motion": ["driving", "stationary"],
            "pauses": False,
            "activity": "other_navigation",
            "desired_accuracy": 100,
            "deferred": 1000,
            "significant_change": "disabled",
            "locations_in_payload": 1,
            "battery_state": "charging",
            "battery_level": 0.89,
            "device_id": "",
            "wifi": "",
            **properties,
        },
    }


async def test_overland_batch_lands_with_lon_lat_order_and_units(apps, http, fleet):
    locations = [
        overland_feature(BASE + 10 * i, 51.50 + i / 1000, -0.12 - i / 1000) for i in range(250)
    ]
    response = await apps.post(
        "/ingest/overland",
        json={"locations": locations},
        headers={"Authorization": f"Bearer {fleet.a.ingest_key}"},
    )
    assert response.status_code == 200
    assert response.json() == {"result": "ok"}
    last = await latest(http, fleet)
    assert last["latitude"] == pytest.approx(51.749) and last["longitude"] == pytest.approx(-0.369)
    assert last["timestamp"] == int(BASE + 2490)
    assert last["speed"] == 4 and last["accuracy"] == 30 and last["altitude"] == 21
    assert last["battery"] == pytest.approx(89)
    assert last["attributes"]["motion"] == "driving,stationary"
    assert last["attributes"]["battery_state"] == "charging"
    assert "device_id" not in last["attributes"]  # sent empty: not kept
    assert len(await track(http, fleet)) == 250


async def test_overland_resend_and_backlog_answer_ok_and_store_once(apps, http, fleet):
    headers = {"Authorization": f"Bearer {fleet.a.ingest_key}"}
    newer = [overland_feature(BASE + 100 + i, 51.5, -0.1 + i / 1000) for i in range(3)]
    older = [overland_feature(BASE + i, 51.4, -0.2 + i / 1000) for i in range(3)]
    for body in ({"locations": newer}, {"locations": newer}, {"locations": older}):
        response = await apps.post("/ingest/overland", json=body, headers=headers)
        assert response.json() == {"result": "ok"}  # all duplicates: still ok, or the app resends
    assert len(await track(http, fleet)) == 6
    assert (await latest(http, fleet))["timestamp"] == int(BASE + 102)  # the backlog is not live


async def test_overland_current_point_moves_the_live_position(apps, http, fleet):
    body = {
        "locations": [overland_feature(BASE + i, 51.5, -0.1) for i in range(2)],
        "current": overland_feature(BASE + 500, 51.6, -0.2),
        "trip": {"distance": 1234, "mode": "car", "start": "2026-01-01T00:00:00Z"},
    }
    headers = {"Authorization": f"Bearer {fleet.a.ingest_key}"}
    assert (await apps.post("/ingest/overland", json=body, headers=headers)).status_code == 200
    assert (await latest(http, fleet))["timestamp"] == int(BASE + 500)


async def test_overland_unknown_speed_and_missing_fields_are_unknown(apps, http, fleet):
    feature = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [-0.1, 51.5]},
        "properties": {"timestamp": "2026-11-30T10:00:00Z", "speed": -1, "course": -1},
    }
    feature["properties"]["timestamp"] = datetime.fromtimestamp(BASE, UTC).isoformat()
    response = await apps.post(
        f"/ingest/overland?token={fleet.a.ingest_key}", json={"locations": [feature]}
    )
    assert response.json() == {"result": "ok"}
    last = await latest(http, fleet)
    assert last["speed"] is None and last["heading"] is None and last["battery"] is None


async def test_overland_bad_point_is_skipped_and_the_rest_stored(apps, http, fleet):
    good = overland_feature(BASE, 51.5, -0.1)
    out_of_range = overland_feature(BASE + 1, 95.0, -0.1)
    no_geometry = {"type": "Feature", "properties": {"timestamp": "2026-01-01T00:00:00Z"}}
    response = await apps.post(
        "/ingest/overland",
        json={"locations": [good, out_of_range, no_geometry]},
        headers={"Authorization": f"Bearer {fleet.a.ingest_key}"},
    )
    assert response.json() == {"result": "ok"}  # else the app would resend the batch forever
    assert [w["latitude"] for w in await track(http, fleet)] == [51.5]


@pytest.mark.parametrize(
    "body", [b"not json", b'{"locations": "nope"}', b"[1, 2]", b'{"no_locations": []}']
)
async def test_overland_malformed_body_is_400_and_stores_nothing(apps, http, fleet, body):
    response = await apps.post(
        "/ingest/overland",
        content=body,
        headers={
            "Authorization": f"Bearer {fleet.a.ingest_key}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert await nothing_stored(http, fleet)


async def test_overland_wrong_access_token_is_401(apps, fleet):
    body = {"locations": [overland_feature(BASE, 51.5, -0.1)]}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = await apps.post("/ingest/overland", json=body, headers=headers)
        assert response.status_code == 401


# -- GPSLogger ----------------------------------------------------------------------------------

GPSLOGGER_TEMPLATE = (
    "/ingest/gpslogger?id={key}&lat=%LAT&lon=%LON&timestamp=%TIMESTAMP&speed=%SPD"
    "&bearing=%DIR&altitude=%ALT&accuracy=%ACC&batt=%BATT"
)


def gpslogger_url(template: str, key: str, at: float, **values: str) -> str:
    """The URL as GPSLogger builds it: each %NAME replaced by Java's String.valueOf."""
    filled = {
        "%LAT": "51.5074",
        "%LON": "-0.1278",
        "%TIMESTAMP": str(int(at)),
        "%TIME": datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "%SPD": "12.5",
        "%DIR": "245.0",
        "%ALT": "21.0",
        "%ACC": "5.0",
        "%BATT": "87.0",
        **values,
    }
    url = template.format(key=key)
    for name, value in filled.items():
        url = url.replace(name, value)
    return url


async def test_gpslogger_get_lands_with_speed_in_metres_per_second(apps, http, fleet):
    response = await apps.get(gpslogger_url(GPSLOGGER_TEMPLATE, fleet.a.ingest_key, BASE))
    assert response.status_code == 200
    last = await latest(http, fleet)
    assert last["speed"] == 12.5  # m/s as sent (the OsmAnd path would read knots)
    assert (last["heading"], last["altitude"], last["accuracy"]) == (245.0, 21.0, 5.0)
    assert last["battery"] == 87.0 and last["timestamp"] == int(BASE)


async def test_gpslogger_post_body_and_iso_time(apps, http, fleet):
    body = gpslogger_url(
        "lat=%LAT&lon=%LON&time=%TIME&speed=%SPD", fleet.a.ingest_key, BASE + 5
    ).replace("time=", "timestamp=")
    response = await apps.post(
        "/ingest/gpslogger",
        content=f"id={fleet.a.ingest_key}&{body}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    last = await latest(http, fleet)
    assert last["timestamp"] == int(BASE + 5) and last["speed"] == 12.5


async def test_gpslogger_duplicate_backlog_and_missing_fields(apps, http, fleet):
    template = "/ingest/gpslogger?id={key}&lat=%LAT&lon=%LON&timestamp=%TIMESTAMP"
    newer = gpslogger_url(template, fleet.a.ingest_key, BASE + 60, **{"%LAT": "51.6"})
    older = gpslogger_url(template, fleet.a.ingest_key, BASE + 30, **{"%LAT": "51.55"})
    for url in (newer, newer, older):
        assert (await apps.get(url)).status_code == 200
    waypoints = await track(http, fleet)
    assert [w["latitude"] for w in waypoints] == [51.55, 51.6]
    last = await latest(http, fleet)
    assert last["latitude"] == 51.6 and last["speed"] is None and last["heading"] is None


async def test_gpslogger_malformed_value_is_400_naming_it(apps, http, fleet):
    url = gpslogger_url(GPSLOGGER_TEMPLATE, fleet.a.ingest_key, BASE, **{"%SPD": "fast"})
    response = await apps.get(url)
    assert response.status_code == 400 and "speed" in response.json()["error"]["message"]
    assert await nothing_stored(http, fleet)


# -- μlogger ------------------------------------------------------------------------------------

ULOGGER = "/ingest/ulogger/client/index.php"


async def ulogger_session(apps, fleet) -> int:
    """Sign in as the app does, then start a track; returns its id."""
    auth = await apps.post(
        ULOGGER,
        data={"action": "auth", "user": fleet.a.device_token, "pass": fleet.a.ingest_key},
    )
    assert auth.status_code == 200 and auth.json() == {"error": False}
    assert "ulogger" in apps.cookies
    started = await apps.post(ULOGGER, data={"action": "addtrack", "track": "Auto_2026.11.30"})
    assert started.json()["error"] is False
    return started.json()["trackid"]


def ulogger_position(track_id: int, at: float, **extra: str) -> dict[str, str]:
    return {
        "action": "addpos",
        "trackid": str(track_id),
        "time": str(int(at)),
        "lat": "51.5074",
        "lon": "-0.1278",
        "altitude": "21.0",
        "speed": "8.5",
        "bearing": "90.0",
        "accuracy": "7",
        "provider": "gps",
        "battery": "64",
        **extra,
    }


async def test_ulogger_signs_in_starts_a_track_and_posts_positions(apps, http, fleet):
    track_id = await ulogger_session(apps, fleet)
    for i in range(3):
        response = await apps.post(ULOGGER, data=ulogger_position(track_id, BASE + i))
        assert response.json() == {"error": False}
    last = await latest(http, fleet)
    assert last["speed"] == 8.5 and last["heading"] == 90.0 and last["battery"] == 64
    assert last["track_token"] == f"ulogger-{track_id}"  # the app's track is the trip
    assert last["attributes"]["provider"] == "gps"
    assert len(await track(http, fleet)) == 3


async def test_ulogger_waypoint_with_a_photo_is_stored_without_the_photo(apps, http, fleet):
    track_id = await ulogger_session(apps, fleet)
    fields = ulogger_position(track_id, BASE, comment="Delivered at the back door")
    response = await apps.post(
        ULOGGER,
        data=fields,
        files={"image": ("upload", b"\xff\xd8\xff" + b"0" * 2000, "image/jpeg")},
    )
    assert response.json() == {"error": False}
    assert (await latest(http, fleet))["attributes"]["comment"] == "Delivered at the back door"


async def test_ulogger_duplicate_and_backlog_positions(apps, http, fleet):
    track_id = await ulogger_session(apps, fleet)
    for at in (BASE + 60, BASE + 60, BASE + 30):
        response = await apps.post(ULOGGER, data=ulogger_position(track_id, at))
        assert response.json() == {"error": False}
    assert [w["timestamp"] for w in await track(http, fleet)] == [int(BASE + 30), int(BASE + 60)]
    assert (await latest(http, fleet))["timestamp"] == int(BASE + 60)


async def test_ulogger_missing_optional_fields_are_unknown(apps, http, fleet):
    track_id = await ulogger_session(apps, fleet)
    minimal = {"action": "addpos", "trackid": str(track_id), "time": str(int(BASE)),
               "lat": "51.5", "lon": "-0.1"}  # fmt: skip
    assert (await apps.post(ULOGGER, data=minimal)).json() == {"error": False}
    last = await latest(http, fleet)
    assert last["speed"] is None and last["altitude"] is None and last["accuracy"] is None


async def test_ulogger_malformed_position_is_an_error_answer_and_stores_nothing(apps, http, fleet):
    track_id = await ulogger_session(apps, fleet)
    for bad in ({"lat": ""}, {"lat": "abc"}, {"lon": "200"}, {"trackid": "x"}, {"time": "soon"}):
        response = await apps.post(ULOGGER, data=ulogger_position(track_id, BASE, **bad))
        assert response.status_code == 200
        assert response.json()["error"] is True and response.json()["message"]
    assert await nothing_stored(http, fleet)


async def test_ulogger_needs_a_session_and_the_right_password(apps, fleet, server):
    wrong = await apps.post(
        ULOGGER, data={"action": "auth", "user": fleet.a.device_token, "pass": "wrong"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    async with httpx.AsyncClient(base_url=server.url) as stranger:
        no_session = await stranger.post(ULOGGER, data=ulogger_position(1, BASE))
        assert no_session.status_code == 401
        stranger.cookies.set("ulogger", f"{fleet.a.device_token}.9999999999.forged")
        forged = await stranger.post(ULOGGER, data=ulogger_position(1, BASE))
        assert forged.status_code == 401


async def test_ulogger_session_ends_when_the_ingest_key_is_rotated(apps, fleet, server):
    track_id = await ulogger_session(apps, fleet)
    async with httpx.AsyncClient(base_url=server.api) as admin:
        rotated = await admin.post(
            f"/devices/{fleet.a.device_token}/ingest-key", headers=bearer(fleet.a.admin_token)
        )
        assert rotated.status_code == 200
    response = await apps.post(ULOGGER, data=ulogger_position(track_id, BASE))
    assert response.status_code == 401  # the app signs in again, with the new key
