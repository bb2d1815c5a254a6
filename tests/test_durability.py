"""An acknowledged position is never lost, even when the server is killed mid-stream."""

import json
import signal
import sqlite3
import time

import httpx
import pytest
import trio

from tests.conftest import ServerProcess


@pytest.fixture
def process(tmp_path):
    server = ServerProcess(tmp_path, env={"TRACKER_AUTH_JWT_SECRET": "d" * 48})
    yield server
    if server.process and server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def stored_timestamps(path, device_token) -> set[float]:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT ts FROM positions WHERE device_token = ?", (device_token,))
        return {row[0] for row in rows}


@pytest.mark.slow
async def test_sigkill_during_ingest_loses_no_acknowledged_position(process):
    instance_id = json.loads(process.cli("instance", "create", "Durable", "--json"))["instance_id"]
    device = json.loads(process.cli("device", "add", "--instance", instance_id, "--json"))
    process.start()
    acknowledged: set[float] = set()
    base = time.time() - 3600

    async def stream(worker: int, client: httpx.AsyncClient) -> None:
        for i in range(100_000):
            ts = base + worker * 0.001 + i * 0.01
            batch = [{"latitude": 1.0, "longitude": 1.0 + i / 1e5, "timestamp": ts}]
            try:
                response = await client.post(
                    f"/api/v1/devices/{device['device_token']}/positions",
                    json={"positions": batch},
                    headers={"X-Ingest-Key": device["ingest_key"]},
                )
            except httpx.TransportError:
                return  # the server is gone
            if response.status_code == 201:
                acknowledged.add(ts)

    with trio.fail_after(60):
        async with (
            httpx.AsyncClient(base_url=process.url, timeout=5) as client,
            trio.open_nursery() as nursery,
        ):
            for worker in range(8):
                nursery.start_soon(stream, worker, client)
            while len(acknowledged) < 300:
                await trio.sleep(0.05)
            process.process.send_signal(signal.SIGKILL)
            process.process.wait()

    assert len(acknowledged) >= 300
    process.start()  # the restart replays the WAL
    stored = stored_timestamps(process.workdir / "tracker.db", device["device_token"])
    missing = acknowledged - stored
    assert not missing, f"{len(missing)} acknowledged positions lost"
    assert process.stop(signal.SIGTERM) == 0
