"""A trip's stats stay right, and cheap, whatever order its fixes arrive in; its waypoints page.

A phone that was offline uploads its backlog late, often while it (or a second
app on it) keeps posting live fixes. The writer absorbs each late fix between
its neighbours in time instead of recounting the trip, so one device with a
huge trip never stalls the others; `/tracks` answers a page at a time, so one
reader of that trip never holds the whole of it.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import bearer
from tracker.geo import haversine_m
from tracker.models import Position
from tracker.store import Database, devices, instances, schema
from tracker.store import trips as trips_store
from tracker.trips import recount
from tracker.writer import commit_batch

GAP = 300.0
RADIUS = 75.0
NOW = time.time()


def memory_store() -> tuple[sqlite3.Connection, str]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.row_factory = sqlite3.Row
    schema.migrate(conn)
    instance = instances.create(conn, "Trips")
    device, _ = devices.create(conn, instance.id, "truck-1")
    return conn, device.token


def commit(conn: sqlite3.Connection, *requests: tuple[str, list[Position]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    commit_batch(conn, list(requests), GAP, RADIUS, NOW)
    conn.execute("COMMIT")


def assert_matches_recount(trip, fixes: list[Position], exact_distance: bool) -> None:
    reference = recount(trip.device_token, trip.track_token, fixes)
    assert trip.waypoint_count == reference.waypoint_count == len(fixes)
    assert (trip.started_at, trip.start_lat, trip.start_lon) == (
        reference.started_at,
        reference.start_lat,
        reference.start_lon,
    )
    assert (trip.ended_at, trip.end_lat, trip.end_lon) == (
        reference.ended_at,
        reference.end_lat,
        reference.end_lon,
    )
    assert trip.max_speed == reference.max_speed
    if exact_distance:
        assert trip.distance_m == pytest.approx(reference.distance_m, rel=1e-9, abs=1e-6)


fix_strategy = st.builds(
    lambda lat, lon, speed: (lat, lon, speed),
    st.floats(51.0, 51.05),
    st.floats(-0.2, -0.15),
    st.one_of(st.none(), st.floats(0, 40)),
)


@settings(max_examples=150, deadline=None)
@given(
    times=st.lists(st.integers(0, 290), min_size=1, max_size=40, unique=True),
    fixes=st.lists(fix_strategy, min_size=40, max_size=40),
    seed=st.integers(0, 2**32),
)
def test_fixes_in_any_order_and_batching_give_the_stats_of_a_recount(times, fixes, seed):
    """Without reported accuracies, every aggregate matches a recount (distance to rounding)."""
    conn, token = memory_store()
    positions = [
        Position(latitude=lat, longitude=lon, timestamp=NOW - 1000 + t, speed=speed)
        for t, (lat, lon, speed) in zip(times, fixes, strict=False)
    ]
    shuffle = random.Random(seed)
    arrival = shuffle.sample(positions, len(positions))
    while arrival:  # commits of one or more requests, each request one or more fixes
        batch = []
        for _ in range(shuffle.randint(1, 3)):
            size = shuffle.randint(1, 4)
            batch.append((token, arrival[:size]))
            del arrival[:size]
        commit(conn, *[request for request in batch if request[1]])
    trip = trips_store.latest(conn, token)
    assert_matches_recount(trip, positions, exact_distance=True)


def test_a_parked_phones_late_jitter_adds_no_distance():
    conn, token = memory_store()
    route = [
        Position(latitude=51.5 + i * 0.001, longitude=-0.12, timestamp=NOW - 600 + 60 * i)
        for i in range(5)
    ]
    commit(conn, (token, route))
    before = trips_store.latest(conn, token).distance_m
    jitter = [
        Position(latitude=51.5 + 0.00003, longitude=-0.12, timestamp=NOW - 600 + t, accuracy=20)
        for t in (10, 20, 30)
    ]
    commit(conn, (token, jitter))
    trip = trips_store.latest(conn, token)
    assert trip.distance_m == pytest.approx(before)
    assert_matches_recount(trip, route + jitter, exact_distance=True)


def test_a_late_fix_before_the_start_becomes_the_start_and_adds_its_leg():
    conn, token = memory_store()
    later = [
        Position(latitude=51.5, longitude=-0.12 + i * 0.001, timestamp=NOW - 100 + i)
        for i in range(3)
    ]
    commit(conn, (token, later))
    early = Position(latitude=51.49, longitude=-0.12, timestamp=NOW - 200, speed=30.0)
    commit(conn, (token, [early]))
    trip = trips_store.latest(conn, token)
    assert (trip.started_at, trip.start_lat) == (early.timestamp, 51.49)
    assert trip.max_speed == 30.0
    assert_matches_recount(trip, later + [early], exact_distance=True)


def vm_steps_of(db: Database, request: tuple[str, list[Position]]) -> int:
    """SQLite virtual-machine steps (in tens) the writer's transaction takes for one request."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.write_sync(lambda conn: conn.set_progress_handler(count, 10))
    try:
        db.write_sync(commit_batch, [request], GAP, RADIUS, NOW)
    finally:
        db.write_sync(lambda conn: conn.set_progress_handler(None, 0))
    return steps


@pytest.mark.parametrize("late", [[100], [10, 190]], ids=["one fix", "fixes far apart"])
def test_a_backlog_request_costs_the_same_in_a_long_trip_as_in_a_short_one(tmp_path, late):
    """Issue #15: a late fix made the writer reread its whole trip, stalling every device."""
    db = Database(tmp_path / "trips.db")
    instance = db.write_sync(instances.create, "Trips")
    short, _ = db.write_sync(devices.create, instance.id, "short")
    long, _ = db.write_sync(devices.create, instance.id, "long")
    for device, count in ((short, 200), (long, 20_000)):
        fixes = [
            Position(latitude=51 + i * 1e-4, longitude=-0.12, timestamp=NOW - 30_000 + i)
            for i in range(count)
        ]
        db.write_sync(commit_batch, [(device.token, fixes)], GAP, RADIUS, NOW)

    def backlog(scale: int) -> list[Position]:
        return [
            Position(
                latitude=51 + i * scale * 1e-4,
                longitude=-0.11,
                timestamp=NOW - 30_000 + i * scale + 0.5,
            )
            for i in late
        ]

    short_steps = vm_steps_of(db, (short.token, backlog(1)))
    long_steps = vm_steps_of(db, (long.token, backlog(100)))
    db.close()
    assert long_steps < 2 * short_steps, (short_steps, long_steps)


# -- /tracks pages ----------------------------------------------------------------------


def seed_trip(tracker, token: str, count: int) -> list[Position]:
    fixes = [
        Position(latitude=10 + i * 1e-5, longitude=20, timestamp=NOW - 10_000 + i * 0.25)
        for i in range(count)
    ]
    tracker.db.write_sync(commit_batch, [(token, fixes)], GAP, RADIUS, NOW)
    return fixes


async def tracks(http, tenant, **params):
    return await http.get(
        f"/devices/{tenant.device_token}/tracks", params=params, headers=bearer(tenant.read_token)
    )


async def test_a_long_trip_is_read_page_by_page_each_fix_once_in_order(http, fleet, tracker):
    fixes = seed_trip(tracker, fleet.a.device_token, 25_000)
    first = (await tracks(http, fleet.a)).json()
    assert first["count"] == len(first["waypoints"]) == 1_000
    assert first["has_more"] is True
    latitudes = [w["latitude"] for w in first["waypoints"]]
    page = first
    while page["has_more"]:
        response = await tracks(http, fleet.a, since=page["next_since"], limit=10_000)
        assert response.status_code == 200
        page = response.json()
        assert page["track_token"] == first["track_token"]
        latitudes += [w["latitude"] for w in page["waypoints"]]
    assert page["next_since"] is None
    assert latitudes == [f.latitude for f in fixes]


async def test_a_short_trip_is_one_page_without_a_cursor(http, fleet, tracker):
    seed_trip(tracker, fleet.a.device_token, 3)
    page = (await tracks(http, fleet.a)).json()
    assert (page["count"], page["has_more"], page["next_since"]) == (3, False, None)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "nan"}, "since"),
        ({"since": "inf"}, "since"),
    ],
)
async def test_a_bad_page_request_is_400_naming_the_parameter(http, fleet, tracker, params, named):
    seed_trip(tracker, fleet.a.device_token, 3)
    response = await tracks(http, fleet.a, **params)
    assert response.status_code == 400
    assert named in response.json()["error"]["message"]


async def test_late_uploads_show_in_the_stats_as_if_sent_in_order(http, fleet):
    route = [(51.5007, -0.1246), (51.5033, -0.1196), (51.5081, -0.1281), (51.5138, -0.0984)]
    body = [
        {"latitude": lat, "longitude": lon, "timestamp": int(NOW) - 400 + 100 * i, "speed": 5.0 + i}
        for i, (lat, lon) in enumerate(route)
    ]
    headers = {"X-Ingest-Key": fleet.a.ingest_key}
    path = f"/devices/{fleet.a.device_token}/positions"
    assert (
        await http.post(path, json={"positions": body[::3]}, headers=headers)
    ).status_code == 201
    for late in (body[2], body[1]):  # the backlog, newest first
        assert (await http.post(path, json=late, headers=headers)).status_code == 201
    stats = (
        await http.get(f"/devices/{fleet.a.device_token}/stats", headers=bearer(fleet.a.read_token))
    ).json()
    expected = sum(haversine_m(*route[i], *route[i + 1]) for i in range(len(route) - 1))
    assert stats["distance_meters"] == pytest.approx(expected, abs=0.01)
    assert (stats["waypoint_count"], stats["max_speed"]) == (4, 8.0)
    assert [w["latitude"] for w in (await tracks(http, fleet.a)).json()["waypoints"]] == [
        lat for lat, _ in route
    ]


async def test_two_client_trips_interleaved_in_time_each_read_and_counted_on_their_own(http, fleet):
    # A phone app that sends its own trip ids may run two at once (a delivery and a
    # personal trip): their fixes interleave in time, and each trip is its own.
    headers = {"X-Ingest-Key": fleet.a.ingest_key}
    path = f"/devices/{fleet.a.device_token}/positions"
    start = int(NOW) - 600
    fixes = {
        trip: [
            {
                "latitude": 51.50 + 0.001 * i + (0.05 if trip == "evening" else 0.0),
                "longitude": -0.12,
                "timestamp": start + 20 * i + (10 if trip == "evening" else 0),
                "track_token": trip,
            }
            for i in range(6)
        ]
        for trip in ("morning", "evening")
    }
    in_time_order = sorted(fixes["morning"] + fixes["evening"], key=lambda f: f["timestamp"])
    late = in_time_order.pop(4)  # one fix of the morning trip arrives last, a backlog
    assert late["track_token"] == "morning"
    response = await http.post(path, json={"positions": in_time_order}, headers=headers)
    assert response.status_code == 201
    assert (await http.post(path, json=late, headers=headers)).status_code == 201
    for trip, sent in fixes.items():
        detail = await http.get(
            f"/devices/{fleet.a.device_token}/trips/{trip}", headers=bearer(fleet.a.read_token)
        )
        assert detail.status_code == 200
        body = detail.json()
        assert [w["latitude"] for w in body["waypoints"]] == [f["latitude"] for f in sent]
        expected = sum(
            haversine_m(a["latitude"], a["longitude"], b["latitude"], b["longitude"])
            for a, b in itertools.pairwise(sent)
        )
        assert body["distance_meters"] == pytest.approx(expected, abs=0.01)
        assert body["waypoint_count"] == 6
