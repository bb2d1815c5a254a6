"""Dispatchers draw fences; a van crossing one is told once in, once out, and a parked one never flaps."""

import time

import pytest

from tests.conftest import bearer
from tracker.domain import StoredGeofence
from tracker.geo import haversine_m
from tracker.geofences import Geofence, decide
from tracker.models import Position
from tracker.store import devices as devices_store
from tracker.store import events as events_store

# A square depot about 220 m a side, with a 50 m square hole (the workshop).
DEPOT = {
    "type": "Polygon",
    "coordinates": [
        [[-0.101, 51.500], [-0.098, 51.500], [-0.098, 51.502], [-0.101, 51.502], [-0.101, 51.500]],
        [
            [-0.0997, 51.5008],
            [-0.0993, 51.5008],
            [-0.0993, 51.5012],
            [-0.0997, 51.5012],
            [-0.0997, 51.5008],
        ],
    ],
}


def fence(shape: dict) -> Geofence:
    return Geofence.of(StoredGeofence("f", "i", "Depot", shape, None, 0))


def test_a_polygon_knows_inside_outside_and_its_hole():
    depot = fence({"polygon": DEPOT})
    assert depot.signed_distance_m(51.501, -0.1003) < -40  # in the yard, between edge and hole
    assert depot.signed_distance_m(51.501, -0.0995) > 0  # in the workshop (the hole)
    outside = depot.signed_distance_m(51.501, -0.102)  # about 70 m west of the west edge
    assert 60 < outside < 80


def test_a_circle_is_its_centre_and_radius():
    circle = fence({"circle": {"latitude": 51.5, "longitude": -0.1, "radius_m": 100}})
    assert circle.signed_distance_m(51.5, -0.1) == pytest.approx(-100)
    assert circle.signed_distance_m(51.5018, -0.1) == pytest.approx(100, abs=1)


def test_the_band_around_the_edge_keeps_the_last_state():
    assert decide(False, -50, 10) is True
    assert decide(True, 15, 10) is True  # outside, but within accuracy + margin
    assert decide(True, 25, 10) is False
    assert decide(False, -15, 10) is False  # inside, but not by more than the band


async def fences_api(http, tenant, body: dict, token: str | None = None):
    return await http.post(
        f"/geofences?instance_id={tenant.instance_id}",
        json=body,
        headers=bearer(token or tenant.admin_token),
    )


async def told(tracker, tenant) -> list[str]:
    stored = await tracker.db.read(events_store.recent, tenant.instance_id, 1000)
    return [e.type for e in reversed(stored) if e.type.startswith("geofence.")]


def at(lat: float, lon: float, ts: float, accuracy: float = 5.0) -> Position:
    return Position.build(latitude=lat, longitude=lon, timestamp=ts, accuracy=accuracy)


async def test_a_van_driving_through_the_depot_enters_and_leaves_once(http, tracker, fleet):
    created = await fences_api(http, fleet.a, {"name": "Depot", "polygon": DEPOT})
    assert created.status_code == 201, created.text
    start = time.time() - 600
    # West to east along latitude 51.5015 (north of the workshop), a fix every 10 s.
    for step in range(12):
        lon = -0.1025 + step * 0.0005
        await tracker.writer.submit(fleet.a.device_token, [at(51.5015, lon, start + step * 10)])
    assert await told(tracker, fleet.a) == ["geofence.entered", "geofence.exited"]
    stored = await tracker.db.read(events_store.recent, fleet.a.instance_id, 1000)
    entered = next(e for e in stored if e.type == "geofence.entered")
    assert entered.data["geofence_id"] == created.json()["id"]
    assert entered.data["geofence_name"] == "Depot"


async def test_a_van_parked_on_the_edge_does_not_flap(http, tracker, fleet):
    centre = (51.5, -0.1)
    await fences_api(
        http,
        fleet.a,
        {
            "name": "Yard",
            "circle": {"latitude": centre[0], "longitude": centre[1], "radius_m": 100},
        },
    )
    start = time.time() - 3600
    await tracker.writer.submit(fleet.a.device_token, [at(51.5, -0.1, start)])  # well inside
    # Parked on the edge: fixes jitter 15 m either side of it, with 10 m accuracy.
    metres_per_degree = haversine_m(51.5, -0.1, 51.501, -0.1) * 1000
    for step in range(40):
        offset = 100 + (15 if step % 2 else -15)
        lat = 51.5 + offset / metres_per_degree
        await tracker.writer.submit(
            fleet.a.device_token, [at(lat, -0.1, start + 10 + step * 10, accuracy=10)]
        )
    assert await told(tracker, fleet.a) == ["geofence.entered"]
    await tracker.writer.submit(fleet.a.device_token, [at(51.503, -0.1, start + 1000)])
    assert await told(tracker, fleet.a) == ["geofence.entered", "geofence.exited"]


async def test_a_backlog_and_other_devices_fire_nothing(http, tracker, fleet):
    other, _ = await tracker.db.write(devices_store.create, fleet.a.instance_id, "a-van-2", {})
    await fences_api(
        http,
        fleet.a,
        {
            "name": "Only van 2",
            "circle": {"latitude": 51.5, "longitude": -0.1, "radius_m": 100},
            "device_tokens": [other.token],
        },
    )
    now = time.time()
    await tracker.writer.submit(fleet.a.device_token, [at(51.5, -0.1, now)])  # not its fence
    await tracker.writer.submit(other.token, [at(52.0, -0.1, now)])  # far away
    await tracker.writer.submit(other.token, [at(51.5, -0.1, now - 60)])  # inside, but old
    assert await told(tracker, fleet.a) == []
    await tracker.writer.submit(other.token, [at(51.5, -0.1, now + 10)])
    assert await told(tracker, fleet.a) == ["geofence.entered"]


async def test_fences_are_checked_when_drawn_and_read_tokens_only_look(http, fleet):
    square = DEPOT["coordinates"][0]
    for body, problem in (
        ({"name": "x"}, "exactly one"),
        ({"name": "x", "polygon": {"type": "Polygon", "coordinates": [square[:-1]]}}, "repeat"),
        ({"name": "x", "polygon": {"type": "Point", "coordinates": [0, 0]}}, "Polygon"),
        ({"name": "x", "polygon": {"type": "Polygon", "coordinates": [[[500, 1]] * 4]}}, "±180"),
        (
            {
                "name": "x",
                "circle": {"latitude": 1, "longitude": 1, "radius_m": 5},
                "device_tokens": [fleet.b.device_token],
            },
            "no such device",
        ),
    ):
        response = await fences_api(http, fleet.a, body)
        assert response.status_code == 422, body
        assert problem in response.json()["error"]["message"]
    circle = {"name": "Depot", "circle": {"latitude": 1, "longitude": 1, "radius_m": 50}}
    assert (await fences_api(http, fleet.a, circle, fleet.a.read_token)).status_code == 403
    created = (await fences_api(http, fleet.a, circle)).json()
    listed = await http.get(
        f"/geofences?instance_id={fleet.a.instance_id}", headers=bearer(fleet.a.read_token)
    )
    assert listed.json()["items"] == [created]
    headers = bearer(fleet.a.admin_token)
    renamed = await http.patch(
        f"/geofences/{created['id']}", json={"name": "Yard"}, headers=headers
    )
    assert renamed.json()["name"] == "Yard"
    assert (await http.delete(f"/geofences/{created['id']}", headers=headers)).status_code == 204
    assert (await http.get(f"/geofences/{created['id']}", headers=headers)).status_code == 404
