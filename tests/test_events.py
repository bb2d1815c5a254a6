"""Every change another system cares about becomes one event in the outbox, with its cause."""

import json
import time

import trio
from trio_websocket import open_websocket_url

from tests.conftest import bearer
from tracker.expiry import sweep_once, sweep_quiet_once
from tracker.models import Position
from tracker.store import events as events_store

DESTINATION = {"latitude": 51.52, "longitude": -0.08}


async def outbox(tracker, tenant) -> list[tuple[str, dict]]:
    stored = await tracker.db.read(events_store.recent, tenant.instance_id, 1000)
    return [(event.type, event.data) for event in reversed(stored)]


async def types(tracker, tenant) -> list[str]:
    return [event_type for event_type, _ in await outbox(tracker, tenant)]


def fix(lat: float, lon: float, ts: float) -> Position:
    return Position.build(latitude=lat, longitude=lon, timestamp=ts)


async def share(http, tenant, **fields) -> dict:
    body = {"device_token": tenant.device_token, **fields}
    response = await http.post("/sharing/sessions", json=body, headers=bearer(tenant.admin_token))
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_share_sessions_life_is_told_once_per_change(http, tracker, fleet):
    headers = bearer(fleet.a.admin_token)
    session = await share(http, fleet.a, order_id="ORD-1")
    await http.patch(
        f"/sharing/sessions/{session['id']}", json={"notes": "Gate B"}, headers=headers
    )
    await http.delete(f"/sharing/sessions/{session['id']}", headers=headers)
    refused = await http.post(f"/sharing/sessions/{session['id']}/complete", headers=headers)
    assert refused.status_code == 409  # already ended: no second end event
    completed = await share(http, fleet.a)
    await http.post(f"/sharing/sessions/{completed['id']}/complete", headers=headers)

    told = await outbox(tracker, fleet.a)
    assert [t for t, _ in told] == [
        "share.created",
        "share.updated",
        "share.cancelled",
        "share.created",
        "share.completed",
    ]
    assert told[0][1]["order_id"] == "ORD-1"
    assert told[1][1]["notes"] == "Gate B"
    assert told[2][1]["status"] == "cancelled"
    assert "share_token" not in told[0][1]  # the link's credential never leaves
    assert await types(tracker, fleet.b) == []  # another instance hears nothing


async def test_arrival_and_expiry_end_sessions_with_their_own_events(http, tracker, fleet):
    await share(
        http,
        fleet.a,
        destination=DESTINATION,
        share_config={"auto_complete_on_arrival": True},
    )
    overdue = await share(http, fleet.b)
    await tracker.db.write(
        lambda conn: conn.execute(
            "UPDATE share_sessions SET expires_at = ? WHERE id = ?",
            (time.time() - 1, overdue["id"]),
        )
    )
    await tracker.writer.submit(fleet.a.device_token, [fix(51.52, -0.08, time.time())])
    assert await sweep_once(tracker.db, tracker.hub) == [overdue["id"]]
    assert await sweep_once(tracker.db, tracker.hub) == []

    a_types = await types(tracker, fleet.a)
    assert a_types.count("share.arrived") == 1
    assert "share.completed" not in a_types
    assert await types(tracker, fleet.b) == ["share.created", "share.expired"]


async def test_a_device_comes_online_after_silence_and_starts_trips(client, tracker, fleet):
    token = fleet.a.device_token
    start = time.time() - 3600
    await tracker.writer.submit(token, [fix(1.0, 1.0, start), fix(1.0, 1.001, start + 10)])
    await tracker.writer.submit(token, [fix(1.0, 1.002, start + 20)])
    assert await types(tracker, fleet.a) == ["device.online", "trip.started"]

    # Twenty minutes of silence (past offline_after and the split gap), then a fix.
    await tracker.writer.submit(token, [fix(1.0, 1.003, start + 1220)])
    told = await outbox(tracker, fleet.a)
    assert [t for t, _ in told] == ["device.online", "trip.started"] * 2
    assert told[2][1]["silent_since"] == start + 20
    assert told[1][1]["track_token"] != told[3][1]["track_token"]

    # A backlog older than the live position starts no live trip and says nothing.
    await tracker.writer.submit(token, [fix(2.0, 2.0, start - 7200)])
    assert len(await types(tracker, fleet.a)) == 4


async def test_the_sweeper_tells_once_when_a_device_went_quiet(client, tracker, fleet, settings):
    gap = settings.trips.split_gap_seconds
    offline_after = settings.console.offline_after_seconds
    now = time.time()
    # The first round only marks where it starts from.
    assert await sweep_quiet_once(tracker.db, tracker.hub, gap, offline_after, now) == []
    await tracker.writer.submit(fleet.a.device_token, [fix(1.0, 1.0, now + 1)])
    later = now + 1 + max(gap, offline_after) + 1
    found = await sweep_quiet_once(tracker.db, tracker.hub, gap, offline_after, later)
    assert sorted(event.type for event in found) == ["device.offline", "trip.ended"]
    assert await sweep_quiet_once(tracker.db, tracker.hub, gap, offline_after, later + 60) == []
    assert (await types(tracker, fleet.a))[-2:] in (
        ["device.offline", "trip.ended"],
        ["trip.ended", "device.offline"],
    )


async def test_a_dispatcher_who_asks_for_events_sees_them_live(server, http, tracker, fleet):
    async with (
        open_websocket_url(f"{server.ws}/ws/realtime") as with_events,
        open_websocket_url(f"{server.ws}/ws/realtime") as without,
    ):
        for ws, wanted in ((with_events, True), (without, False)):
            await ws.send_message(
                json.dumps(
                    {
                        "type": "authenticate",
                        "jwt": fleet.a.read_token,
                        "instance_id": fleet.a.instance_id,
                        "events": wanted,
                    }
                )
            )
            welcome = await receive(ws)
            assert welcome["events"] is wanted
        session = await share(http, fleet.a, order_id="ORD-9")
        await tracker.writer.submit(fleet.a.device_token, [fix(1.0, 1.0, time.time())])
        seen = [await receive(with_events) for _ in range(4)]
        events = [m["event"] for m in seen if m["type"] == "event"]
        assert [e["type"] for e in events] == [
            "share.created",
            "device.online",
            "trip.started",
        ]
        assert events[0]["data"]["id"] == session["id"]
        assert set(events[0]) == {"type", "id", "timestamp", "instance_id", "data"}
        assert [m["type"] for m in seen].count("position") == 1
        plain = await receive(without)
        assert plain["type"] == "position"  # and no event before it
        with trio.move_on_after(0.3):
            assert (await receive(without))["type"] != "event"


async def receive(ws, timeout: float = 5) -> dict:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def test_the_outbox_forgets_events_after_thirty_days(client, tracker, fleet, settings):
    gap = settings.trips.split_gap_seconds
    offline_after = settings.console.offline_after_seconds
    now = time.time()
    await sweep_quiet_once(tracker.db, tracker.hub, gap, offline_after, now)  # marks the start
    await tracker.writer.submit(fleet.a.device_token, [fix(1.0, 1.0, now)])
    assert await types(tracker, fleet.a) == ["device.online", "trip.started"]
    await sweep_quiet_once(tracker.db, tracker.hub, gap, offline_after, now + 29 * 86400)
    assert len(await types(tracker, fleet.a)) == 4  # and device.offline, trip.ended
    await sweep_quiet_once(tracker.db, tracker.hub, gap, offline_after, now + 31 * 86400)
    assert sorted(await types(tracker, fleet.a)) == ["device.offline", "trip.ended"]
