"""Dispatchers who connect together share one snapshot read, and none of them ever misses a fix.

A reconnect storm brings many /ws/realtime clients of one instance at once;
the snapshot each gets on connect is read once and kept while the database
has not changed (tracker/api/realtime.py, `Snapshots`). These stories check
what a dispatcher would notice if that went wrong: a stale position or name
on connect, or a position committed while they connected that never arrives.
"""

import json
import time

import pytest
import trio
from trio_websocket import open_websocket_url

from tracker.api import realtime
from tracker.models import Position
from tracker.store import devices, open_database


def fix(lat: float, ts: float) -> Position:
    return Position.build(latitude=lat, longitude=0.0, timestamp=ts)


@pytest.fixture(params=["on the event loop", "in a worker thread"])
def snapshot_reads(request, monkeypatch):
    """Both ways a snapshot is read: small instances on the loop, large ones in a thread."""
    if request.param == "in a worker thread":
        monkeypatch.setattr(realtime, "SNAPSHOT_ON_LOOP_MAX_ROWS", -1)
    return request.param


async def first_snapshot(ws, timeout: float = 5) -> dict:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def test_a_change_made_by_another_process_shows_in_the_next_snapshot(
    server, tracker, fleet, settings, snapshot_reads
):
    now = time.time()
    await tracker.writer.submit(fleet.a.device_token, [fix(51.5, now - 10)])
    for _ in range(2):  # the second one is served the kept snapshot
        async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
            await ws.send_message(
                json.dumps(
                    {
                        "type": "authenticate",
                        "jwt": fleet.a.read_token,
                        "instance_id": fleet.a.instance_id,
                    }
                )
            )
            assert json.loads(await ws.get_message())["type"] == "welcome"
            snapshot = await first_snapshot(ws)
            assert (snapshot["Lat"], snapshot["DisplayIdentifier"]) == (51.5, "Alpha Driver")

    other = open_database(settings.storage)  # as `tracker device ...` would, from its process
    try:
        other.write_sync(devices.set_profile, fleet.a.device_token, {"full_name": "Zoe Q"})
    finally:
        other.close()
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await ws.send_message(
            json.dumps(
                {
                    "type": "authenticate",
                    "jwt": fleet.a.read_token,
                    "instance_id": fleet.a.instance_id,
                }
            )
        )
        assert json.loads(await ws.get_message())["type"] == "welcome"
        assert (await first_snapshot(ws))["DisplayIdentifier"] == "Zoe Q"


async def test_dispatchers_connecting_while_a_driver_moves_all_end_on_the_newest_position(
    server, tracker, fleet, snapshot_reads
):
    """Each client's last word on the device is the last fix committed, whether it came in
    the snapshot or live: a kept snapshot never hides a fix committed meanwhile."""
    clients = 40
    start = time.time() - 100
    sent = [start]
    await tracker.writer.submit(fleet.a.device_token, [fix(10.0, start)])
    latest: list[dict[str, float]] = [{} for _ in range(clients)]
    done = trio.Event()

    async def dispatcher(index: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
            await ws.send_message(
                json.dumps(
                    {
                        "type": "authenticate",
                        "jwt": fleet.a.read_token,
                        "instance_id": fleet.a.instance_id,
                    }
                )
            )
            welcome = json.loads(await ws.get_message())
            assert welcome["type"] == "welcome", welcome
            task_status.started()
            with trio.fail_after(10):  # the newest fix must come, in the snapshot or live
                while not done.is_set() or latest[index].get("ts") != int(sent[-1]):
                    with trio.move_on_after(0.1):  # then look at `done` again
                        message = json.loads(await ws.get_message())
                        if message.get("DeviceToken") == fleet.a.device_token:
                            latest[index] = {"ts": message["Timestamp"], "lat": message["Lat"]}

    async def driver() -> None:
        for step in range(1, 60):
            sent.append(start + step)
            await tracker.writer.submit(fleet.a.device_token, [fix(10.0 + step / 100, sent[-1])])
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver)
        async with trio.open_nursery() as connecting:
            for index in range(clients):
                connecting.start_soon(nursery.start, dispatcher, index)
                await trio.sleep(0.003)
        # every dispatcher is connected; the driver may still be moving
        while len(sent) < 60:
            await trio.sleep(0.01)
        done.set()

    newest = {"ts": int(sent[-1]), "lat": round(10.0 + 59 / 100, 6)}
    assert latest == [newest] * clients
