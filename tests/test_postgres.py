"""tracker on PostgreSQL (storage.url): several processes on one database act as one.

Each test gets a fresh database on the session's real PostgreSQL
(tests/engines.py, Debian's server as a child process); the multi-process
tests start real `tracker serve` processes sharing it and a redis-server of
their own. Without the servers these tests fail in CI and are skipped
elsewhere. The suites that run on both engines are run on PostgreSQL by
.ci/run with TEST_TRACKER_STORAGE=postgresql.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import trio

from tests.conftest import ServerProcess, bearer, free_port
from tracker.config import ConfigError, Settings
from tracker.store import pg_schema


def tracker_command(workdir, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        cwd=workdir,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_two_processes_starting_at_once_on_an_empty_database_migrate_it_once(
    postgres_url, tmp_path
):
    env = {"TRACKER_STORAGE_URL": postgres_url}
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda name: tracker_command(tmp_path, env, "instance", "create", name, "--json"),
                ["North", "South"],
            )
        )
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    with psycopg.connect(postgres_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        names = sorted(row[0] for row in conn.execute("SELECT name FROM instances"))
    assert versions == [number for number, _, _ in pg_schema.MIGRATIONS]
    assert names == ["North", "South"]
    assert not (tmp_path / "tracker.db").exists()  # nothing went to a SQLite file


def test_a_storage_url_of_another_engine_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as refused:
        Settings().replace(storage={"url": "mysql://admin:hunter2@db/tracker"})
    assert "storage.url" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_an_unreachable_postgresql_is_told_in_one_line_without_the_password(tmp_path):
    url = f"postgresql://tracker:hunter2@127.0.0.1:{free_port()}/tracker"
    run = tracker_command(tmp_path, {"TRACKER_STORAGE_URL": url}, "instance", "create", "X")
    assert run.returncode == 2
    assert run.stderr.startswith("tracker: cannot open the database postgresql://tracker:***@")
    assert "hunter2" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_backup_of_a_postgresql_database_points_to_pg_dump(postgres_url, tmp_path):
    run = tracker_command(
        tmp_path, {"TRACKER_STORAGE_URL": postgres_url}, "backup", str(tmp_path / "copy.db")
    )
    assert run.returncode == 2
    assert "pg_dump" in run.stderr


@pytest.fixture
async def two_processes(tmp_path, postgres_url, redis_server):
    """Two `tracker serve` processes on one PostgreSQL database and one Redis."""
    env = {
        "TRACKER_STORAGE_URL": postgres_url,
        "TRACKER_BROKER_URL": redis_server.url,
        "TRACKER_AUTH_JWT_SECRET": "s" * 48,
    }
    processes = []
    for number in range(2):
        workdir = tmp_path / f"process-{number + 1}"
        workdir.mkdir()
        processes.append(ServerProcess(workdir, env=env))
    first = processes[0]
    instance_id = json.loads(first.cli("instance", "create", "Pair", "--json"))["instance_id"]
    device = json.loads(first.cli("device", "add", "--instance", instance_id, "--json"))
    read_token = first.cli("token", "create", "--instance", instance_id, "--scope", "read")
    try:
        for process in processes:
            process.start()
        yield processes, device, read_token.strip()
    finally:
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                process.stop(signal.SIGTERM)


async def test_one_device_through_two_processes_at_once_gives_one_trip_and_no_duplicate(
    two_processes, postgres_url
):
    processes, device, read_token = two_processes
    start = round(time.time(), 3) - 600
    fixes = [
        {"latitude": 47.0 + i * 0.0005, "longitude": 8.5, "timestamp": start + i * 5}
        for i in range(100)
    ]
    answers = []

    async def send(process: ServerProcess, batches: list[list[dict]]) -> None:
        async with httpx.AsyncClient(base_url=process.url + "/api/v1", timeout=30) as http:
            for batch in batches:
                response = await http.post(
                    f"/devices/{device['device_token']}/positions",
                    json={"positions": batch},
                    headers={"X-Ingest-Key": device["ingest_key"]},
                )
                assert response.status_code == 201, response.text
                answers.append(response.json())

    # Both processes receive every fix, in batches cut differently, at the same time.
    first, second = processes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, first, [fixes[i : i + 10] for i in range(0, 100, 10)])
        nursery.start_soon(send, second, [fixes[i : i + 7] for i in range(0, 100, 7)])
    assert sum(answer["accepted"] for answer in answers) == 100
    assert sum(answer["duplicates"] for answer in answers) == 100
    with psycopg.connect(postgres_url) as conn:
        stored = [
            row[0]
            for row in conn.execute(
                "SELECT ts FROM positions WHERE device_token = %s", (device["device_token"],)
            )
        ]
    assert sorted(stored) == [fix["timestamp"] for fix in fixes]
    for process in processes:
        async with httpx.AsyncClient(base_url=process.url + "/api/v1", timeout=30) as http:
            trips = await http.get(
                f"/devices/{device['device_token']}/trips", headers=bearer(read_token)
            )
        assert trips.status_code == 200
        assert trips.json()["total"] == 1
        assert trips.json()["items"][0]["waypoint_count"] == 100


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test's own, since the test stops it."""
    from tests.engines import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def test_postgresql_going_away_answers_503_and_storing_resumes_when_it_is_back(
    own_postgres, settings
):
    from tests.conftest import make_tenant
    from tracker.app import create_app

    settings = settings.replace(storage={"url": own_postgres.create_database("outage")})
    app = create_app(settings)
    tenant = make_tenant(app.extensions["tracker"], "Alpha")
    path = f"/api/v1/devices/{tenant.device_token}/positions"
    headers = {"X-Ingest-Key": tenant.ingest_key}
    now = time.time()

    def fix(offset: float) -> dict:
        return {"positions": [{"latitude": 47.0, "longitude": 8.5, "timestamp": now + offset}]}

    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.post(path, json=fix(0), headers=headers)).status_code == 201

        own_postgres.halt()
        refused = await client.post(path, json=fix(1), headers=headers)
        assert refused.status_code == 503
        assert (await refused.get_json())["error"]["code"] == "storage_unavailable"
        assert "Retry-After" in refused.headers
        ready = await client.get("/api/v1/health/ready")
        assert ready.status_code == 503

        own_postgres.resume()
        with trio.fail_after(30):  # as a phone resends: stored once the database is back
            while (await client.post(path, json=fix(1), headers=headers)).status_code != 201:
                await trio.sleep(0.2)
        latest = await client.get(
            f"/api/v1/devices/{tenant.device_token}/position", headers=bearer(tenant.read_token)
        )
        assert latest.status_code == 200
        assert (await latest.get_json())["timestamp"] == pytest.approx(now + 1)


def test_the_postgresql_schema_has_every_table_column_and_index_of_sqlites(postgres_url):
    """A SQLite migration without its PostgreSQL twin (tracker/store/pg_schema.py) fails here."""
    import sqlite3

    from tracker.store import schema
    from tracker.store.postgres import PostgresDatabase

    lite = sqlite3.connect(":memory:")
    schema.migrate(lite)
    tables = [
        name
        for (name,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlite_%'"
        )
    ]
    sqlite_columns = {
        table: {row[1] for row in lite.execute(f"PRAGMA table_info({table})")} for table in tables
    }
    sqlite_indexes = {
        name
        for (name,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " AND tbl_name NOT LIKE '_sqlite_%'"
        )
    }
    sqlite_triggers = {
        name for (name,) in lite.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
    }
    lite.close()

    PostgresDatabase(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        pg_columns: dict[str, set[str]] = {}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        ):
            pg_columns.setdefault(table, set()).add(column)
        pg_indexes = {name for (name,) in conn.execute("SELECT indexname FROM pg_indexes")}
        triggers = {
            name for (name,) in conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
        }
    pg_columns.pop("schema_migrations")
    assert pg_columns == sqlite_columns
    assert sqlite_indexes <= pg_indexes
    assert triggers == sqlite_triggers
