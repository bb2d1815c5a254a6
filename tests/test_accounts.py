"""Console users sign in for a token, are throttled when they guess, and list their fleet."""

from __future__ import annotations

import logging
import time

import pytest

from tests.conftest import bearer
from tracker import accounts
from tracker.cli import main
from tracker.models import Position
from tracker.store import users

PASSWORD = "correct horse battery"


@pytest.fixture
def people(tracker, fleet):
    """An admin and a viewer of instance A, and a super-admin."""
    password_hash = accounts.hash_password(PASSWORD)
    tracker.db.write_sync(users.create, "Alice", fleet.a.instance_id, "admin", password_hash)
    tracker.db.write_sync(users.create, "victor", fleet.a.instance_id, "viewer", password_hash)
    tracker.db.write_sync(users.create, "root", None, "admin", password_hash)
    return fleet


async def sign_in(client, username: str, password: str = PASSWORD):
    return await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )


async def test_admin_signs_in_with_any_case_and_the_token_works_everywhere(client, people):
    response = await sign_in(client, "alice")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["scope"] == "admin" and body["instances"] == [people.a.instance_id]
    assert 11.9 * 3600 < body["expires_at"] - time.time() <= 12 * 3600
    devices = await client.get(
        "/api/v1/devices",
        query_string={"instance_id": people.a.instance_id},
        headers=bearer(body["token"]),
    )
    assert devices.status_code == 200
    foreign = await client.get(
        "/api/v1/devices",
        query_string={"instance_id": people.b.instance_id},
        headers=bearer(body["token"]),
    )
    assert foreign.status_code == 403


async def test_viewer_reads_but_cannot_share(client, people):
    body = await (await sign_in(client, "victor")).get_json()
    assert body["scope"] == "read"
    refused = await client.post(
        "/api/v1/sharing/sessions",
        json={"device_token": people.a.device_token},
        headers=bearer(body["token"]),
    )
    assert refused.status_code == 403


async def test_super_admin_covers_every_instance(client, people):
    body = await (await sign_in(client, "root")).get_json()
    assert body["instances"] == "*"


async def test_wrong_password_and_unknown_user_get_the_same_answer_and_a_log_line(
    client, people, caplog
):
    caplog.set_level(logging.INFO, logger="tracker")
    wrong = await sign_in(client, "Alice", "guess-one-two")
    unknown = await sign_in(client, "nobody", "guess-one-two")
    assert wrong.status_code == unknown.status_code == 401
    assert (await wrong.get_json()) == (await unknown.get_json())
    assert "failed sign-in for username 'Alice' from" in caplog.text
    assert "guess-one-two" not in caplog.text


def test_unknown_user_is_checked_against_a_hash_too(monkeypatch):
    real = accounts._hasher
    checked = []

    class Spy:
        def hash(self, password: str) -> str:
            return real.hash(password)

        def verify(self, stored: str, password: str) -> bool:
            checked.append(stored)
            return real.verify(stored, password)

    monkeypatch.setattr(accounts, "_hasher", Spy())
    assert accounts.password_matches(None, PASSWORD) is False
    assert checked and checked[0].startswith("$argon2id$")


async def test_repeated_failures_are_throttled_per_username_even_with_the_right_password(
    client, people
):
    for _ in range(accounts.FAILURES_PER_USERNAME):
        assert (await sign_in(client, "alice", "not-the-password")).status_code == 401
    throttled = await sign_in(client, "ALICE")
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) > 0
    assert (await sign_in(client, "victor")).status_code == 200  # another username still may


async def test_repeated_failures_from_one_address_are_throttled_across_usernames(client, people):
    for number in range(accounts.FAILURES_PER_ADDRESS):
        assert (await sign_in(client, f"guess{number}", "not-the-password")).status_code == 401
    assert (await sign_in(client, "victor")).status_code == 429


@pytest.mark.parametrize(
    "body",
    [{}, {"username": "alice"}, {"username": "", "password": "x"}, {"username": 1, "password": 2}],
)
async def test_malformed_sign_in_is_a_clear_error(client, people, body):
    response = await client.post("/api/v1/auth/login", json=body)
    assert response.status_code in (400, 422)
    assert "error" in await response.get_json()


async def test_device_list_gives_status_last_fix_and_pages(client, tracker, people):
    a = people.a
    now = time.time()
    await tracker.writer.submit(
        a.device_token, [Position.build(latitude=51.5, longitude=-0.1, timestamp=now, speed=8.0)]
    )
    for name in ("Parked Pete", "Old Olga"):
        response = await client.post(
            "/api/v1/devices",
            json={"instance_id": a.instance_id, "profile": {"full_name": name}},
            headers=bearer(a.admin_token),
        )
        token = (await response.get_json())["device_token"]
        at = now if name == "Parked Pete" else now - 3600
        await tracker.writer.submit(
            token, [Position.build(latitude=51.6, longitude=-0.2, timestamp=at, speed=0.0)]
        )
    await client.post(
        "/api/v1/devices",
        json={"instance_id": a.instance_id, "profile": {"full_name": "Never Seen"}},
        headers=bearer(a.admin_token),
    )
    response = await client.get(
        "/api/v1/devices",
        query_string={"instance_id": a.instance_id},
        headers=bearer(a.read_token),
    )
    page = await response.get_json()
    by_name = {item["display_name"]: item for item in page["items"]}
    assert [item["display_name"] for item in page["items"]] == sorted(by_name)
    assert by_name["Alpha Driver"]["status"] == "moving"
    assert by_name["Alpha Driver"]["last_position"]["speed"] == 8.0
    assert by_name["Alpha Driver"]["track_token"]
    assert by_name["Parked Pete"]["status"] == "stopped"
    assert by_name["Old Olga"]["status"] == "offline"
    assert by_name["Never Seen"] == {
        **by_name["Never Seen"],
        "status": "offline",
        "last_position": None,
    }

    found = await client.get(
        "/api/v1/devices",
        query_string={"instance_id": a.instance_id, "q": "OLGA", "limit": 1},
        headers=bearer(a.read_token),
    )
    found = await found.get_json()
    assert found["total"] == 1 and found["items"][0]["display_name"] == "Old Olga"
    second = await client.get(
        "/api/v1/devices",
        query_string={"instance_id": a.instance_id, "limit": 2, "offset": 2},
        headers=bearer(a.read_token),
    )
    second = await second.get_json()
    assert second["total"] == 4 and len(second["items"]) == 2
    for bad in (
        {},
        {"instance_id": a.instance_id, "limit": 0},
        {"instance_id": a.instance_id, "q": "x" * 101},
    ):
        refused = await client.get(
            "/api/v1/devices", query_string=bad, headers=bearer(a.read_token)
        )
        assert refused.status_code == 400


async def test_share_link_qr_code_is_svg_and_only_for_live_links(client, people):
    created = await client.post(
        "/api/v1/sharing/sessions",
        json={"device_token": people.a.device_token},
        headers=bearer(people.a.admin_token),
    )
    token = (await created.get_json())["share_token"]
    qr = await client.get(f"/api/v1/share/{token}/qr.svg")
    assert qr.status_code == 200
    assert qr.headers["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in await qr.get_data() and b"<script" not in await qr.get_data()
    assert (await client.get("/api/v1/share/AAAAAAAAAAAAAAAAAAAAAA/qr.svg")).status_code == 404


def test_user_commands_add_list_change_and_remove(settings, monkeypatch, capsys, tmp_path):
    import io
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRACKER_STORAGE_PATH", settings.storage.path)
    monkeypatch.setenv("TRACKER_STORAGE_URL", settings.storage.url)
    monkeypatch.setenv("TRACKER_AUTH_JWT_SECRET", settings.auth.jwt_secret)
    main(["instance", "create", "Fleet", "--json"])
    instance_id = json.loads(capsys.readouterr().out)["instance_id"]

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    main(
        [
            "user",
            "add",
            "--instance",
            instance_id,
            "--username",
            "dana",
            "--role",
            "viewer",
            "--password-stdin",
        ]
    )
    main(["user", "list", "--json"])
    listed = json.loads(capsys.readouterr().out.splitlines()[-1])["users"]
    assert [(u["username"], u["role"], u["instance_id"]) for u in listed] == [
        ("dana", "viewer", instance_id)
    ]

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    with pytest.raises(SystemExit) as refused:
        main(["user", "passwd", "--username", "dana", "--password-stdin"])
    assert refused.value.code == 2
    assert "8 to 1024 characters" in capsys.readouterr().err

    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    with pytest.raises(SystemExit) as duplicate:
        main(
            [
                "user",
                "add",
                "--instance",
                instance_id,
                "--username",
                "DANA",
                "--role",
                "admin",
                "--password-stdin",
            ]
        )
    assert duplicate.value.code == 2

    main(["user", "remove", "--username", "dana"])
    main(["user", "list", "--json"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["users"] == []
