"""An operator backs the database up while devices report, and restores it into a new server."""

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import httpx
import pytest
import trio

from tests.conftest import ServerProcess, bearer
from tracker.cli import main
from tracker.store import Database, instances

SECRET = {"TRACKER_AUTH_JWT_SECRET": "b" * 48}


@pytest.fixture
def live(tmp_path):
    (tmp_path / "live").mkdir()
    server = ServerProcess(tmp_path / "live", env=SECRET)
    yield server
    if server.process and server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def run_backup(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tracker", "backup", *args],
        cwd=server.workdir,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored_timestamps(path, device_token) -> set[float]:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT ts FROM positions WHERE device_token = ?", (device_token,))
        return {row[0] for row in rows}


@pytest.mark.slow
async def test_backup_under_ingest_restores_every_position_acknowledged_before_it(live, tmp_path):
    instance_id = json.loads(live.cli("instance", "create", "Backed up", "--json"))["instance_id"]
    device = json.loads(live.cli("device", "add", "--instance", instance_id, "--json"))
    live.start()
    acknowledged: list[float] = []  # in the order the server answered
    base = time.time() - 3600
    stop_ingest = trio.Event()

    async def stream(worker: int, client: httpx.AsyncClient) -> None:
        i = 0
        while not stop_ingest.is_set():
            ts = base + worker * 0.001 + i * 0.01
            i += 1
            response = await client.post(
                f"/api/v1/devices/{device['device_token']}/positions",
                json={
                    "positions": [{"latitude": 1.0, "longitude": 1.0 + i / 1e5, "timestamp": ts}]
                },
                headers={"X-Ingest-Key": device["ingest_key"]},
            )
            assert response.status_code == 201, response.text
            acknowledged.append(ts)

    backup_path = tmp_path / "tracker-backup.db"
    with trio.fail_after(60):
        async with (
            httpx.AsyncClient(base_url=live.url, timeout=10) as client,
            trio.open_nursery() as nursery,
        ):
            for worker in range(6):
                nursery.start_soon(stream, worker, client)
            while len(acknowledged) < 50:
                await trio.sleep(0.05)
            # A long reader (as a report or an analytics query would be) keeps every later
            # commit in tracker.db-wal: a copy of the database file alone would miss them.
            with closing(sqlite3.connect(live.workdir / "tracker.db")) as reader:
                reader.execute("BEGIN")
                reader.execute("SELECT count(*) FROM positions").fetchone()
                while len(acknowledged) < 300:
                    await trio.sleep(0.05)
                before = set(acknowledged)
                result = await trio.to_thread.run_sync(run_backup, live, str(backup_path))
                acknowledged_during_backup = len(acknowledged) - len(before)
                stop_ingest.set()

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{backup_path}: ")
    assert result.stdout.rstrip().endswith("positions, integrity ok")
    # The server kept acknowledging positions while the backup ran: it was not paused.
    assert acknowledged_during_backup > 0
    assert live.stop(signal.SIGTERM) == 0

    # Restore as docs/deployment.md says: the backup becomes a new server's storage.path.
    (tmp_path / "restored").mkdir()
    shutil.copyfile(backup_path, tmp_path / "restored" / "tracker.db")
    restored = ServerProcess(tmp_path / "restored", env=SECRET)
    restored.start()
    try:
        token = restored.cli("token", "create", "--instance", instance_id, "--scope", "read")
        response = httpx.get(
            f"{restored.url}/api/v1/devices/{device['device_token']}/position",
            headers=bearer(token.strip()),
        )
        assert response.status_code == 200, response.text
        assert response.json()["timestamp"] >= int(max(before))  # unix seconds, whole
    finally:
        assert restored.stop(signal.SIGTERM) == 0
    stored = stored_timestamps(restored.workdir / "tracker.db", device["device_token"])
    missing = before - stored
    assert not missing, f"{len(missing)} positions acknowledged before the backup are missing"


@pytest.fixture
def database(tmp_path, monkeypatch):
    """A tracker.db with one instance, named by the environment as `tracker` reads it."""
    path = tmp_path / "tracker.db"
    db = Database(path)
    db.write_sync(instances.create, "Backed up")
    db.close()
    monkeypatch.setenv("TRACKER_STORAGE_PATH", str(path))
    return path


def tracker_backup(capsys, *args: str) -> tuple[int, str, str]:
    """`tracker backup ARGS` in this process: exit code, stdout, stderr."""
    try:
        main(["backup", *args])
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def instance_names(path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM instances")]


def test_backup_never_replaces_a_file_unless_forced(database, tmp_path, capsys):
    target = tmp_path / "earlier-backup.db"
    target.write_bytes(b"last week's backup")

    code, _, err = tracker_backup(capsys, str(target))
    assert code == 2
    assert "exists; pass --force" in err
    assert target.read_bytes() == b"last week's backup"

    code, out, _ = tracker_backup(capsys, str(target), "--force", "--json")
    assert code == 0
    assert json.loads(out) == {
        "path": str(target),
        "size_bytes": target.stat().st_size,
        "positions": 0,
    }
    assert instance_names(target) == ["Backed up"]
    assert not [path for path in tmp_path.iterdir() if "partial" in path.name]


def test_backup_refuses_to_write_over_the_database_itself(database, capsys):
    size = database.stat().st_size
    code, _, err = tracker_backup(capsys, str(database), "--force")
    assert code == 2
    assert "is the database itself" in err
    assert database.stat().st_size == size
    assert instance_names(database) == ["Backed up"]


def test_backup_of_a_missing_database_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRACKER_STORAGE_PATH", str(tmp_path / "typo.db"))
    code, _, err = tracker_backup(capsys, str(tmp_path / "backup.db"))
    assert code == 2
    assert "no database at" in err
    assert list(tmp_path.iterdir()) == []
