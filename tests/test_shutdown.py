"""Stopping the server: every WebSocket client is told 1001, nothing is logged as an error,
acknowledged positions are on disk, and the process exits at once with status 0."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.conftest import ServerProcess

# The issue asks for 2 s; the bound leaves room for a loaded CI machine while
# still failing if the stop waits out Hypercorn's 5 s graceful timeout.
EXIT_BOUND_SECONDS = 4.0


@pytest.fixture
def process(tmp_path):
    server = ServerProcess(tmp_path, env={"TRACKER_AUTH_JWT_SECRET": "s" * 48})
    yield server
    if server.process and server.process.poll() is None:
        server.process.kill()
        server.process.wait()


async def _close_code(ws, received: list) -> int | None:
    try:
        while True:
            received.append(json.loads(await ws.get_message()))
    except ConnectionClosed as closed:
        return closed.reason.code


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_stop_tells_every_websocket_client_1001_and_exits_cleanly(process, stop_signal):
    instance_id = json.loads(process.cli("instance", "create", "Stopping", "--json"))["instance_id"]
    device = json.loads(process.cli("device", "add", "--instance", instance_id, "--json"))
    token = process.cli("token", "create", "--instance", instance_id, "--scope", "admin").strip()
    process.start()
    api = process.url + "/api/v1"
    ws_api = api.replace("http://", "ws://")
    acknowledged = []
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        for offset in range(20):
            fix_time = time.time() - 100 + offset
            response = await http.post(
                f"/devices/{device['device_token']}/positions",
                json={"latitude": 51.5 + offset / 1000, "longitude": -0.12, "timestamp": fix_time},
                headers={"X-Ingest-Key": device["ingest_key"]},
            )
            assert response.status_code == 201
            acknowledged.append(fix_time)
        share = await http.post(
            "/sharing/sessions",
            json={"device_token": device["device_token"], "expires_in_hours": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert share.status_code == 201, share.text
        share_token = share.json()["share_token"]

    # A client that keeps its connection alive after a request must not hold the stop.
    idle_client = httpx.AsyncClient(base_url=api, timeout=10)
    assert (await idle_client.get("/health")).status_code == 200

    codes: dict[str, int | None] = {}
    received: dict[str, list] = {"streaming": [], "unauthenticated": [], "share": []}
    with trio.fail_after(20):
        async with (
            open_websocket_url(f"{ws_api}/ws/realtime") as streaming,
            open_websocket_url(f"{ws_api}/ws/realtime") as unauthenticated,
            open_websocket_url(f"{ws_api}/share/{share_token}/live") as share_viewer,
        ):
            await streaming.send_message(
                json.dumps({"type": "authenticate", "jwt": token, "instance_id": instance_id})
            )
            assert json.loads(await streaming.get_message())["type"] == "welcome"
            assert json.loads(await share_viewer.get_message())["type"] == "position"

            async def watch(name: str, ws) -> None:
                codes[name] = await _close_code(ws, received[name])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, "streaming", streaming)
                nursery.start_soon(watch, "unauthenticated", unauthenticated)
                nursery.start_soon(watch, "share", share_viewer)
                await trio.sleep(0.2)
                stopped_at = time.monotonic()
                process.process.send_signal(stop_signal)
                status = await trio.to_thread.run_sync(process.process.wait, 15)
                exit_seconds = time.monotonic() - stopped_at

    await idle_client.aclose()
    assert codes == {"streaming": 1001, "unauthenticated": 1001, "share": 1001}
    assert status == 0
    assert exit_seconds < EXIT_BOUND_SECONDS, f"took {exit_seconds:.1f} s to exit"
    log = (process.workdir / "server.log").read_text()
    assert " ERROR " not in log and "Traceback" not in log, log
    with sqlite3.connect(process.workdir / "tracker.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT ts FROM positions")}
    assert set(acknowledged) <= stored
