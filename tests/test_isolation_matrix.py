"""Instance isolation, route by route: a token of instance A never reaches instance B.

The matrix is checked against the app's route table: a new route without an
entry here (or in PUBLIC) fails the test, so nobody adds an endpoint without
deciding how it is isolated.
"""

import json
import time

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.conftest import bearer
from tracker.domain import Webhook
from tracker.models import Position
from tracker.store import devices as devices_store
from tracker.store import geofences as geofences_store
from tracker.store import sessions as sessions_store
from tracker.store import trips as trips_store
from tracker.store import webhooks as webhooks_store

PREFIX = "/api/v1"
GPX = (
    b'<gpx version="1.1" creator="a" xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>'
    b'<trkpt lat="1" lon="1"><time>2026-01-01T00:00:00Z</time></trkpt></trkseg></trk></gpx>'
)

# Routes with no JWT: their credential is something else, or nothing.
PUBLIC = {
    "GET /api/v1/openapi.json",  # the API description
    "GET /api/v1/health",
    "GET /api/v1/health/ready",
    "GET /metrics",  # off by default; metrics.token is its credential (no instance data)
    "GET /api/v1/share/<share_token>",  # the share token is the credential
    "GET /api/v1/share/<share_token>/qr.svg",
    "POST /api/v1/auth/login",  # the username and password are the credential
    "GET /ingest/osmand",  # the ingest key is the credential
    "POST /ingest/osmand",
    "GET /",  # the console page (and the OsmAnd listener)
    "POST /",
    "POST /ingest/owntracks",  # Basic auth with the ingest key
    "GET /ingest/gpslogger",  # the ingest key is the credential
    "POST /ingest/gpslogger",
    "POST /ingest/overland",  # the ingest key is Overland's access token
    "POST /ingest/ulogger/client/index.php",  # device token + ingest key, then a session cookie
    "GET /share/<share_token>",  # the share page (HTML)
    "GET /static/leaflet/<path:filename>",
    "GET /static/share.css",
    "GET /static/share.js",
    "GET /static/console.css",
    "GET /static/console.js",
    "GET /static/pages.js",
}

# How to aim each authenticated route at instance B's objects.
# {device}, {session}, {instance} are B's; every call is made with A's tokens, with and
# without `?instance_id=` of B (routes marked instance_in_query need it to name anything).
MATRIX = {
    "GET /api/v1/instances/<instance_id>": {},
    "POST /api/v1/devices": {"body": {"instance_id": "{instance}", "device_token": "stolen"}},
    "POST /api/v1/devices/<device_token>/ingest-key": {},
    "PUT /api/v1/devices/<device_token>/profile": {"body": {"full_name": "Hijacked"}},
    "PUT /api/v1/devices/<device_token>/mqtt-topic": {"body": {"mqtt_topic": "owntracks/x/y"}},
    "DELETE /api/v1/devices/<device_token>": {},
    "GET /api/v1/devices/metadata": {"instance_in_query": True},
    "GET /api/v1/devices": {"instance_in_query": True},
    "GET /api/v1/devices/<device_token>/metadata": {},
    "PATCH /api/v1/devices/<device_token>/metadata/display-field": {
        "body": {"display_field": "nickname"}
    },
    "POST /api/v1/devices/metadata/display-field/bulk": {
        "body": {"mappings": [{"device_token": "{device}", "display_field": "email"}]},
        "instance_in_query": True,
    },
    "POST /api/v1/devices/<device_token>/metadata/refresh": {},
    "POST /api/v1/devices/metadata/refresh": {
        "body": {"device_tokens": ["{device}"]},
        "instance_in_query": True,
    },
    "GET /api/v1/devices/<device_token>/position": {},
    "GET /api/v1/devices/<device_token>/tracks": {},
    "GET /api/v1/devices/<device_token>/stats": {},
    "POST /api/v1/devices/<device_token>/positions": {"body": {"latitude": 1, "longitude": 1}},
    "GET /api/v1/devices/<device_token>/trips": {},
    "GET /api/v1/devices/<device_token>/trips/<track_token>": {},
    "GET /api/v1/devices/<device_token>/trips/<track_token>/export": {},
    "GET /api/v1/devices/<device_token>/positions/export": {},
    "POST /api/v1/devices/<device_token>/positions/import": {"body": "gpx"},
    "POST /api/v1/sharing/sessions": {"body": {"device_token": "{device}"}},
    "GET /api/v1/sharing/sessions": {"instance_in_query": True},
    "GET /api/v1/sharing/sessions/<session_id>": {},
    "PATCH /api/v1/sharing/sessions/<session_id>": {"body": {"notes": "Hijacked"}},
    "POST /api/v1/sharing/sessions/<session_id>/complete": {},
    "DELETE /api/v1/sharing/sessions/<session_id>": {},
    "POST /api/v1/webhooks": {
        "body": {"url": "https://example.com/stolen", "event_types": ["share.created"]},
        "instance_in_query": True,
    },
    "GET /api/v1/webhooks": {"instance_in_query": True},
    "GET /api/v1/webhooks/<webhook_id>": {},
    "PATCH /api/v1/webhooks/<webhook_id>": {"body": {"url": "https://example.com/stolen"}},
    "DELETE /api/v1/webhooks/<webhook_id>": {},
    "GET /api/v1/webhooks/<webhook_id>/deliveries": {},
    "POST /api/v1/webhooks/<webhook_id>/test": {},
    "POST /api/v1/geofences": {
        "body": {"name": "Stolen", "circle": {"latitude": 1, "longitude": 1, "radius_m": 9}},
        "instance_in_query": True,
    },
    "GET /api/v1/geofences": {"instance_in_query": True},
    "GET /api/v1/geofences/<geofence_id>": {},
    "PATCH /api/v1/geofences/<geofence_id>": {"body": {"name": "Hijacked"}},
    "DELETE /api/v1/geofences/<geofence_id>": {},
}


def route_keys(app) -> set[str]:
    keys = set()
    for rule in app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            keys.add(f"{method} {rule.rule}")
    return keys


def fill(value, ids: dict[str, str]):
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, list):
        return [fill(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, ids) for key, item in value.items()}
    return value


def test_every_route_has_an_isolation_entry(app):
    missing = route_keys(app) - set(MATRIX) - PUBLIC
    assert not missing, f"routes without an isolation entry: {sorted(missing)}"


async def b_secrets_and_ids(tracker, fleet, http) -> tuple[dict[str, str], list[str], str]:
    await tracker.writer.submit(
        fleet.b.device_token,
        [Position.build(latitude=12.345678, longitude=65.432109, timestamp=time.time())],
    )
    created = await http.post(
        "/sharing/sessions",
        json={
            "device_token": fleet.b.device_token,
            "notes": "Bravo secret note",
            "order_id": "BRAVO-ORDER-77",
        },
        headers=bearer(fleet.b.admin_token),
    )
    session = created.json()
    trip = await tracker.db.read(trips_store.latest, fleet.b.device_token)
    webhook = Webhook(
        id="bravo-webhook-id",
        instance_id=fleet.b.instance_id,
        url="https://bravo-secret.example/hook",
        event_types=["share.created"],
        enabled=True,
        disabled_reason=None,
        secret="whsec_QnJhdm9TZWNyZXRCcmF2b1NlY3JldA==",
        description=None,
        created_at=time.time(),
        cursor=2**62,  # nothing to deliver: the host does not exist
        failing_since=None,
        next_attempt_at=None,
    )
    await tracker.db.write(webhooks_store.create, webhook)
    fence = await http.post(
        f"/geofences?instance_id={fleet.b.instance_id}",
        json={
            "name": "Bravo Secret Yard",
            "circle": {"latitude": 12.345678, "longitude": 65.432109, "radius_m": 50},
        },
        headers=bearer(fleet.b.admin_token),
    )
    ids = {
        "geofence": fence.json()["id"],
        "webhook": webhook.id,
        "device": fleet.b.device_token,
        "session": session["id"],
        "instance": fleet.b.instance_id,
        "trip": trip.track_token,
    }
    secrets = [
        "Bravo",
        "12.345678",
        "65.432109",
        "BRAVO-ORDER-77",
        fleet.b.device_token,
        session["id"],
        fleet.b.instance_id,
        trip.track_token,
        webhook.id,
        webhook.url,
        webhook.secret,
        "Bravo Secret Yard",
        ids["geofence"],
    ]
    return ids, secrets, session["share_token"]


async def test_instance_a_token_never_reaches_instance_b(http, tracker, fleet):
    ids, secrets, share_token = await b_secrets_and_ids(tracker, fleet, http)
    path_values = {
        "instance_id": ids["instance"],
        "device_token": ids["device"],
        "session_id": ids["session"],
        "track_token": ids["trip"],
        "webhook_id": ids["webhook"],
        "geofence_id": ids["geofence"],
    }
    failures = []
    for key, entry in MATRIX.items():
        method, rule = key.split(" ", 1)
        path = rule.removeprefix(PREFIX)
        for name, value in path_values.items():
            path = path.replace(f"<{name}>", value)
        body = fill(entry.get("body"), ids)
        queries = [{"instance_id": ids["instance"]}]
        if not entry.get("instance_in_query"):
            queries.append({})
        for query in queries:
            for token in (fleet.a.admin_token, fleet.a.read_token, share_token):
                if body == "gpx":  # the import takes a GPX file, not JSON
                    response = await http.request(
                        method,
                        path,
                        params=query,
                        content=GPX,
                        headers={**bearer(token), "Content-Type": "application/gpx+xml"},
                    )
                else:
                    response = await http.request(
                        method, path, params=query, json=body, headers=bearer(token)
                    )
                if response.status_code not in (401, 403, 404):
                    failures.append((key, query, response.status_code))
                leaked = [s for s in secrets if s in response.text]
                if leaked:
                    failures.append((key, query, "leaked", leaked))
    assert failures == []

    # And nothing of B's changed.
    device = await tracker.db.read(devices_store.get, fleet.b.device_token)
    assert device.profile == {"full_name": "Bravo Driver"}
    assert device.display_field == "full_name"
    session = await tracker.db.read(sessions_store.get, ids["session"])
    assert session.status == "active" and session.notes == "Bravo secret note"
    assert await tracker.db.read(devices_store.get, "stolen") is None
    webhook = await tracker.db.read(webhooks_store.get, ids["webhook"])
    assert webhook.url == "https://bravo-secret.example/hook" and webhook.enabled
    assert await tracker.db.read(webhooks_store.deliveries, ids["webhook"], 10, 0) == ([], 0)
    fence = await tracker.db.read(geofences_store.get, ids["geofence"])
    assert fence.name == "Bravo Secret Yard"
    b_still_ingests = await http.post(
        f"/devices/{fleet.b.device_token}/positions",
        json={"latitude": 2, "longitude": 2},
        headers={"X-Ingest-Key": fleet.b.ingest_key},
    )
    assert b_still_ingests.status_code == 201  # B's key was not rotated


async def test_websockets_refuse_instance_a_tokens_for_b(server, http, tracker, fleet):
    ids, secrets, share_token = await b_secrets_and_ids(tracker, fleet, http)
    for token, code in (
        (fleet.a.admin_token, 4003),
        (fleet.a.read_token, 4003),
        (share_token, 4001),
    ):
        async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
            await ws.send_message(
                json.dumps({"type": "authenticate", "jwt": token, "instance_id": ids["instance"]})
            )
            received = []
            with trio.fail_after(5):
                try:
                    while True:
                        received.append(await ws.get_message())
                except ConnectionClosed as closed:
                    assert closed.reason.code == code
            assert not any(s in m for m in received for s in secrets)
    # A's token on a share stream is no key to B's share: the path needs B's share token.
    async with open_websocket_url(f"{server.ws}/share/{fleet.a.admin_token[:22]}/live") as ws:
        with trio.fail_after(5):
            try:
                while True:
                    await ws.get_message()
            except ConnectionClosed as closed:
                assert closed.reason.code == 4001
