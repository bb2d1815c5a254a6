"""The writer remembers each device between its commits, and forgets when anyone else writes.

What it remembers (the device's row, its live fix's time, its newest stored
fix's time) saves statements on every commit; the stories here are the ones
where remembering would go wrong: another process (a second server on the
same file, a script, a restore) stores a fix or renames a device while this
server runs, or a write of this server that is not an ingest deletes and
re-creates a device. The next ingest is judged by what is on disk.
"""

import subprocess
import sys
import textwrap
import time

from tests.conftest import bearer

NOW = int(time.time())


async def post(http, tenant, *fixes: dict, ingest_key: str | None = None):
    response = await http.post(
        f"/devices/{tenant.device_token}/positions",
        json={"positions": list(fixes)},
        headers={"X-Ingest-Key": ingest_key or tenant.ingest_key},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def live_position(http, tenant) -> dict:
    response = await http.get(
        f"/devices/{tenant.device_token}/position", headers=bearer(tenant.read_token)
    )
    assert response.status_code == 200, response.text
    return response.json()


def fix(ts: float, latitude: float = 51.5) -> dict:
    return {"latitude": latitude, "longitude": -0.12, "timestamp": ts}


def in_another_process(database, code: str) -> None:
    """Run `code` with `db` (tracker's store on the same database) in a child Python process."""
    if database.dialect == "postgresql":
        script = "from tracker.store.postgres import PostgresDatabase\n"
        script += f"db = PostgresDatabase({database.url!r})\n"
    else:
        script = f"from tracker.store import Database\ndb = Database({database.path!r})\n"
    script += textwrap.dedent(code) + "\ndb.close()\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def store_fix_elsewhere(database, device_token: str, ts: float, latitude: float) -> None:
    """Another process stores a fix and makes it the device's live position."""
    in_another_process(
        database,
        f"""
        from tracker.models import Position
        from tracker.store import positions
        def store(conn):
            fix = Position(latitude={latitude}, longitude=-0.12, timestamp={ts})
            positions.insert_many(conn, [({device_token!r}, "elsewhere", fix)], {ts})
            positions.set_latest(conn, {device_token!r}, {ts})
        db.write_sync(store)
        """,
    )


async def test_a_fix_another_process_stored_is_a_duplicate_here(http, tracker, fleet):
    assert await post(http, fleet.a, fix(NOW - 60)) == {"accepted": 1, "duplicates": 0}
    store_fix_elsewhere(tracker.db, fleet.a.device_token, NOW - 30, 51.6)

    answer = await post(http, fleet.a, fix(NOW - 30), fix(NOW - 20, 51.7))

    assert answer == {"accepted": 1, "duplicates": 1}
    assert (await live_position(http, fleet.a))["latitude"] == 51.7


async def test_a_newer_fix_another_process_stored_stays_the_live_position(http, tracker, fleet):
    await post(http, fleet.a, fix(NOW - 60))
    store_fix_elsewhere(tracker.db, fleet.a.device_token, NOW - 10, 51.6)

    # Newer than what this server stored, older than the other process's fix: a backlog.
    await post(http, fleet.a, fix(NOW - 30, 51.7))

    live = await live_position(http, fleet.a)
    assert (live["timestamp"], live["latitude"]) == (NOW - 10, 51.6)


async def test_a_device_renamed_by_another_process_is_named_so_on_the_next_live_fix(
    server, tracker, fleet, http
):
    from trio_websocket import open_websocket_url

    from tests.test_realtime import authenticate, receive

    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await authenticate(ws, fleet.a.read_token, fleet.a.instance_id)
        await post(http, fleet.a, fix(NOW - 20))
        assert (await receive(ws))["DisplayIdentifier"] == "Alpha Driver"
        in_another_process(
            tracker.db,
            f"""
            from tracker.store import devices
            db.write_sync(devices.set_profile, {fleet.a.device_token!r}, {{"full_name": "Zoe Q"}})
            """,
        )
        await post(http, fleet.a, fix(NOW - 10))
        assert (await receive(ws))["DisplayIdentifier"] == "Zoe Q"


async def test_a_device_deleted_and_added_again_starts_afresh(http, tracker, fleet):
    await post(http, fleet.a, fix(NOW - 10))
    headers = bearer(fleet.a.admin_token)
    assert (
        await http.delete(f"/devices/{fleet.a.device_token}", headers=headers)
    ).status_code == 204
    created = await http.post(
        "/devices",
        json={"instance_id": fleet.a.instance_id, "device_token": fleet.a.device_token},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    key = created.json()["ingest_key"]

    # At the deleted device's last fix time, and older: both new to this device.
    assert await post(http, fleet.a, fix(NOW - 10), fix(NOW - 30, 51.7), ingest_key=key) == {
        "accepted": 2,
        "duplicates": 0,
    }
    live = await live_position(http, fleet.a)
    assert (live["timestamp"], live["latitude"]) == (NOW - 10, 51.5)
