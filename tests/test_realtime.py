"""Dispatchers watch every device of their instance live over /ws/realtime."""

import json
import time

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url
from wsproto.events import TextMessage

from tests.conftest import raw_websocket, start_server
from tracker.api import realtime
from tracker.hub import instance_topic
from tracker.models import Position
from tracker.store import devices

NOW = time.time()


def fix(lat: float, lon: float = 0.0, ts: float | None = None, **extra) -> Position:
    return Position.build(latitude=lat, longitude=lon, timestamp=ts or time.time(), **extra)


async def receive(ws, timeout: float = 5) -> dict:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def send_authenticate(ws, **fields) -> None:
    await ws.send_message(json.dumps({"type": "authenticate", **fields}))


async def authenticate(ws, token: str, instance_id: str, **settings) -> dict:
    await send_authenticate(ws, jwt=token, instance_id=instance_id, **settings)
    welcome = await receive(ws)
    assert welcome["type"] == "welcome", welcome
    return welcome


async def expect_close(ws, code: int) -> list[dict]:
    """Read until the server closes; returns what it sent first."""
    received = []
    with trio.fail_after(10):
        try:
            while True:
                received.append(json.loads(await ws.get_message()))
        except ConnectionClosed as closed:
            assert closed.reason.code == code, (closed.reason, received)
    return received


async def test_welcome_then_snapshot_then_live_positions(server, tracker, fleet):
    await tracker.writer.submit(fleet.a.device_token, [fix(51.5, -0.12, NOW - 5, speed=10.0)])
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        welcome = await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)
        assert welcome["instance_id"] == fleet.a.instance_id
        assert welcome["units"] == "metric" and welcome["date_format"] == "unix"
        snapshot = await receive(ws)
        assert snapshot == {
            "type": "position",
            "DeviceToken": fleet.a.device_token,
            "Lat": 51.5,
            "Lng": -0.12,
            "Speed": 10.0,
            "Heading": None,
            "Accuracy": None,
            "Altitude": None,
            "Battery": None,
            "TrackToken": snapshot["TrackToken"],
            "DisplayIdentifier": "Alpha Driver",
            "Timestamp": int(NOW - 5),
        }
        await tracker.writer.submit(fleet.a.device_token, [fix(51.6, -0.1, NOW - 1)])
        live = await receive(ws)
        assert (live["Lat"], live["Timestamp"]) == (51.6, int(NOW - 1))
        assert live["TrackToken"] == snapshot["TrackToken"]


async def test_a_fix_in_the_snapshot_is_not_sent_again_when_its_publish_comes_late(
    server, tracker, fleet, monkeypatch
):
    """The writer publishes after its commit returns: a client connecting in between finds
    the fix in its snapshot and then gets its publish. It sees the position once."""
    late: list = []
    monkeypatch.setattr(tracker.writer.hub, "publish_fix", late.append)
    await tracker.writer.submit(fleet.a.device_token, [fix(51.5, -0.12, NOW - 5)])
    monkeypatch.undo()
    [committed] = late
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)
        snapshot = await receive(ws)
        assert (snapshot["Lat"], snapshot["Timestamp"]) == (51.5, int(NOW - 5))
        tracker.hub.publish_fix(committed)  # the late publish of the same fix
        await tracker.writer.submit(fleet.a.device_token, [fix(51.6, -0.1, NOW - 1)])
        live = await receive(ws)
        assert (live["Lat"], live["Timestamp"]) == (51.6, int(NOW - 1))


async def test_a_fix_published_while_the_client_connects_is_sent_once_not_lost(
    server, tracker, fleet, monkeypatch
):
    """The writer's publish of a fix reaches a connecting client before its snapshot is
    queued: the pending live fix goes out instead of the snapshot row of the same fix
    (one shared snapshot for every client; this client's exception is its own)."""
    late: list = []
    monkeypatch.setattr(tracker.writer.hub, "publish_fix", late.append)
    await tracker.writer.submit(fleet.a.device_token, [fix(51.5, -0.12, NOW - 5)])
    monkeypatch.undo()
    [committed] = late
    read_snapshot = realtime.Snapshots.fixes

    async def publish_then_read(self, instance_id):
        tracker.hub.publish_fix(committed)  # subscribed already: it lands in the mailbox
        await trio.sleep(0.2)  # the hub's pump delivers it
        return await read_snapshot(self, instance_id)

    monkeypatch.setattr(realtime.Snapshots, "fixes", publish_then_read)
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)
        first = await receive(ws)
        assert (first["Lat"], first["Timestamp"]) == (51.5, int(NOW - 5))
        await tracker.writer.submit(fleet.a.device_token, [fix(51.6, -0.1, NOW - 1)])
        live = await receive(ws)
        assert (live["Lat"], live["Timestamp"]) == (51.6, int(NOW - 1))


async def test_instance_a_positions_never_reach_instance_b(server, tracker, fleet):
    async with (
        open_websocket_url(f"{server.ws}/ws/realtime") as watcher_a,
        open_websocket_url(f"{server.ws}/ws/realtime") as watcher_b,
    ):
        await authenticate(watcher_a, fleet.a.read_token, fleet.a.instance_id)
        await authenticate(watcher_b, fleet.b.read_token, fleet.b.instance_id)
        await tracker.writer.submit(fleet.a.device_token, [fix(1.0)])
        await tracker.writer.submit(fleet.b.device_token, [fix(2.0)])
        assert (await receive(watcher_a))["DeviceToken"] == fleet.a.device_token
        assert (await receive(watcher_b))["DeviceToken"] == fleet.b.device_token
        with trio.move_on_after(0.5):
            leaked = await watcher_a.get_message()
            pytest.fail(f"instance A received {leaked}")


async def test_imperial_units_and_human_time(server, tracker, fleet):
    summer = 1776000000  # 2026-04-12 13:20:00 UTC
    await tracker.writer.submit(
        fleet.a.device_token, [fix(1.0, 1.0, summer, speed=10.0, accuracy=10.0)]
    )
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(
            ws,
            fleet.a.read_token,
            fleet.a.instance_id,
            units="imperial",
            timezone="Europe/London",
            date_format="localized",
        )
        position = await receive(ws)
        assert position["Speed"] == pytest.approx(22.369, abs=0.001)
        assert position["Accuracy"] == pytest.approx(32.81, abs=0.01)
        assert position["Timestamp"] == "2026-04-12 14:20:00 BST"


async def test_access_token_is_accepted_in_place_of_jwt(server, fleet):
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await send_authenticate(
            ws, access_token=fleet.a.read_token, instance_id=fleet.a.instance_id
        )
        assert (await receive(ws))["type"] == "welcome"


async def test_subscribe_narrows_the_stream_to_named_devices(server, tracker, fleet):
    other, _ = tracker.db.write_sync(devices.create, fleet.a.instance_id, "alpha-truck-2")
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)
        await ws.send_message(json.dumps({"type": "subscribe", "device_tokens": [other.token]}))
        assert (await receive(ws))["device_tokens"] == [other.token]
        await tracker.writer.submit(fleet.a.device_token, [fix(1.0)])
        await tracker.writer.submit(other.token, [fix(2.0)])
        position = await receive(ws)
        assert position["DeviceToken"] == other.token


async def test_ping_is_answered_with_pong(server, fleet):
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)
        await ws.send_message(json.dumps({"type": "ping"}))
        assert await receive(ws) == {"type": "pong"}


async def test_a_renamed_driver_shows_on_the_next_message(server, tracker, fleet):
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)
        await tracker.writer.submit(fleet.a.device_token, [fix(1.0, ts=NOW - 2)])
        assert (await receive(ws))["DisplayIdentifier"] == "Alpha Driver"
        tracker.db.write_sync(devices.set_profile, fleet.a.device_token, {"full_name": "Zoe Q"})
        await tracker.writer.submit(fleet.a.device_token, [fix(1.1, ts=NOW - 1)])
        assert (await receive(ws))["DisplayIdentifier"] == "Zoe Q"


# -- handshake failures: each closes with its code and sends no position ----------


async def test_bad_jwt_closes_4001(server, tracker, fleet):
    await tracker.writer.submit(fleet.a.device_token, [fix(1.0)])
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await send_authenticate(ws, jwt="garbage", instance_id=fleet.a.instance_id)
        sent = await expect_close(ws, 4001)
        assert [m["type"] for m in sent] == ["error"]


async def test_foreign_instance_closes_4003(server, tracker, fleet):
    await tracker.writer.submit(fleet.b.device_token, [fix(1.0)])
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await send_authenticate(ws, jwt=fleet.a.admin_token, instance_id=fleet.b.instance_id)
        sent = await expect_close(ws, 4003)
        assert all(m["type"] != "position" for m in sent)


async def test_ingest_token_cannot_watch(server, fleet):
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await send_authenticate(ws, jwt=fleet.a.ingest_token, instance_id=fleet.a.instance_id)
        await expect_close(ws, 4003)


@pytest.mark.parametrize(
    ("field", "value", "named"), [("units", "furlongs", "furlongs"), ("batch", "yes", "batch")]
)
async def test_a_bad_authenticate_field_gets_an_error_then_close(
    server, fleet, field, value, named
):
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await send_authenticate(
            ws, jwt=fleet.a.read_token, instance_id=fleet.a.instance_id, **{field: value}
        )
        [error] = await expect_close(ws, 4002)
        assert named in error["message"]


async def test_no_authenticate_in_time_closes_4008(nursery, settings, fleet, app):
    settings = settings.replace(realtime={"auth_timeout_seconds": 0.3})
    app.extensions["tracker"].settings = settings
    server = await start_server(nursery, app, settings)
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await expect_close(ws, 4008)


async def test_oversized_message_closes_1009(server, fleet):
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await send_authenticate(ws, jwt="x" * 5000)
        await expect_close(ws, 1009)


async def test_cross_site_origin_is_rejected(server, fleet):
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(
            f"{server.ws}/ws/realtime", extra_headers=[(b"Origin", b"https://evil.example")]
        ):
            pass
    assert rejected.value.status_code == 403


async def test_allowed_origin_is_accepted(nursery, settings, fleet, app):
    settings = settings.replace(realtime={"allowed_origins": ["https://ops.example.com"]})
    app.extensions["tracker"].settings = settings
    server = await start_server(nursery, app, settings)
    async with open_websocket_url(
        f"{server.ws}/ws/realtime", extra_headers=[(b"Origin", b"https://ops.example.com")]
    ) as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)


async def test_unanswered_pings_close_the_connection(nursery, settings, fleet, app):
    settings = settings.replace(realtime={"ping_interval_seconds": 0.2})
    app.extensions["tracker"].settings = settings
    server = await start_server(nursery, app, settings)
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)
        sent = await expect_close(ws, 4008)  # we read but never answer
        assert {"type": "ping"} in sent


async def test_batch_mode_sends_positions_messages(server, tracker, fleet):
    await tracker.writer.submit(fleet.a.device_token, [fix(51.5, -0.12, NOW - 5)])
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        welcome = await authenticate(ws, fleet.a.read_token, fleet.a.instance_id, batch=True)
        assert welcome["batch"] is True
        snapshot = await receive(ws)
        assert snapshot["type"] == "positions"
        [position] = snapshot["positions"]
        assert position["type"] == "position"
        assert (position["DeviceToken"], position["Lat"]) == (fleet.a.device_token, 51.5)
        assert position["DisplayIdentifier"] == "Alpha Driver"
        await tracker.writer.submit(fleet.a.device_token, [fix(51.6, -0.1, NOW - 1)])
        live = await receive(ws)
        assert [(p["Lat"], p["Timestamp"]) for p in live["positions"]] == [(51.6, int(NOW - 1))]


async def test_positions_go_out_at_once_while_the_server_keeps_up(nursery, settings, fleet, app):
    """realtime.fanout_interval_seconds only bounds how long a position may wait under
    load: on a quiet server each position is delivered on its own, as it is committed,
    however long the interval (here its maximum, 5 s, beyond the 3 s a receive may take)."""
    settings = settings.replace(realtime={"fanout_interval_seconds": 5.0})
    tracker = app.extensions["tracker"]
    tracker.settings = settings
    server = await start_server(nursery, app, settings)
    second = tracker.db.write_sync(devices.create, fleet.a.instance_id, "second")[0].token
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id, batch=True)
        for token, lat, ts in [
            (fleet.a.device_token, 10.0, NOW - 3),
            (fleet.a.device_token, 11.0, NOW - 2),
            (second, 12.0, NOW - 2),
        ]:
            await tracker.writer.submit(token, [fix(lat, ts=ts)])
            delivery = await receive(ws, timeout=3)
            assert [(p["DeviceToken"], p["Lat"]) for p in delivery["positions"]] == [(token, lat)]


async def test_a_client_that_stops_reading_is_cut_off(nursery, settings, fleet, app):
    """A client that keeps pinging but never reads fills the socket; the server cuts the
    TCP connection after a ping interval stuck in a send, and forgets the subscriber."""
    settings = settings.replace(
        realtime={"ping_interval_seconds": 0.5, "fanout_interval_seconds": 0.0}
    )
    tracker = app.extensions["tracker"]
    tracker.settings = settings
    server = await start_server(nursery, app, settings)
    tokens = [
        tracker.db.write_sync(devices.create, fleet.a.instance_id, f"flood-{i}")[0].token
        for i in range(50)
    ]
    auth = {"type": "authenticate", "jwt": fleet.a.read_token, "instance_id": fleet.a.instance_id}
    stream, ws = await raw_websocket(server, "/ws/realtime", auth, receive_buffer=4096)
    topic = instance_topic(fleet.a.instance_id)
    with trio.fail_after(5):
        while tracker.hub.subscriber_count(topic) == 0:
            await trio.sleep(0.05)

    async def keep_pinging() -> None:
        while True:
            await stream.send_all(ws.send(TextMessage(data='{"type": "ping"}')))
            await trio.sleep(0.1)

    async def flood() -> None:
        for step in range(200):
            for token in tokens:
                await tracker.writer.submit(token, [fix(1.0 + step / 1000, ts=NOW - 200 + step)])

    try:
        async with trio.open_nursery() as clients:
            clients.start_soon(keep_pinging)
            clients.start_soon(flood)
            with trio.fail_after(15):
                while tracker.hub.subscriber_count(topic) > 0:
                    await trio.sleep(0.1)
            clients.cancel_scope.cancel()
    finally:
        await stream.aclose()  # (on failure: lets the stuck send, and the server, end)


async def test_a_slow_reader_gets_whole_frames_in_order_and_the_latest_of_each_device(
    server, tracker, fleet
):
    """Writes the socket cannot take at once are finished later, never cut or reordered:
    a client reading a small buffer slowly decodes every frame, sees each device's
    positions in order, and ends with each device's newest one."""
    tokens = [
        tracker.db.write_sync(devices.create, fleet.a.instance_id, f"slow-{i}")[0].token
        for i in range(20)
    ]
    auth = {"type": "authenticate", "jwt": fleet.a.read_token, "instance_id": fleet.a.instance_id}
    stream, ws = await raw_websocket(server, "/ws/realtime", auth, receive_buffer=4096)
    steps = 100
    parts: list[str] = []
    last_seen: dict[str, int] = {}
    finals = {token: int(NOW) - 200 + steps - 1 for token in tokens}

    async def flood() -> None:
        for step in range(steps):
            for token in tokens:
                await tracker.writer.submit(token, [fix(1.0 + step / 1000, ts=NOW - 200 + step)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        with trio.fail_after(30):
            while {t: last_seen.get(t) for t in tokens} != finals:
                await trio.sleep(0.05)  # a slow reader
                ws.receive_data(await stream.receive_some(4096))
                for event in ws.events():
                    if not isinstance(event, TextMessage):
                        continue
                    parts.append(event.data)  # wsproto hands over what has arrived so far
                    if not event.message_finished:
                        continue
                    message = json.loads("".join(parts))  # a cut frame would not parse
                    parts.clear()
                    if message["type"] != "position" or message["DeviceToken"] not in finals:
                        continue
                    token, ts = message["DeviceToken"], message["Timestamp"]
                    assert ts > last_seen.get(token, 0), "a device's positions out of order"
                    last_seen[token] = ts
    await stream.aclose()
