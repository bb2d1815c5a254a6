"""Phone apps and native clients push positions; the REST API reads them back as they landed."""

import time

import httpx
import pytest

from tests.conftest import bearer, free_port, start_server
from tracker.app import create_app
from tracker.geo import haversine_m

NOW = int(time.time())


async def position_of(http, tenant, **params) -> dict:
    response = await http.get(
        f"/devices/{tenant.device_token}/position", params=params, headers=bearer(tenant.read_token)
    )
    assert response.status_code == 200, response.text
    return response.json()


async def post_native(http, tenant, body, **headers):
    return await http.post(
        f"/devices/{tenant.device_token}/positions",
        json=body,
        headers={"X-Ingest-Key": tenant.ingest_key, **headers},
    )


async def test_native_batch_is_committed_and_read_back(http, fleet):
    body = {
        "positions": [
            {"latitude": 51.5, "longitude": -0.12, "timestamp": NOW - 20, "speed": 10.0},
            {
                "latitude": 51.501,
                "longitude": -0.121,
                "timestamp": NOW - 10,
                "speed": 12.5,
                "heading": 245.0,
                "accuracy": 5.0,
                "altitude": 21.0,
                "battery": 87,
            },
        ]
    }
    response = await post_native(http, fleet.a, body)
    assert response.status_code == 201
    assert response.json() == {"accepted": 2, "duplicates": 0}
    position = await position_of(http, fleet.a)
    assert position["latitude"] == 51.501 and position["longitude"] == -0.121
    assert position["speed"] == 12.5 and position["heading"] == 245.0
    assert position["timestamp"] == NOW - 10


async def test_native_single_position_with_a_jwt_and_milliseconds(http, fleet):
    response = await http.post(
        f"/devices/{fleet.a.device_token}/positions",
        json={"latitude": 10, "longitude": 20, "timestamp": (NOW - 5) * 1000},
        headers=bearer(fleet.a.ingest_token),
    )
    assert response.status_code == 201
    assert (await position_of(http, fleet.a))["timestamp"] == NOW - 5


async def test_traccar_client_classic_query_string_speed_in_knots(http, server, fleet):
    query = (
        f"id={fleet.a.ingest_key}&timestamp={NOW}&lat=51.5074&lon=-0.1278&speed=24.3"
        "&bearing=245.0&altitude=21.0&accuracy=5.0&batt=87.0&charge=false"
    )
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(f"/ingest/osmand?{query}")
    assert response.status_code == 200 and response.content == b""
    position = await position_of(http, fleet.a)
    assert position["speed"] == pytest.approx(12.5, abs=0.01)
    assert position["heading"] == 245.0 and position["battery"] == 87.0


async def test_traccar_client_10_form_body_and_json_array(http, server, fleet):
    async with httpx.AsyncClient(base_url=server.url) as client:
        form = await client.post(
            "/ingest/osmand",
            data={
                "id": fleet.a.ingest_key,
                "lat": "48.85",
                "lon": "2.35",
                "timestamp": str(NOW - 30),
                "speed": "10.00",
                "bearing": "90",
                "batt": "50",
                "alarm": "sos",
            },
        )
        assert form.status_code == 200
        array = await client.post(
            "/ingest/osmand",
            json=[
                {
                    "id": fleet.a.ingest_key,
                    "lat": 48.86,
                    "lon": 2.36,
                    "timestamp": NOW - 20,
                    "speed": 20,
                }
            ],
        )
        assert array.status_code == 200
    position = await position_of(http, fleet.a)
    assert position["latitude"] == 48.86
    assert position["speed"] == pytest.approx(20 * 1852 / 3600)


async def test_traccar_client_9_json_minus_one_is_unknown(http, server, fleet):
    body = {
        "device_id": fleet.a.ingest_key,
        "location": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(NOW - 3)),
            "coords": {
                "latitude": 51.5,
                "longitude": -0.1,
                "accuracy": 5.0,
                "speed": -1,
                "heading": -1,
                "altitude": 21.0,
            },
            "is_moving": True,
            "odometer": 1234.5,
            "event": "motionchange",
            "battery": {"level": 0.87, "is_charging": False},
            "activity": {"type": "in_vehicle"},
        },
    }
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/ingest/osmand", json=body)
    assert response.status_code == 200
    position = await position_of(http, fleet.a)
    assert position["speed"] is None and position["heading"] is None
    assert position["battery"] == pytest.approx(87)
    assert position["timestamp"] == NOW - 3


async def test_owntracks_speed_in_kmh_and_minus_one(http, server, fleet):
    message = {
        "_type": "location",
        "lat": 51.5074,
        "lon": -0.1278,
        "tst": NOW - 1,
        "acc": 5,
        "alt": 21,
        "vel": 45,
        "cog": -1,
        "batt": 87,
        "tid": "JS",
        "conn": "m",
        "t": "u",
    }
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(
            "/ingest/owntracks", json=message, auth=(fleet.a.device_token, fleet.a.ingest_key)
        )
        assert response.status_code == 200 and response.json() == []
        other = await client.post(
            "/ingest/owntracks",
            json={"_type": "transition", "event": "enter"},
            auth=(fleet.a.device_token, fleet.a.ingest_key),
        )
        assert other.status_code == 200 and other.json() == []
        encrypted = await client.post(
            "/ingest/owntracks",
            json={"_type": "encrypted", "data": "abc"},
            auth=(fleet.a.device_token, fleet.a.ingest_key),
        )
        assert encrypted.status_code == 422
        assert "encryption" in encrypted.json()["error"]["message"]
    position = await position_of(http, fleet.a)
    assert position["speed"] == pytest.approx(12.5)
    assert position["heading"] is None


async def count_positions(tracker, token) -> int:
    return await tracker.db.read(
        lambda conn: conn.execute(
            "SELECT count(*) FROM positions WHERE device_token = ?", (token,)
        ).fetchone()[0]
    )


async def test_wrong_or_missing_keys_are_refused_and_nothing_is_stored(
    http, server, fleet, tracker
):
    fix = {"latitude": 1, "longitude": 2}
    refusals = [
        await post_native(http, fleet.a, fix, **{"X-Ingest-Key": "wrong"}),
        await post_native(http, fleet.a, fix, **{"X-Ingest-Key": fleet.b.ingest_key}),
        await http.post(f"/devices/{fleet.a.device_token}/positions", json=fix),
        await http.post(
            f"/devices/{fleet.a.device_token}/positions",
            json=fix,
            headers=bearer(fleet.b.ingest_token),
        ),
    ]
    assert [r.status_code for r in refusals] == [401, 401, 401, 404]
    async with httpx.AsyncClient(base_url=server.url) as client:
        osmand = await client.get("/ingest/osmand", params={"id": "nope", "lat": 1, "lon": 2})
        assert osmand.status_code == 404
        owntracks = await client.post(
            "/ingest/owntracks",
            json={"_type": "location", "lat": 1, "lon": 2, "tst": NOW},
            auth=(fleet.a.device_token, "wrong"),
        )
        assert owntracks.status_code == 401
        no_auth = await client.post("/ingest/owntracks", json={"_type": "location"})
        assert no_auth.status_code == 401
    assert await count_positions(tracker, fleet.a.device_token) == 0


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"latitude": 91, "longitude": 0}', "latitude"),
        (b'{"latitude": 0, "longitude": -180.5}', "longitude"),
        (b'{"latitude": 0, "longitude": 0, "speed": -3}', "speed"),
        (b'{"latitude": 0, "longitude": 0, "heading": 360.5}', "heading"),
        (b'{"latitude": 0, "longitude": 0, "timestamp": %d}' % (NOW + 2 * 86400), "timestamp"),
        (b'{"latitude": 0, "longitude": 0, "track_token": "a\\u202eb"}', "track_token"),
        (b'{"longitude": 0}', "latitude"),
    ],
)
async def test_hostile_values_are_refused_naming_the_field(http, fleet, tracker, raw, field):
    response = await http.post(
        f"/devices/{fleet.a.device_token}/positions",
        content=raw,
        headers={"X-Ingest-Key": fleet.a.ingest_key, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"]
    assert await count_positions(tracker, fleet.a.device_token) == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"latitude": NaN, "longitude": 0}',
        b'{"latitude": Infinity, "longitude": 0}',
        b'{"latitude": 1e999, "longitude": 0}',
        b'{"latitude": 0, "longitude": 0, "track_token": "\\ud800"}',
    ],
)
async def test_non_json_numbers_and_lone_surrogates_are_400(http, fleet, tracker, raw):
    response = await http.post(
        f"/devices/{fleet.a.device_token}/positions",
        content=raw,
        headers={"X-Ingest-Key": fleet.a.ingest_key, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert await count_positions(tracker, fleet.a.device_token) == 0


@pytest.mark.parametrize("value", ["NaN", "inf", "1e999", "91"])
async def test_osmand_hostile_latitude_is_400_and_names_lat(server, fleet, tracker, value):
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(
            "/ingest/osmand", params={"id": fleet.a.ingest_key, "lat": value, "lon": "0"}
        )
    assert response.status_code == 400
    assert "lat" in response.json()["error"]["message"]
    assert await count_positions(tracker, fleet.a.device_token) == 0


async def test_batch_with_one_bad_position_stores_none_and_names_its_index(http, fleet, tracker):
    body = {"positions": [{"latitude": 1, "longitude": 1, "timestamp": NOW - i} for i in range(5)]}
    body["positions"][3]["latitude"] = 95
    response = await post_native(http, fleet.a, body)
    assert response.status_code == 422
    assert "positions[3].latitude" in response.json()["error"]["message"]
    assert await count_positions(tracker, fleet.a.device_token) == 0


async def test_duplicates_are_stored_once_and_backlog_does_not_replace_live(http, fleet, tracker):
    live = {"latitude": 2, "longitude": 2, "timestamp": NOW}
    assert (await post_native(http, fleet.a, live)).json() == {"accepted": 1, "duplicates": 0}
    again = await post_native(http, fleet.a, {"positions": [live, live]})
    assert again.json() == {"accepted": 0, "duplicates": 2}
    backlog = {"positions": [{"latitude": 1, "longitude": 1, "timestamp": NOW - 60}]}
    assert (await post_native(http, fleet.a, backlog)).json()["accepted"] == 1
    position = await position_of(http, fleet.a)
    assert (position["latitude"], position["timestamp"]) == (2, NOW)
    tracks = (
        await http.get(
            f"/devices/{fleet.a.device_token}/tracks", headers=bearer(fleet.a.read_token)
        )
    ).json()
    assert [w["timestamp"] for w in tracks["waypoints"]] == [NOW - 60, NOW]
    assert await count_positions(tracker, fleet.a.device_token) == 2


ROUTE = [
    (51.5007, -0.1246),
    (51.5033, -0.1196),
    (51.5081, -0.1281),
    (51.5138, -0.0984),
    (51.5055, -0.0754),
    (51.5014, -0.1419),
]


async def test_stats_of_a_known_route_match_the_great_circle_sum(http, fleet):
    body = {
        "positions": [
            {
                "latitude": lat,
                "longitude": lon,
                "timestamp": NOW - 600 + 60 * i,
                "speed": 5.0 + i,
                "accuracy": 8.0,
            }
            for i, (lat, lon) in enumerate(ROUTE)
        ]
    }
    # Shuffled order: the trip is rebuilt in time order whatever the upload order.
    body["positions"].reverse()
    assert (await post_native(http, fleet.a, body)).status_code == 201
    stats = (
        await http.get(f"/devices/{fleet.a.device_token}/stats", headers=bearer(fleet.a.read_token))
    ).json()
    expected = sum(haversine_m(*ROUTE[i], *ROUTE[i + 1]) for i in range(len(ROUTE) - 1))
    assert stats["distance_meters"] == pytest.approx(expected, rel=0.01)
    assert stats["waypoint_count"] == 6
    assert stats["max_speed"] == 10.0
    assert stats["duration_seconds"] == 300
    assert stats["average_speed"] == pytest.approx(expected / 300, rel=0.01)
    assert stats["start"] == {"latitude": ROUTE[0][0], "longitude": ROUTE[0][1]}
    assert stats["end"] == {"latitude": ROUTE[-1][0], "longitude": ROUTE[-1][1]}
    assert stats["active"] is False  # last fix 300 s ago: the gap has passed


async def test_trips_split_on_gaps_and_client_trip_ids_are_kept(http, fleet):
    now = int(time.time())  # the last trip is active: NOW (at import) may be minutes old
    first = [
        {"latitude": 1, "longitude": 1 + i / 1000, "timestamp": now - 3000 + i * 10}
        for i in range(3)
    ]
    second = [
        {
            "latitude": 1,
            "longitude": 2 + i / 1000,
            "timestamp": now - 30 + i * 10,
            "track_token": "route-42",
        }
        for i in range(3)
    ]
    await post_native(http, fleet.a, {"positions": first + second})
    tracks = (
        await http.get(
            f"/devices/{fleet.a.device_token}/tracks", headers=bearer(fleet.a.read_token)
        )
    ).json()
    assert tracks["track_token"] == "route-42"
    assert tracks["active"] is True
    assert tracks["count"] == 3
    assert [w["longitude"] for w in tracks["waypoints"]] == [2, 2.001, 2.002]


async def test_time_formats_and_zones(http, fleet):
    summer = 1776000000  # 2026-04-12 13:20:00 UTC
    await post_native(http, fleet.a, {"latitude": 1, "longitude": 1, "timestamp": summer})
    iso = await position_of(http, fleet.a, timezone="Europe/London", date_format="iso")
    assert iso["timestamp"] == "2026-04-12T14:20:00+01:00"
    human = await position_of(http, fleet.a, timezone="Europe/London", date_format="human")
    assert human["timestamp"] == "2026-04-12 14:20:00 BST"
    for params, named in [
        ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
        ({"date_format": "roman"}, "roman"),
    ]:
        response = await http.get(
            f"/devices/{fleet.a.device_token}/position",
            params=params,
            headers=bearer(fleet.a.read_token),
        )
        assert response.status_code == 400 and named in response.json()["error"]["message"]


async def test_instance_id_adds_the_display_name_and_profile(http, fleet):
    await post_native(http, fleet.a, {"latitude": 1, "longitude": 1})
    position = await position_of(http, fleet.a, instance_id=fleet.a.instance_id)
    assert position["display_identifier"] == "Alpha Driver"
    assert position["display_field"] == "full_name"
    assert position["driver_profile"] == {"full_name": "Alpha Driver"}
    assert "display_identifier" not in await position_of(http, fleet.a)


async def test_device_reads_follow_the_isolation_rule(http, fleet):
    await post_native(http, fleet.b, {"latitude": 1, "longitude": 1})
    for path in ("position", "tracks", "stats"):
        foreign = await http.get(
            f"/devices/{fleet.b.device_token}/{path}", headers=bearer(fleet.a.read_token)
        )
        assert foreign.status_code == 404
        named = await http.get(
            f"/devices/{fleet.a.device_token}/{path}",
            params={"instance_id": fleet.b.instance_id},
            headers=bearer(fleet.a.read_token),
        )
        assert named.status_code == 403


async def test_device_without_positions_is_404_with_a_reason(http, fleet):
    response = await http.get(
        f"/devices/{fleet.a.device_token}/position", headers=bearer(fleet.a.read_token)
    )
    assert response.status_code == 404
    assert "not reported" in response.json()["error"]["message"]


async def test_osmand_listener_serves_traccar_client_at_root(nursery, settings, fleet, app):
    port = free_port()
    settings = settings.replace(ingest={"osmand_port": port})
    app.extensions["tracker"].settings = settings
    await start_server(nursery, app, settings)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.post(
            "/", params={"id": fleet.a.ingest_key, "lat": 3, "lon": 4, "timestamp": NOW}
        )
    assert response.status_code == 200
    position = await app.extensions["tracker"].db.read(
        __import__("tracker.store.positions", fromlist=["latest"]).latest, fleet.a.device_token
    )
    assert (position.latitude, position.longitude) == (3, 4)


async def test_auto_register_instance_accepts_unknown_osmand_ids(nursery, settings, tmp_path):
    from tracker.store import instances

    app = create_app(settings)
    tracker = app.extensions["tracker"]
    trial = tracker.db.write_sync(instances.create, "Trial")
    tracker.settings = settings.replace(ingest={"auto_register_instance": trial.id})
    server = await start_server(nursery, app, tracker.settings)
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(
            "/ingest/osmand", params={"id": "phone-123", "lat": 5, "lon": 6}
        )
    assert response.status_code == 200
    assert await tracker.db.read(instances.device_count, trial.id) == 1
