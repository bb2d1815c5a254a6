"""Another system hears every event by webhook: signed, in order, never lost, never aimed inside.

The receiver is a real HTTP server (http.server, in a thread) on a free
loopback port, so these tests turn `webhooks.allow_private_targets` on,
except the one that checks that, by default, such a target is refused.
"""

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import trio
from standardwebhooks import Webhook as Verifier

from tests.conftest import ServerProcess, bearer, free_port
from tracker.app import create_app
from tracker.events import EVENT_TYPES
from tracker.expiry import sweep_once, sweep_quiet_once
from tracker.models import Position


class Receiver:
    """A webhook receiver: records each POST (headers, body), answers `status`."""

    def __init__(self, status: int = 204):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/tracker"
        self.status = status
        self.extra_headers: dict[str, str] = {}
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append((headers, body))
                self.send_response(receiver.status)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def settings(settings):
    return settings.replace(webhooks={"allow_private_targets": True})


@pytest.fixture
def receiver():
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


async def subscribe(http, tenant, url: str, event_types=EVENT_TYPES) -> dict:
    response = await http.post(
        f"/webhooks?instance_id={tenant.instance_id}",
        json={"url": url, "event_types": list(event_types)},
        headers=bearer(tenant.admin_token),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def share(http, tenant, **fields) -> dict:
    body = {"device_token": tenant.device_token, **fields}
    response = await http.post("/sharing/sessions", json=body, headers=bearer(tenant.admin_token))
    assert response.status_code == 201, response.text
    return response.json()


async def until(condition, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.05)


def verified(webhook: dict, receiver: Receiver) -> list[dict]:
    """Every delivery, checked with the standardwebhooks library (raises if one is forged)."""
    verifier = Verifier(webhook["secret"])
    return [verifier.verify(body, headers) for headers, body in receiver.received]


async def test_every_event_type_reaches_the_receiver_once_signed(
    http, tracker, fleet, receiver, settings
):
    gap, offline_after = settings.trips.split_gap_seconds, settings.console.offline_after_seconds
    await sweep_quiet_once(tracker.db, tracker.hub, gap, offline_after)  # marks the start
    webhook = await subscribe(http, fleet.a, receiver.url)
    assert webhook["secret"].startswith("whsec_")
    headers = bearer(fleet.a.admin_token)
    fence = {"name": "Depot", "circle": {"latitude": 51.5, "longitude": -0.1, "radius_m": 200}}
    drawn = await http.post(
        f"/geofences?instance_id={fleet.a.instance_id}", json=fence, headers=headers
    )
    assert drawn.status_code == 201
    now = time.time()
    await tracker.writer.submit(
        fleet.a.device_token, [Position.build(latitude=51.5, longitude=-0.1, timestamp=now)]
    )
    updated = await share(http, fleet.a)
    await http.patch(f"/sharing/sessions/{updated['id']}", json={"notes": "x"}, headers=headers)
    await http.delete(f"/sharing/sessions/{updated['id']}", headers=headers)
    completed = await share(http, fleet.a)
    await http.post(f"/sharing/sessions/{completed['id']}/complete", headers=headers)
    await share(
        http,
        fleet.a,
        destination={"latitude": 51.6, "longitude": -0.1},
        share_config={"auto_complete_on_arrival": True},
    )
    await tracker.writer.submit(
        fleet.a.device_token, [Position.build(latitude=51.6, longitude=-0.1, timestamp=now + 5)]
    )
    overdue = await share(http, fleet.a)
    await tracker.db.write(
        lambda conn: conn.execute(
            "UPDATE share_sessions SET expires_at = ? WHERE id = ?", (now - 1, overdue["id"])
        )
    )
    await sweep_once(tracker.db, tracker.hub)
    quiet = now + 5 + max(settings.trips.split_gap_seconds, settings.console.offline_after_seconds)
    await sweep_quiet_once(
        tracker.db,
        tracker.hub,
        settings.trips.split_gap_seconds,
        settings.console.offline_after_seconds,
        quiet + 1,
    )
    expected = sorted(
        [
            "device.online",
            "trip.started",
            "geofence.entered",
            "geofence.exited",
            "share.created",
            "share.updated",
            "share.cancelled",
            "share.created",
            "share.completed",
            "share.created",
            "share.arrived",
            "share.created",
            "share.expired",
            "device.offline",
            "trip.ended",
        ]
    )
    await until(lambda: len(receiver.received) >= len(expected))
    await trio.sleep(0.5)  # nothing more comes
    delivered = verified(webhook, receiver)
    assert sorted(event["type"] for event in delivered) == expected
    assert len({event["id"] for event in delivered}) == len(delivered)
    assert {event["instance_id"] for event in delivered} == {fleet.a.instance_id}
    assert all(
        set(event) == {"type", "id", "timestamp", "instance_id", "data"} for event in delivered
    )
    assert [h["webhook-id"] for h, _ in receiver.received] == [e["id"] for e in delivered]


async def test_a_webhook_hears_only_the_types_it_asked_for_and_only_its_instance(
    http, fleet, receiver
):
    await subscribe(http, fleet.a, receiver.url, ["share.cancelled"])
    session = await share(http, fleet.a)
    await share(http, fleet.b)
    await http.delete(f"/sharing/sessions/{session['id']}", headers=bearer(fleet.a.admin_token))
    await until(lambda: len(receiver.received) >= 1)
    await trio.sleep(0.5)
    assert [event["type"] for event in receiver.events()] == ["share.cancelled"]


async def test_a_receiver_that_was_down_gets_every_event_in_order(http, fleet, receiver):
    webhook = await subscribe(http, fleet.a, receiver.url, ["share.created"])
    receiver.stop()
    for number in range(5):
        await share(http, fleet.a, order_id=f"ORD-{number}")
    log_url = f"/webhooks/{webhook['id']}/deliveries"
    headers = bearer(fleet.a.admin_token)

    async def retries() -> int:
        items = (await http.get(log_url, headers=headers)).json()["items"]
        return sum(item["outcome"] == "retrying" for item in items)

    with trio.fail_after(20):
        while await retries() < 2:
            await trio.sleep(0.1)
    receiver.start()
    await until(lambda: len(receiver.received) >= 5)
    await trio.sleep(0.5)
    orders = [event["data"]["order_id"] for event in verified(webhook, receiver)]
    assert orders == [f"ORD-{number}" for number in range(5)]
    log = (await http.get(log_url, headers=headers)).json()["items"]
    first = [item for item in log if item["event_id"] == receiver.events()[0]["id"]]
    assert [item["outcome"] for item in first][0] == "delivered"
    assert all(item["error"] for item in first[1:])  # connection refused, said so


async def test_a_4xx_is_not_retried_and_the_next_event_goes(http, fleet, receiver):
    receiver.status = 410
    webhook = await subscribe(http, fleet.a, receiver.url, ["share.created"])
    await share(http, fleet.a)
    await until(lambda: len(receiver.received) >= 1)
    receiver.status = 200
    await share(http, fleet.a)
    await until(lambda: len(receiver.received) >= 2)
    await trio.sleep(0.3)
    assert len(receiver.received) == 2
    log = (
        await http.get(f"/webhooks/{webhook['id']}/deliveries", headers=bearer(fleet.a.admin_token))
    ).json()
    assert [(i["status_code"], i["outcome"]) for i in log["items"]] == [
        (200, "delivered"),
        (410, "failed"),
    ]


async def test_a_test_event_is_signed_and_logged(http, fleet, receiver):
    webhook = await subscribe(http, fleet.a, receiver.url, ["trip.ended"])
    headers = bearer(fleet.a.admin_token)
    queued = await http.post(f"/webhooks/{webhook['id']}/test", headers=headers)
    assert queued.status_code == 202
    await until(lambda: len(receiver.received) >= 1)
    (event,) = verified(webhook, receiver)
    assert event["type"] == "webhook.test" and event["id"] == queued.json()["event_id"]
    listed = await http.get(f"/webhooks?instance_id={fleet.a.instance_id}", headers=headers)
    assert "secret" not in listed.json()["items"][0]  # shown once, at creation


async def test_private_and_odd_targets_are_refused_by_default(settings, fleet, receiver):
    strict = create_app(settings.replace(webhooks={"allow_private_targets": False}))
    # the same database: fleet's tokens and instances hold
    async with strict.test_app() as test_app:
        client = test_app.test_client()
        for url in (
            receiver.url,
            "http://localhost:9/x",
            "http://169.254.169.254/latest/meta-data",
            "http://10.1.2.3/hook",
            "http://[::1]:8080/hook",
            "ftp://example.com/x",
            "http://user:pw@example.com/x",
        ):
            response = await client.post(
                f"/api/v1/webhooks?instance_id={fleet.a.instance_id}",
                json={"url": url, "event_types": ["share.created"]},
                headers=bearer(fleet.a.admin_token),
            )
            assert response.status_code == 422, (url, await response.get_data())
            assert "url" in (await response.get_json())["error"]["message"]


async def test_an_event_committed_before_a_kill_9_is_delivered_after_restart(tmp_path, receiver):
    process = ServerProcess(
        tmp_path,
        env={"TRACKER_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true", "TRACKER_AUTH_JWT_SECRET": "k" * 48},
    )
    instance = json.loads(process.cli("instance", "create", "Kill Fleet", "--json"))["instance_id"]
    process.cli("device", "add", "--instance", instance, "--token", "van1", "--json")
    token = process.cli("token", "create", "--instance", instance, "--scope", "admin").strip()
    process.start()
    api = process.url + "/api/v1"
    try:
        async with httpx.AsyncClient(base_url=api, headers=bearer(token), timeout=10) as http:
            created = await http.post(
                f"/webhooks?instance_id={instance}",
                json={"url": receiver.url, "event_types": ["share.created"]},
            )
            webhook = created.json()
            receiver.stop()  # nothing can be delivered now
            session = await http.post("/sharing/sessions", json={"device_token": "van1"})
            assert session.status_code == 201
            process.stop(signal.SIGKILL)
            receiver.start()
            process.start()
            await until(lambda: len(receiver.received) >= 1)
            (event,) = verified(webhook, receiver)
            assert event["data"]["id"] == session.json()["id"]
    finally:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


async def test_a_429_waits_as_long_as_the_receiver_asks(http, fleet, receiver):
    receiver.status = 429
    receiver.extra_headers = {"Retry-After": "2"}
    webhook = await subscribe(http, fleet.a, receiver.url, ["share.created"])
    await share(http, fleet.a)
    await until(lambda: len(receiver.received) >= 1)
    receiver.status, receiver.extra_headers = 204, {}
    await until(lambda: len(receiver.received) >= 2)
    log = (
        await http.get(f"/webhooks/{webhook['id']}/deliveries", headers=bearer(fleet.a.admin_token))
    ).json()["items"]
    retried, first = log[0], log[1]
    assert (first["status_code"], first["outcome"]) == (429, "retrying")
    assert (retried["status_code"], retried["outcome"]) == (204, "delivered")
    assert retried["attempt"] == 2
    assert retried["attempted_at"] - first["attempted_at"] >= 1.9


async def test_a_webhook_failing_past_the_retry_window_is_disabled_with_the_reason(
    settings, fleet, receiver
):
    receiver.status = 503
    brief = create_app(
        settings.replace(webhooks={"allow_private_targets": True, "retry_hours": 0.0005})
    )  # 1.8 s
    async with brief.test_app() as test_app:
        client = test_app.test_client()
        headers = bearer(fleet.a.admin_token)
        created = await client.post(
            f"/api/v1/webhooks?instance_id={fleet.a.instance_id}",
            json={"url": receiver.url, "event_types": ["share.created"]},
            headers=headers,
        )
        webhook = await created.get_json()
        await client.post(
            "/api/v1/sharing/sessions", json={"device_token": fleet.a.device_token}, headers=headers
        )
        with trio.fail_after(20):
            while True:
                state = await (
                    await client.get(f"/api/v1/webhooks/{webhook['id']}", headers=headers)
                ).get_json()
                if not state["enabled"]:
                    break
                await trio.sleep(0.1)
        assert "HTTP 503" in state["disabled_reason"]
        attempts = len(receiver.received)
        assert attempts >= 2
        await trio.sleep(1.5)
        assert len(receiver.received) == attempts  # disabled: no more attempts
        receiver.status = 204
        resumed = await client.patch(
            f"/api/v1/webhooks/{webhook['id']}", json={"enabled": True}, headers=headers
        )
        assert (await resumed.get_json())["disabled_reason"] is None
        with trio.fail_after(10):
            while len(receiver.received) == attempts:
                await trio.sleep(0.05)
        assert receiver.events()[-1]["type"] == "share.created"  # the same event, not lost
