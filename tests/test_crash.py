"""SIGKILL at random moments under concurrent ingest and share changes loses nothing acknowledged.

Bounded: CRASH_KILLS kills (default 5; the documented heavier run uses 50).
"""

import json
import os
import random
import signal
import sqlite3
import time

import httpx
import pytest
import trio

from tests.conftest import ServerProcess

KILLS = int(os.environ.get("CRASH_KILLS", "5"))


@pytest.fixture
def process(tmp_path):
    server = ServerProcess(tmp_path, env={"TRACKER_AUTH_JWT_SECRET": "c" * 48})
    yield server
    if server.process and server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def check_database(path, acked_positions, acked_sessions, acked_ends) -> None:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {
            (row[0], row[1]) for row in conn.execute("SELECT device_token, ts FROM positions")
        }
        missing = acked_positions - stored
        assert not missing, f"{len(missing)} acknowledged positions lost"
        sessions = dict(conn.execute("SELECT id, status FROM share_sessions"))
        assert acked_sessions <= set(sessions), "acknowledged share sessions lost"
        for session_id, status in acked_ends.items():
            assert sessions[session_id] == status, (session_id, sessions[session_id], status)


@pytest.mark.slow
async def test_random_sigkills_lose_no_acknowledged_write(process):
    instance_id = json.loads(process.cli("instance", "create", "Crashy", "--json"))["instance_id"]
    vans = [
        json.loads(process.cli("device", "add", "--instance", instance_id, "--json"))
        for _ in range(3)
    ]
    token = process.cli("token", "create", "--instance", instance_id, "--scope", "admin").strip()
    admin = {"Authorization": f"Bearer {token}"}
    acked_positions: set[tuple[str, float]] = set()
    acked_sessions: set[str] = set()
    acked_ends: dict[str, str] = {}
    rng = random.Random(1234)
    clock = [time.time() - 86000.0]
    writes_checked = 0

    async def ingest(client, van):
        while True:
            clock[0] += 0.001
            ts = round(clock[0], 3)
            batch = [{"latitude": 1, "longitude": 1, "timestamp": ts}]
            try:
                response = await client.post(
                    f"/api/v1/devices/{van['device_token']}/positions",
                    json={"positions": batch},
                    headers={"X-Ingest-Key": van["ingest_key"]},
                )
            except httpx.TransportError:
                return
            if response.status_code == 201:
                acked_positions.add((van["device_token"], ts))

    async def share_changes(client):
        while True:
            try:
                created = await client.post(
                    "/api/v1/sharing/sessions",
                    json={"device_token": vans[0]["device_token"], "notes": "crash test"},
                    headers=admin,
                )
                if created.status_code != 201:
                    continue
                session_id = created.json()["id"]
                acked_sessions.add(session_id)
                if rng.random() < 0.5:
                    ended = await client.post(
                        f"/api/v1/sharing/sessions/{session_id}/complete", headers=admin
                    )
                    status = "completed"
                else:
                    ended = await client.delete(
                        f"/api/v1/sharing/sessions/{session_id}", headers=admin
                    )
                    status = "cancelled"
                if ended.status_code == 200:
                    acked_ends[session_id] = status
            except httpx.TransportError:
                return

    for _ in range(KILLS):
        process.start()
        with trio.fail_after(60):
            async with (
                httpx.AsyncClient(base_url=process.url, timeout=5) as client,
                trio.open_nursery() as nursery,
            ):
                for van in vans:
                    nursery.start_soon(ingest, client, van)
                nursery.start_soon(share_changes, client)
                await trio.sleep(rng.uniform(0.3, 1.5))
                process.process.send_signal(signal.SIGKILL)
                process.process.wait()
        check_database(process.workdir / "tracker.db", acked_positions, acked_sessions, acked_ends)
        writes_checked = len(acked_positions) + len(acked_sessions) + len(acked_ends)

    assert len(acked_positions) > 100 and acked_ends
    print(f"crash test: {KILLS} kills, {writes_checked} acknowledged writes checked")
