"""`tracker migrate-data` moves a SQLite installation to PostgreSQL without loss.

A real `tracker serve` on SQLite collects a fleet's data through the API
(positions over two trips, a share link, a webhook, a geofence, a console
user, the JWT secret it generated itself); after the copy, a real `tracker
serve` on the test's own PostgreSQL answers the same reads with the same
answers, the old tokens, ingest key and share link still work, and new
positions are stored after the copied ones.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ServerProcess, bearer

NOW = time.time()


def run_cli(process: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        cwd=process.workdir,
        env=process.env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def reads(process: ServerProcess, tenant: dict) -> dict:
    """What a dispatcher and a recipient read, compared before and after the move."""
    token, device = tenant["read_token"], tenant["device_token"]
    with httpx.Client(base_url=process.url + "/api/v1", timeout=10) as http:
        trips = http.get(f"/devices/{device}/trips", headers=bearer(token)).json()
        answers = {
            "devices": http.get(
                f"/devices?instance_id={tenant['instance_id']}", headers=bearer(token)
            ).json(),
            "trips": trips,
            "waypoints": [
                http.get(
                    f"/devices/{device}/trips/{trip['track_token']}", headers=bearer(token)
                ).json()
                for trip in trips["items"]
            ],
            "sessions": http.get(
                f"/sharing/sessions?instance_id={tenant['instance_id']}", headers=bearer(token)
            ).json(),
            "webhooks": http.get(
                f"/webhooks?instance_id={tenant['instance_id']}",
                headers=bearer(tenant["admin_token"]),
            ).json(),
            "geofences": http.get(
                f"/geofences?instance_id={tenant['instance_id']}", headers=bearer(token)
            ).json(),
            "share": http.get(f"/share/{tenant['share_token']}").json(),
        }
    for hook in answers["webhooks"]["items"]:
        hook.pop("last_delivery", None)  # the dispatcher may try again meanwhile
        hook.pop("failing_since", None)
    return answers


def test_a_sqlite_installation_moves_to_postgresql_and_answers_the_same(tmp_path, postgres_url):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    hooks = {"TRACKER_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true"}  # its receiver never answers
    old = ServerProcess(tmp_path / "old", env=hooks)
    instance_id = json.loads(old.cli("instance", "create", "Moving", "--json"))["instance_id"]
    device = json.loads(old.cli("device", "add", "--instance", instance_id, "--json"))
    tenant = {
        "instance_id": instance_id,
        "device_token": device["device_token"],
        "ingest_key": device["ingest_key"],
        "read_token": old.cli("token", "create", "--instance", instance_id, "--scope", "read"),
        "admin_token": old.cli("token", "create", "--instance", instance_id, "--scope", "admin"),
    }
    tenant = {key: value.strip() for key, value in tenant.items()}
    added = run_cli(
        old,
        *("user", "add", "--instance", instance_id, "--username", "dispatch", "--role", "admin"),
        "--password-stdin",
        stdin="a long enough password\n",
    )
    assert added.returncode == 0, added.stderr
    old.start()
    try:
        with httpx.Client(base_url=old.url + "/api/v1", timeout=10) as http:
            fixes = [
                {"latitude": 48.1 + i * 0.001, "longitude": 11.5, "timestamp": NOW - 3600 + t}
                for i, t in enumerate([*range(0, 300, 30), *range(1500, 1800, 30)])
            ]  # two trips: a gap longer than trips.split_gap_seconds between them
            response = http.post(
                f"/devices/{tenant['device_token']}/positions",
                json={"positions": fixes},
                headers={"X-Ingest-Key": tenant["ingest_key"]},
            )
            assert response.status_code == 201, response.text
            admin = bearer(tenant["admin_token"])
            share = http.post(
                "/sharing/sessions",
                json={"device_token": tenant["device_token"], "instance_id": instance_id},
                headers=admin,
            )
            assert share.status_code == 201, share.text
            tenant["share_token"] = share.json()["share_token"]
            hook = http.post(
                f"/webhooks?instance_id={instance_id}",
                json={"url": "http://127.0.0.1:9/hook", "event_types": ["share.completed"]},
                headers=admin,
            )
            assert hook.status_code == 201, hook.text
            fence = http.post(
                f"/geofences?instance_id={instance_id}",
                json={
                    "name": "Depot",
                    "circle": {"latitude": 48.1, "longitude": 11.5, "radius_m": 200},
                },
                headers=admin,
            )
            assert fence.status_code == 201, fence.text
        before = reads(old, tenant)
        assert before["trips"]["total"] == 2
    finally:
        assert old.stop(signal.SIGTERM) == 0

    migrate = (
        "migrate-data",
        "--from",
        f"sqlite:///{old.workdir / 'tracker.db'}",
        "--to",
        postgres_url,
    )
    moved = run_cli(old, *migrate)
    assert moved.returncode == 0, moved.stderr
    assert "positions: 20 rows" in moved.stdout
    assert moved.stdout.strip().endswith("every table's count checked")

    new = ServerProcess(tmp_path / "new", env={**hooks, "TRACKER_STORAGE_URL": postgres_url})
    new.start()
    try:
        assert reads(new, tenant) == before
        with httpx.Client(base_url=new.url + "/api/v1", timeout=10) as http:
            later = {"latitude": 48.2, "longitude": 11.5, "timestamp": NOW - 60}
            response = http.post(
                f"/devices/{tenant['device_token']}/positions",
                json=later,
                headers={"X-Ingest-Key": tenant["ingest_key"]},
            )
            assert response.status_code == 201, response.text
            position = http.get(
                f"/devices/{tenant['device_token']}/position",
                headers=bearer(tenant["read_token"]),
            ).json()
            assert position["latitude"] == pytest.approx(48.2)
            login = http.post(
                "/auth/login",
                json={"username": "dispatch", "password": "a long enough password"},
            )
            assert login.status_code == 200, login.text
    finally:
        assert new.stop(signal.SIGTERM) == 0

    again = run_cli(old, *migrate)  # the same again: the target is no longer empty
    assert again.returncode == 2
    assert "the target already holds data (1 instance(s))" in again.stderr
    assert "password" not in again.stderr.split("tracker:", 1)[1].split("(", 1)[0]


def test_migrate_data_refuses_a_bad_url_and_the_same_database_in_one_line(tmp_path):
    process = ServerProcess(tmp_path)
    for args, message in [
        (("--from", "mysql://x/y", "--to", "sqlite:///b.db"), "tracker: --from: must be"),
        (("--from", "sqlite:///a.db", "--to", "sqlite:///a.db"), "name the same database"),
    ]:
        result = run_cli(process, "migrate-data", *args)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert message in line
