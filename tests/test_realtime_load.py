"""Clients that never read and clients that vanish cannot hurt the ones that behave."""

import json
import random
import time

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.conftest import raw_websocket
from tracker.models import Position
from tracker.store import devices

DEVICES = 10
RATE_PER_SECOND = 50
SECONDS = 3


async def vanishing_client(server, token: str, instance_id: str) -> None:
    """Handshake and authenticate over a raw socket, read a little, then drop the socket."""
    auth = {"type": "authenticate", "jwt": token, "instance_id": instance_id}
    stream, _ = await raw_websocket(server, "/ws/realtime", auth)
    await trio.sleep(random.uniform(0.2, 2.0))
    await stream.aclose()  # no close frame: gone


@pytest.mark.slow
async def test_stuck_and_vanished_clients_do_not_hurt_normal_ones(server, tracker, fleet):
    tokens = [fleet.a.device_token] + [
        tracker.db.write_sync(devices.create, fleet.a.instance_id, f"load-{i}")[0].token
        for i in range(DEVICES - 1)
    ]
    latest: dict[str, float] = {}
    received: list[dict[str, float]] = [{} for _ in range(20)]

    async def normal_client(index: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
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
            task_status.started()
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "position":
                    received[index][message["DeviceToken"]] = message["Lat"]

    async def stuck_client(task_status=trio.TASK_STATUS_IGNORED) -> None:
        # message_queue_size=0: the client library stops reading the socket at once.
        async with open_websocket_url(f"{server.ws}/ws/realtime", message_queue_size=0) as ws:
            await ws.send_message(
                json.dumps(
                    {
                        "type": "authenticate",
                        "jwt": fleet.a.read_token,
                        "instance_id": fleet.a.instance_id,
                    }
                )
            )
            task_status.started()
            await trio.sleep_forever()

    async def ingest() -> None:
        base = time.time() - 60
        for step in range(RATE_PER_SECOND * SECONDS):
            token = tokens[step % DEVICES]
            lat = round(step / 1000, 3)
            await tracker.writer.submit(
                token, [Position.build(latitude=lat, longitude=0, timestamp=base + step * 0.01)]
            )
            latest[token] = lat
            await trio.sleep(1 / RATE_PER_SECOND)

    async with httpx.AsyncClient(base_url=server.api) as http, trio.open_nursery() as nursery:
        for index in range(20):
            await nursery.start(normal_client, index)
        for _ in range(50):
            await nursery.start(stuck_client)
        for _ in range(50):
            nursery.start_soon(vanishing_client, server, fleet.a.read_token, fleet.a.instance_id)

        async with trio.open_nursery() as load:
            load.start_soon(ingest)
            for _ in range(SECONDS * 4):
                with trio.fail_after(2):
                    assert (await http.get("/health")).status_code == 200
                await trio.sleep(0.25)

        with trio.fail_after(5):
            while any(r != latest for r in received):
                await trio.sleep(0.05)

        # The vanished clients are gone and nothing is being sent: the process idles.
        await trio.sleep(1.5)
        cpu_before = time.process_time()
        await trio.sleep(2)
        cpu_used = time.process_time() - cpu_before
        assert cpu_used < 0.5, f"{cpu_used:.2f} s of CPU in 2 s idle: something spins"
        nursery.cancel_scope.cancel()
