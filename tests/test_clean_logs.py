"""No client can make the server log a traceback, however it leaves.

Each case ran many times used to log "Error in ASGI Framework" on a share of
the attempts: Hypercorn closes a connection whose client left without taking
its socket's send lock, so a response (or a WebSocket frame) written at that
moment failed with trio.BusyResourceError (tracker/sendguard.py).
"""

from __future__ import annotations

import logging
import socket
import struct
import time

import httpx
import trio

from tests.conftest import raw_websocket

ATTEMPTS = 100


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_client_leaving_after_100_continue_logs_nothing(server, caplog):
    caplog.set_level(logging.INFO)
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        b"POST /api/v1/devices/x/positions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 5000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    answered = 0
    with trio.fail_after(60):
        for _ in range(ATTEMPTS):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(head)
            reply = await stream.receive_some(100)
            answered += reply.startswith(b"HTTP/1.1 100") or reply.startswith(b"HTTP/1.1 413")
            await stream.aclose()
        await trio.sleep(0.5)  # let the server finish with the last ones
    assert answered == ATTEMPTS
    assert _errors(caplog) == []


async def test_websockets_vanishing_mid_stream_log_nothing(server, fleet, caplog):
    caplog.set_level(logging.INFO)
    tenant = fleet.a
    authenticate = {
        "type": "authenticate",
        "jwt": tenant.read_token,
        "instance_id": tenant.instance_id,
    }

    async def post_positions(http, stop: trio.Event) -> None:
        index = 0
        while not stop.is_set():
            index += 1
            await http.post(
                f"/devices/{tenant.device_token}/positions",
                json={
                    "latitude": 51 + (index % 500) / 1e4,
                    "longitude": -0.1,
                    "timestamp": time.time(),
                },
                headers={"X-Ingest-Key": tenant.ingest_key},
            )

    async def vanish(index: int) -> None:
        stream, _ = await raw_websocket(
            server, "/ws/realtime", authenticate, receive_buffer=[2048, 65536][index % 2]
        )
        await trio.sleep(0.01 * (index % 30))
        if index % 3:
            await stream.receive_some(64)
        # Reset, no close frame: the way a phone losing its network leaves.
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    stop = trio.Event()
    with trio.fail_after(60):
        async with (
            httpx.AsyncClient(base_url=server.api, timeout=10) as http,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(post_positions, http, stop)
            for index in range(300):
                nursery.start_soon(vanish, index)
                await trio.sleep(0.005)
            await trio.sleep(1)
            stop.set()
        await trio.sleep(0.5)
    assert _errors(caplog) == []
