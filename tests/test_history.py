"""Where was van 3 on Tuesday? A device's trips over time, and one trip's waypoints.

Each test runs against the real server (Hypercorn on a loopback port): a
dispatcher asks for the trips of a window (unix seconds or ISO 8601, default
the last 7 days), newest first and paged, each with the fields of `/stats`,
then opens one trip. Another instance's device is a 404, like everywhere.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tests.conftest import bearer
from tracker.models import Position

DAY = 24 * 3600
NOW = time.time()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def drive(tracker, device_token: str, start: float, fixes: int, step: float = 10.0) -> None:
    """A short drive north: `fixes` fixes `step` seconds apart from `start`."""
    await tracker.writer.submit(
        device_token,
        [
            Position.build(
                latitude=51.5 + i * 0.001,
                longitude=-0.12,
                timestamp=start + i * step,
                speed=5.0 + i,
                heading=0,
                now=NOW,
            )
            for i in range(fixes)
        ],
    )


async def three_days_of_trips(tracker, device_token: str) -> list[float]:
    """Trips that started 3, 2 and 1 days ago (oldest first); returns their starts."""
    starts = [NOW - 3 * DAY, NOW - 2 * DAY, NOW - DAY]
    for fixes, start in zip((4, 6, 8), starts, strict=True):
        await drive(tracker, device_token, start, fixes)
    return starts


async def test_dispatcher_finds_where_the_van_was_on_a_given_day(http, tracker, fleet):
    starts = await three_days_of_trips(tracker, fleet.a.device_token)
    headers = bearer(fleet.a.read_token)

    tuesday = await http.get(
        f"/devices/{fleet.a.device_token}/trips",
        params={"from": iso(starts[1] - 3600), "to": str(int(starts[1] + 3600))},
        headers=headers,
    )
    assert tuesday.status_code == 200
    body = tuesday.json()
    assert body["total"] == 1
    (trip,) = body["items"]
    assert trip["waypoint_count"] == 6
    assert trip["started_at"] == int(starts[1])
    assert trip["start"] == {"latitude": 51.5, "longitude": -0.12}
    assert trip["end"] == {"latitude": 51.505, "longitude": -0.12}


async def test_the_default_window_is_the_last_week_newest_first_and_paged(http, tracker, fleet):
    await drive(tracker, fleet.a.device_token, NOW - 9 * DAY, 3)  # outside the default week
    starts = await three_days_of_trips(tracker, fleet.a.device_token)
    headers = bearer(fleet.a.read_token)
    path = f"/devices/{fleet.a.device_token}/trips"

    everything = (await http.get(path, headers=headers)).json()
    assert everything["total"] == 3
    assert [t["started_at"] for t in everything["items"]] == [int(s) for s in reversed(starts)]

    first = (await http.get(path, params={"limit": 2}, headers=headers)).json()
    second = (await http.get(path, params={"limit": 2, "offset": 2}, headers=headers)).json()
    assert (first["total"], first["limit"], first["offset"]) == (3, 2, 0)
    assert first["items"] + second["items"] == everything["items"]

    older = await http.get(path, params={"from": str(int(NOW - 10 * DAY))}, headers=headers)
    assert older.json()["total"] == 4


async def test_trip_items_have_exactly_the_fields_of_stats_in_the_callers_time_style(
    http, tracker, fleet
):
    await three_days_of_trips(tracker, fleet.a.device_token)
    headers = bearer(fleet.a.read_token)
    style = {"timezone": "Europe/London", "date_format": "iso"}
    stats = await http.get(f"/devices/{fleet.a.device_token}/stats", params=style, headers=headers)
    trips = await http.get(f"/devices/{fleet.a.device_token}/trips", params=style, headers=headers)
    assert trips.json()["items"][0] == stats.json()
    assert isinstance(stats.json()["started_at"], str)


async def test_one_trip_gives_its_stats_and_its_waypoints_a_page_at_a_time(http, tracker, fleet):
    starts = await three_days_of_trips(tracker, fleet.a.device_token)
    headers = bearer(fleet.a.read_token)
    listed = (await http.get(f"/devices/{fleet.a.device_token}/trips", headers=headers)).json()
    oldest = listed["items"][-1]
    path = f"/devices/{fleet.a.device_token}/trips/{oldest['track_token']}"

    first = (await http.get(path, params={"limit": 3}, headers=headers)).json()
    assert {k: first[k] for k in oldest} == oldest
    assert first["count"] == 3 and first["has_more"] is True
    rest = (
        await http.get(path, params={"limit": 3, "since": first["next_since"]}, headers=headers)
    ).json()
    assert rest["count"] == 1 and rest["has_more"] is False
    times = [w["timestamp"] for w in first["waypoints"] + rest["waypoints"]]
    assert times == [int(starts[0] + 10 * i) for i in range(4)]


async def test_bad_windows_are_refused_with_a_message_naming_the_value(http, tracker, fleet):
    headers = bearer(fleet.a.read_token)
    path = f"/devices/{fleet.a.device_token}/trips"
    for params, word in (
        ({"from": "tuesday"}, "from"),
        ({"to": "2026-13-45"}, "to"),
        ({"from": str(int(NOW)), "to": str(int(NOW - DAY))}, "after"),
        ({"from": "9999999999999999"}, "9999"),
        ({"limit": "0"}, "limit"),
        ({"date_format": "roman"}, "date_format"),
    ):
        response = await http.get(path, params=params, headers=headers)
        assert response.status_code == 400, params
        assert word in response.json()["error"]["message"], params


async def test_another_instances_device_and_trips_are_not_found(http, tracker, fleet):
    await three_days_of_trips(tracker, fleet.b.device_token)
    b_trips = await http.get(
        f"/devices/{fleet.b.device_token}/trips", headers=bearer(fleet.b.read_token)
    )
    b_trip = b_trips.json()["items"][0]["track_token"]
    a = bearer(fleet.a.admin_token)
    for path in (
        f"/devices/{fleet.b.device_token}/trips",
        f"/devices/{fleet.b.device_token}/trips/{b_trip}",
        f"/devices/{fleet.b.device_token}/trips/{b_trip}/export",
        f"/devices/{fleet.b.device_token}/positions/export",
        f"/devices/{fleet.a.device_token}/trips/{b_trip}",  # B's trip under A's device
        f"/devices/{fleet.a.device_token}/trips/{b_trip}/export",
    ):
        response = await http.get(path, headers=a)
        assert response.status_code == 404, path
        assert b_trip not in response.text
