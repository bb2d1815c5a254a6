"""OwnTracks over MQTT: a phone publishes to a real mosquitto broker, tracker stores what it reads.

Each test starts Debian's mosquitto as a child process on a free loopback port
(its own config in a temp dir, stopped by PID), the real server with
`ingest.mqtt_url` pointing at it, and publishes the messages the OwnTracks app
publishes (its JSON location message: `_type`, `lat`, `lon`, `tst`, `acc`,
`alt`, `vel` in km/h, `cog`, `batt`, `tid`, `t`, `conn`, ...) with
`mosquitto_pub -q 1`, as the app does (QoS 1). Positions are read back over
the REST API; what tracker did with each message is read from its metrics.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import ServerProcess, bearer, free_port, start_server
from tracker.app import create_app
from tracker.config import ConfigError, MqttBroker, load_settings
from tracker.errors import StorageUnavailable
from tracker.store import devices, instances

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PUB = "/usr/bin/mosquitto_pub"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
WAIT_SECONDS = 15
TOPIC = "owntracks/alice/phone"
NOW = int(time.time())


def require_mosquitto() -> None:
    """Fail in CI when the broker is missing, skip elsewhere."""
    for binary in (MOSQUITTO, MOSQUITTO_PUB, MOSQUITTO_PASSWD):
        if not Path(binary).exists():
            message = (
                f"needs {binary} (Debian's mosquitto and mosquitto-clients; .ci/run installs them)"
            )
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)


class Mosquitto:
    """A mosquitto broker of the test's own, on a loopback port that survives a restart."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr"]
        # Run as the test's own user: mosquitto started as root drops to `mosquitto`, who
        # cannot read the password file in pytest's private temp dir.
        lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        if users:
            passwords = workdir / "passwords"
            for number, (user, password) in enumerate(users.items()):
                create = ["-c"] if number == 0 else []
                subprocess.run(
                    [MOSQUITTO_PASSWD, *create, "-b", str(passwords), user, password], check=True
                )
            passwords.chmod(0o644)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.workdir / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def publish(
        self, topic: str, *messages: dict | str, retain: bool = False, auth: tuple = ()
    ) -> None:
        """Publish with QoS 1, as the OwnTracks app does; several messages in one session."""
        lines = [m if isinstance(m, str) else json.dumps(m) for m in messages]
        assert all("\n" not in line for line in lines)
        command = [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-t", topic]
        command += ["-r"] if retain else []
        if auth:
            command += ["-u", auth[0], "-P", auth[1]]
        with trio.fail_after(WAIT_SECONDS):
            if len(lines) == 1:
                await trio.run_process([*command, "-m", lines[0]])
            else:
                await trio.run_process([*command, "-l"], stdin="\n".join(lines).encode() + b"\n")


@pytest.fixture
def broker(tmp_path):
    require_mosquitto()
    (tmp_path / "broker").mkdir()
    mosquitto = Mosquitto(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def settings(settings, broker):
    return settings.replace(ingest={"mqtt_url": broker.url})


@pytest.fixture
def phone(tracker):
    """A device registered with its OwnTracks topic, and an admin token for its instance."""
    instance = tracker.db.write_sync(instances.create, "Couriers")
    device, _ = tracker.db.write_sync(
        devices.create, instance.id, "alice-phone", {"full_name": "Alice"}, "full_name", TOPIC
    )
    token = tracker.verifier.mint(
        subject="dispatcher", instances=[instance.id], scope="admin", ttl_seconds=3600
    )
    return device.token, bearer(token)


def counted(tracker, result: str) -> float:
    value = tracker.metrics.registry.get_sample_value(
        "tracker_mqtt_messages_total", {"result": result}
    )
    return value or 0.0


async def until(condition, what: str) -> None:
    with trio.fail_after(WAIT_SECONDS):
        while not condition():
            await trio.sleep(0.02)


async def subscribed(tracker) -> None:
    await until(
        lambda: tracker.metrics.registry.get_sample_value("tracker_mqtt_subscribed") == 1,
        "tracker subscribed",
    )


async def handled(tracker, **results: int) -> None:
    """Wait until tracker has counted (at least) these many messages per result."""
    await until(lambda: all(counted(tracker, r) >= n for r, n in results.items()), str(results))


@pytest.fixture
async def live(nursery, app, settings, tracker, phone):
    """The real server, subscribed on the broker; an HTTP client for the API."""
    server = await start_server(nursery, app, settings)
    await subscribed(tracker)
    async with httpx.AsyncClient(base_url=server.api, timeout=10, headers=phone[1]) as http:
        yield http


def ios_location(tst: float, **changes) -> dict:
    """A location as OwnTracks for iOS publishes it (-1: no value)."""
    message = {
        "_type": "location",
        "acc": 5,
        "alt": 21,
        "batt": 87,
        "bs": 1,
        "cog": 270,
        "conn": "m",
        "created_at": tst + 2,
        "lat": 51.5074,
        "lon": -0.1278,
        "m": 2,
        "t": "u",
        "tid": "AP",
        "topic": TOPIC,
        "tst": tst,
        "vac": 3,
        "vel": 36,
    }
    return {**message, **changes}


def android_location(tst: float, **changes) -> dict:
    """A location as OwnTracks for Android publishes it (no cog; BSSID/SSID on Wi-Fi)."""
    message = {
        "_type": "location",
        "BSSID": "aa:bb:cc:dd:ee:ff",
        "SSID": "depot",
        "acc": 12,
        "alt": 48,
        "batt": 76,
        "bs": 1,
        "conn": "w",
        "created_at": tst,
        "lat": 51.5081,
        "lon": -0.1260,
        "m": 1,
        "t": "p",
        "tid": "ph",
        "tst": tst,
        "vac": 4,
        "vel": 0,
    }
    return {**message, **changes}


# -- a phone's positions arrive, with the right units -------------------------------------


async def test_a_location_published_over_mqtt_is_the_devices_position_in_metres_per_second(
    live, broker, tracker, phone
):
    await broker.publish(TOPIC, ios_location(NOW - 5), retain=True)
    await handled(tracker, stored=1)

    position = (await live.get(f"/devices/{phone[0]}/position?date_format=unix")).json()
    assert (position["latitude"], position["longitude"]) == (51.5074, -0.1278)
    assert position["timestamp"] == NOW - 5  # tst, not created_at
    assert position["speed"] == pytest.approx(10.0)  # 36 km/h
    assert (position["heading"], position["accuracy"], position["altitude"]) == (270, 5, 21)
    assert position["battery"] == 87
    assert position["attributes"]["tid"] == "AP" and position["attributes"]["conn"] == "m"
    tracks = (await live.get(f"/devices/{phone[0]}/tracks")).json()
    assert [w["speed"] for w in tracks["waypoints"]] == [pytest.approx(10.0)]


async def test_missing_optional_fields_and_ios_minus_one_are_stored_as_unknown(
    live, broker, tracker, phone
):
    await broker.publish(
        TOPIC, {"_type": "location", "lat": 48.8584, "lon": 2.2945, "tst": NOW - 60}
    )
    await broker.publish(TOPIC, ios_location(NOW - 30, vel=-1, cog=-1, batt=-1))
    await handled(tracker, stored=2)

    tracks = (await live.get(f"/devices/{phone[0]}/tracks?date_format=unix")).json()
    first, second = tracks["waypoints"]
    assert first["speed"] is None and first["heading"] is None and first["battery"] is None
    assert (second["speed"], second["heading"], second["battery"]) == (None, None, None)
    assert second["accuracy"] == 5


async def test_a_backlog_batch_joins_the_trip_without_moving_the_live_position(
    live, broker, tracker, phone
):
    await broker.publish(TOPIC, android_location(NOW - 10, vel=18))
    await handled(tracker, stored=1)
    # Back in coverage, the app publishes what it queued, oldest first, in one session.
    backlog = [android_location(NOW - 10 - 20 * n, lat=51.5 + n / 1000) for n in range(10, 0, -1)]
    await broker.publish(TOPIC, *backlog)
    await handled(tracker, stored=11)

    position = (await live.get(f"/devices/{phone[0]}/position?date_format=unix")).json()
    assert position["timestamp"] == NOW - 10 and position["speed"] == pytest.approx(5.0)
    tracks = (await live.get(f"/devices/{phone[0]}/tracks?date_format=unix")).json()
    stamps = [w["timestamp"] for w in tracks["waypoints"]]
    assert stamps == sorted(stamps) and len(stamps) == 11


async def test_a_resent_location_is_stored_once(live, broker, tracker, phone):
    message = ios_location(NOW - 20)
    await broker.publish(TOPIC, message)
    await broker.publish(TOPIC, message)  # no PUBACK seen by the app: it sends again
    await handled(tracker, stored=1, duplicate=1)

    tracks = (await live.get(f"/devices/{phone[0]}/tracks")).json()
    assert tracks["count"] == 1


async def test_malformed_messages_store_nothing_and_are_counted(live, broker, tracker, phone):
    await broker.publish(
        TOPIC,
        '{"_type": "location", "lat": 51.5, "lon": ',  # cut short
        "[1, 2, 3]",
        json.dumps(ios_location(NOW, lat=95)),  # out of range
        json.dumps({**ios_location(NOW), "tst": "yesterday"}),
        '{"_type": "location", "lat": NaN, "lon": 0, "tst": 1}',
    )
    await handled(tracker, malformed=5)

    response = await live.get(f"/devices/{phone[0]}/position")
    assert response.status_code == 404  # nothing stored
    assert counted(tracker, "stored") == 0


async def test_only_locations_are_stored_other_owntracks_messages_are_counted(
    live, broker, tracker, phone
):
    await broker.publish(
        TOPIC,
        {"_type": "lwt", "tst": NOW - 100},  # the app's last will, on the same topic
        {"_type": "encrypted", "data": "bm90IHJlYWRhYmxl"},
        {"_type": "location", "tst": NOW - 50, "t": "p"},  # no coordinates
        "",  # a retained message cleared
        ios_location(NOW - 10),
    )
    await handled(tracker, ignored=3, encrypted=1, stored=1)

    tracks = (await live.get(f"/devices/{phone[0]}/tracks")).json()
    assert tracks["count"] == 1


async def test_unknown_topics_are_ignored_and_counted_until_a_device_is_given_the_topic(
    live, broker, tracker, phone
):
    stranger = "owntracks/bob/tablet"
    await broker.publish(stranger, ios_location(NOW - 40))
    await handled(tracker, unknown_topic=1)

    instance_id = tracker.db.read_sync(devices.get, phone[0]).instance_id
    created = await live.post(
        "/devices",
        json={"instance_id": instance_id, "device_token": "bob-tablet", "mqtt_topic": stranger},
    )
    assert created.status_code == 201, created.text
    assert created.json()["mqtt_topic"] == stranger
    await broker.publish(stranger, ios_location(NOW - 30))
    await handled(tracker, stored=1)

    assert (await live.get("/devices/bob-tablet/tracks")).json()["count"] == 1
    assert (await live.get(f"/devices/{phone[0]}/position")).status_code == 404


# -- the broker goes away, tracker goes away ------------------------------------------------


async def test_tracker_reconnects_when_the_broker_restarts(live, broker, tracker, phone, caplog):
    await broker.publish(TOPIC, ios_location(NOW - 30))
    await handled(tracker, stored=1)

    caplog.set_level(logging.INFO, logger="tracker.ingest.mqtt")
    broker.stop()
    await until(
        lambda: tracker.metrics.registry.get_sample_value("tracker_mqtt_subscribed") == 0, "lost"
    )
    await trio.sleep(1.5)  # a reconnect attempt or two fails while the broker is down
    broker.start()  # a new broker (no persistence) on the same port
    await subscribed(tracker)
    await broker.publish(TOPIC, ios_location(NOW - 10))
    await handled(tracker, stored=2)

    assert (await live.get(f"/devices/{phone[0]}/tracks")).json()["count"] == 2
    mine = [r for r in caplog.records if r.name == "tracker.ingest.mqtt"]
    assert not any(r.exc_info for r in mine) and all(r.levelno < logging.ERROR for r in mine)
    lost = [r for r in mine if "lost the MQTT broker" in r.getMessage()]
    assert len(lost) == 1  # one line for the state change, not one per retry


async def test_messages_published_while_tracker_is_stopped_arrive_when_it_starts_again(
    app, settings, broker, tracker, phone
):
    """The session is persistent: the broker keeps QoS 1 messages for tracker while it is down."""
    async with trio.open_nursery() as nursery:
        await start_server(nursery, app, settings)
        await subscribed(tracker)
        nursery.cancel_scope.cancel()

    await broker.publish(TOPIC, ios_location(NOW - 30), ios_location(NOW - 20))

    again = create_app(settings)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, again, settings)
        await handled(again.extensions["tracker"], stored=2)
        async with httpx.AsyncClient(base_url=server.api, headers=phone[1]) as http:
            tracks = (await http.get(f"/devices/{phone[0]}/tracks")).json()
        assert tracks["count"] == 2
        nursery.cancel_scope.cancel()


async def test_a_message_is_acknowledged_only_after_it_is_committed(
    app, settings, broker, tracker, phone, monkeypatch
):
    """While the database cannot store, the message stays unacknowledged: a tracker stopped
    then finds it redelivered by the broker, and stores it."""

    async def storage_down(device_token, positions):
        raise StorageUnavailable("disk full")

    monkeypatch.setattr(tracker.writer, "submit", storage_down)
    async with trio.open_nursery() as nursery:
        await start_server(nursery, app, settings)
        await subscribed(tracker)
        await broker.publish(TOPIC, ios_location(NOW - 30))
        await handled(tracker, failed=1)
        nursery.cancel_scope.cancel()

    again = create_app(settings)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, again, settings)
        await handled(again.extensions["tracker"], stored=1)
        async with httpx.AsyncClient(base_url=server.api, headers=phone[1]) as http:
            position = (await http.get(f"/devices/{phone[0]}/position?date_format=unix")).json()
        assert position["timestamp"] == NOW - 30
        nursery.cancel_scope.cancel()


async def test_storing_is_tried_again_when_the_database_comes_back(
    live, broker, tracker, phone, monkeypatch
):
    submit = tracker.writer.submit
    failures = []

    async def down_once(device_token, positions):
        if not failures:
            failures.append(device_token)
            raise StorageUnavailable("disk full")
        return await submit(device_token, positions)

    monkeypatch.setattr(tracker.writer, "submit", down_once)
    await broker.publish(TOPIC, ios_location(NOW - 30))
    await handled(tracker, failed=1, stored=1)

    assert (await live.get(f"/devices/{phone[0]}/tracks")).json()["count"] == 1


async def test_a_topic_lookup_that_fails_is_tried_again(live, broker, tracker, phone, monkeypatch):
    read = tracker.db.read
    failures = []

    async def unreadable_once(fn, *args):
        if fn is devices.by_mqtt_topic and not failures:
            failures.append(args)
            raise StorageUnavailable("I/O error")
        return await read(fn, *args)

    monkeypatch.setattr(tracker.db, "read", unreadable_once)
    await broker.publish(TOPIC, ios_location(NOW - 30))
    await handled(tracker, stored=1)
    assert failures == [(TOPIC,)]


# -- the broker's address and credentials -------------------------------------------------


@pytest.fixture
def guarded_broker(tmp_path):
    require_mosquitto()
    (tmp_path / "guarded").mkdir()
    mosquitto = Mosquitto(tmp_path / "guarded", users={"tracker": "s3cret:pass", "alice": "pw"})
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


async def test_tracker_logs_in_to_the_broker_with_the_urls_user_and_password(
    guarded_broker, settings, phone, tracker, caplog
):
    caplog.set_level(logging.INFO)
    url = f"mqtt://tracker:s3cret%3Apass@127.0.0.1:{guarded_broker.port}"
    app = create_app(settings.replace(ingest={"mqtt_url": url}))
    mine = app.extensions["tracker"]
    async with trio.open_nursery() as nursery:
        await start_server(nursery, app, settings)
        await subscribed(mine)
        await guarded_broker.publish(TOPIC, ios_location(NOW - 5), auth=("alice", "pw"))
        await handled(mine, stored=1)
        nursery.cancel_scope.cancel()
    assert "s3cret" not in caplog.text
    assert f"connected to the MQTT broker at 127.0.0.1:{guarded_broker.port}" in caplog.text


async def test_a_wrong_password_is_one_warning_not_a_traceback_and_the_server_still_serves(
    guarded_broker, settings, caplog
):
    caplog.set_level(logging.INFO)
    url = f"mqtt://tracker:wrong-password@127.0.0.1:{guarded_broker.port}"
    settings = settings.replace(ingest={"mqtt_url": url})
    app = create_app(settings)
    broker_log = guarded_broker.workdir / "mosquitto.log"
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, app, settings)
        async with httpx.AsyncClient(base_url=server.api) as http:
            assert (await http.get("/health")).status_code == 200
        # Let tracker try (and be refused) three times: one line says so, not three.
        await until(lambda: broker_log.read_text().count("not authorised") >= 3, "3 refusals")
        nursery.cancel_scope.cancel()
    mine = [r for r in caplog.records if r.name == "tracker.ingest.mqtt"]
    refused = [r for r in mine if "refused tracker" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    assert "Not authorized" in refused[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert "wrong-password" not in caplog.text


async def test_a_broker_that_is_down_at_start_is_retried_until_it_comes_up(
    tmp_path, settings, phone, caplog
):
    require_mosquitto()
    later = Mosquitto(tmp_path)  # its port is chosen, nothing listens there yet
    settings = settings.replace(ingest={"mqtt_url": later.url})
    app = create_app(settings)
    mine = app.extensions["tracker"]
    caplog.set_level(logging.INFO)
    try:
        async with trio.open_nursery() as nursery:
            await start_server(nursery, app, settings)
            await until(lambda: "cannot reach the MQTT broker" in caplog.text, "a warning")
            later.start()
            await subscribed(mine)
            await later.publish(TOPIC, ios_location(NOW - 5))
            await handled(mine, stored=1)
            nursery.cancel_scope.cancel()
    finally:
        later.stop()
    assert caplog.text.count("cannot reach the MQTT broker") == 1
    assert not any(r.exc_info for r in caplog.records)


def test_the_brokers_password_is_never_shown_in_a_configuration_error():
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={"TRACKER_INGEST_MQTT_URL": "mqtt://me:hunter2@broker:1883/path"})
    assert "hunter2" not in str(refused.value) and "ingest.mqtt_url" in str(refused.value)
    for url in ("http://broker", "mqtt://", "mqtt://broker:99999"):
        with pytest.raises(ConfigError):
            load_settings(environ={"TRACKER_INGEST_MQTT_URL": url})
    broker = load_settings(environ={"TRACKER_INGEST_MQTT_URL": "mqtts://a%40b:p@broker"})
    assert broker.ingest.mqtt_broker == MqttBroker("broker", 8883, True, "a@b", "p")


# -- giving a device its topic ---------------------------------------------------------------


async def test_an_admin_gives_changes_and_clears_a_devices_mqtt_topic(client, fleet, tracker):
    admin_a, admin_b = bearer(fleet.a.admin_token), bearer(fleet.b.admin_token)
    path = f"/api/v1/devices/{fleet.a.device_token}/mqtt-topic"

    given = await client.put(path, json={"mqtt_topic": "owntracks/ann/car"}, headers=admin_a)
    assert given.status_code == 200
    assert await given.get_json() == {
        "device_token": fleet.a.device_token,
        "mqtt_topic": "owntracks/ann/car",
    }
    assert tracker.db.read_sync(devices.by_mqtt_topic, "owntracks/ann/car").token == (
        fleet.a.device_token
    )

    for wrong in ("owntracks/+/car", "owntracks/ann/#", "/owntracks/ann", "owntracks//car", ""):
        response = await client.put(path, json={"mqtt_topic": wrong}, headers=admin_a)
        assert response.status_code == 422, wrong
    outside = await client.put(path, json={"mqtt_topic": "fleet/ann/car"}, headers=admin_a)
    assert outside.status_code == 422
    assert "owntracks/+/+" in (await outside.get_json())["error"]["message"]

    other = f"/api/v1/devices/{fleet.b.device_token}/mqtt-topic"
    taken = await client.put(other, json={"mqtt_topic": "owntracks/ann/car"}, headers=admin_b)
    assert taken.status_code == 409
    not_yours = await client.put(other, json={"mqtt_topic": "owntracks/x/y"}, headers=admin_a)
    assert not_yours.status_code == 404

    cleared = await client.put(path, json={"mqtt_topic": None}, headers=admin_a)
    assert (await cleared.get_json())["mqtt_topic"] is None
    assert tracker.db.read_sync(devices.by_mqtt_topic, "owntracks/ann/car") is None


def test_tracker_device_add_takes_the_mqtt_topic(tmp_path):
    process = ServerProcess(tmp_path)
    instance_id = json.loads(process.cli("instance", "create", "Couriers", "--json"))["instance_id"]
    added = json.loads(
        process.cli("device", "add", "--instance", instance_id, "--mqtt-topic", TOPIC, "--json")
    )
    assert added["mqtt_topic"] == TOPIC

    for topic, says in ((TOPIC, "already has"), ("owntracks/#", "wildcards")):
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "tracker",
                "device",
                "add",
                "--instance",
                instance_id,
                "--mqtt-topic",
                topic,
            ],
            cwd=tmp_path,
            env=process.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and says in refused.stderr
        assert refused.stderr.count("\n") == 1  # one line, no traceback


# -- stopping --------------------------------------------------------------------------------


@pytest.mark.slow
def test_tracker_serve_with_mqtt_stops_at_once_and_cleanly(tmp_path, broker):
    (tmp_path / "server").mkdir()
    process = ServerProcess(
        tmp_path / "server",
        env={"TRACKER_AUTH_JWT_SECRET": "s" * 48, "TRACKER_INGEST_MQTT_URL": broker.url},
    )
    process.start()
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        log = process.workdir / "server.log"
        while "subscribed to owntracks/+/+" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert process.stop(signal.SIGTERM) == 0
    finally:
        if process.process.poll() is None:
            process.process.kill()
    text = log.read_text()
    assert " ERROR " not in text and "Traceback" not in text, text
