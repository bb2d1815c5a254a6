"""The disk fills up: clients are told to come back later, the log stays readable, nothing is lost.

The database lives on a small tmpfs of its own (a real full disk: SQLite
gets ENOSPC and reports SQLITE_FULL), served by `tracker serve` in its own
process. A filler file takes the space; ingest runs until SQLite refuses to
store; then the filler is deleted and the same process stores again.
Mounting needs root (CI runs as root); elsewhere the test is skipped, and in
CI a refused mount fails it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import ServerProcess, bearer
from tracker.store import Database, StorageFailures
from tracker.store import positions as positions_store

DISK_BYTES = 4 * 1024 * 1024
BATCH = 50  # positions per ingest request


@pytest.fixture
def small_disk(tmp_path) -> Path:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.fixture
def process(tmp_path, small_disk):
    server = ServerProcess(
        tmp_path,  # the log stays off the small disk
        env={
            "TRACKER_AUTH_JWT_SECRET": "f" * 48,
            "TRACKER_STORAGE_PATH": str(small_disk / "tracker.db"),
        },
    )
    yield server
    if server.process and server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def fill(disk: Path) -> Path:
    """Write a filler file until the disk has no byte left."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as error:
            assert error.errno == errno.ENOSPC
        try:
            while True:
                out.write(b"\0")
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def batch(start: float, count: int = BATCH) -> list[dict]:
    return [
        {"latitude": 10.0, "longitude": 10.0 + i / 1e4, "timestamp": start + i}
        for i in range(count)
    ]


def assert_storage_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable"
    assert "cannot store" in error["message"]


async def wait_for_status(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    with trio.fail_after(10):  # the probe answers from a cache at most a second old
        while (response := await client.get(path)).status_code != status:
            await trio.sleep(0.1)
    return response


async def test_a_full_disk_answers_503_then_recovers_with_nothing_lost(process, small_disk):
    instance_id = json.loads(process.cli("instance", "create", "Full", "--json"))["instance_id"]
    device = json.loads(process.cli("device", "add", "--instance", instance_id, "--json"))
    admin = process.cli("token", "create", "--instance", instance_id, "--scope", "admin").strip()
    process.start()
    positions_url = f"/api/v1/devices/{device['device_token']}/positions"
    ingest_key = {"X-Ingest-Key": device["ingest_key"]}
    acknowledged: list[float] = []
    refused = 0
    start = time.time() - 30 * 86400  # room for 20,000 requests of fixes a second apart
    request = 0

    async def ingest() -> httpx.Response:
        nonlocal request
        fixes = batch(start + request * BATCH)
        request += 1
        response = await client.post(positions_url, json={"positions": fixes}, headers=ingest_key)
        if response.status_code == 201:
            acknowledged.extend(fix["timestamp"] for fix in fixes)
        return response

    async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:
        for _ in range(20):
            assert (await ingest()).status_code == 201
        filler = fill(small_disk)
        # Ingest until SQLite refuses, then keep going: the phone apps resend.
        with trio.fail_after(120):
            while refused < 300:
                response = await ingest()
                if response.status_code != 201:
                    assert_storage_unavailable(response)
                    refused += 1
                assert request < 20_000, "the disk never filled"

        osmand = await client.post(
            "/ingest/osmand",
            params={"id": device["ingest_key"], "lat": 1.0, "lon": 2.0, "timestamp": int(start)},
        )
        assert_storage_unavailable(osmand)
        owntracks = await client.post(
            "/ingest/owntracks",
            json={"_type": "location", "lat": 1.0, "lon": 2.0, "tst": int(start) + 7},
            auth=(device["device_token"], device["ingest_key"]),
        )
        assert_storage_unavailable(owntracks)
        share = await client.post(
            "/api/v1/sharing/sessions",
            json={"device_token": device["device_token"], "instance_id": instance_id},
            headers=bearer(admin),
        )
        assert_storage_unavailable(share)
        not_ready = await wait_for_status(client, "/api/v1/health/ready", 503)
        assert not_ready.json()["status"] == "unavailable"
        assert int(not_ready.headers["Retry-After"]) > 0
        health = await client.get("/api/v1/health")
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        assert health.json()["storage"] == "unavailable"

        # The command line meets the same error, and says so in one line.
        added = subprocess.run(
            [sys.executable, "-m", "tracker", "device", "add", "--instance", instance_id],
            cwd=process.workdir,
            env=process.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert added.returncode == 1
        assert added.stderr.startswith("tracker: the database cannot store data now")
        assert len(added.stderr.strip().splitlines()) == 1, added.stderr

        log = (process.workdir / "server.log").read_text()
        assert "Traceback" not in log
        failure_lines = [line for line in log.splitlines() if "cannot store" in line]
        assert 1 <= len(failure_lines) <= 3, failure_lines  # one per kind of failure
        assert len(acknowledged) > 0

        # Space comes back: the same process stores again, and nothing acknowledged is lost.
        filler.unlink()
        ready = await wait_for_status(client, "/api/v1/health/ready", 200)
        assert ready.json() == {"status": "ready"}
        after = batch(start + (request + 1) * BATCH, 3)
        response = await client.post(positions_url, json={"positions": after}, headers=ingest_key)
        assert response.status_code == 201, response.text
        share = await client.post(
            "/api/v1/sharing/sessions",
            json={"device_token": device["device_token"], "instance_id": instance_id},
            headers=bearer(admin),
        )
        assert share.status_code == 201, share.text
        assert (await client.get("/api/v1/health")).json()["status"] == "ok"

    assert process.stop(signal.SIGTERM) == 0
    assert "stores again" in (process.workdir / "server.log").read_text()
    db = Database(small_disk / "tracker.db")
    try:
        stored = {
            p.timestamp
            for p in db.read_sync(positions_store.recent, device["device_token"], start - 1)
        }
    finally:
        db.close()
    assert set(acknowledged) <= stored
    assert {fix["timestamp"] for fix in after} <= stored
    print(
        f"disk full after {len(acknowledged)} acknowledged positions; {refused} requests"
        " answered 503; log lines about it:",
        len(failure_lines),
    )


def test_a_storm_of_failures_is_one_line_a_minute_per_kind(caplog):
    now = [1000.0]
    failures = StorageFailures(interval=60, clock=lambda: now[0])
    full = sqlite3.OperationalError("database or disk is full")
    caplog.set_level(logging.INFO, logger="tracker.store")
    for _ in range(450):
        failures.failed("disk full", full)
        now[0] += 0.04  # 450 failures in 18 s
    failures.failed("disk I/O error", sqlite3.OperationalError("disk I/O error"))
    now[0] += 60
    failures.failed("disk full", full)
    failures.stored()
    failures.stored()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4, lines
    assert "disk full" in lines[0] and "more since" not in lines[0]
    assert "disk I/O error" in lines[1]
    assert "449 more since the last report" in lines[2]
    assert lines[3] == "database stores again"
    assert not any(record.exc_info for record in caplog.records)
