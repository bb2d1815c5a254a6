"""Dispatchers share a driver's trip; recipients follow it with a link, until it ends."""

import json
import logging
import re
import time

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.conftest import bearer, start_server
from tracker.expiry import sweep_once
from tracker.models import Position
from tracker.ratelimit import RateLimiter
from tracker.store import sessions as sessions_store

DESTINATION = {"latitude": 51.52, "longitude": -0.08, "label": "123 Main Street, London"}


async def create_session(http, tenant, **fields) -> dict:
    body = {"device_token": tenant.device_token, "instance_id": tenant.instance_id, **fields}
    response = await http.post("/sharing/sessions", json=body, headers=bearer(tenant.admin_token))
    assert response.status_code == 201, response.text
    return response.json()


def at(lat: float, lon: float, ts: float | None = None, speed: float | None = 10.0) -> Position:
    return Position.build(
        latitude=lat, longitude=lon, timestamp=ts or time.time(), speed=speed, heading=90.0
    )


async def receive(ws, timeout: float = 5) -> dict:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


# -- admin side ---------------------------------------------------------------


async def test_create_answers_the_contract_shape_with_links(http, fleet, settings):
    session = await create_session(
        http,
        fleet.a,
        expires_in_hours=4,
        recipient_name="Jane Doe",
        order_id="ORD-1",
        notes="Your package is on the way!",
        destination=DESTINATION,
        share_config={"show_speed": False},
    )
    token = session["share_token"]
    assert re.fullmatch(r"[0-9A-Za-z]{22}", token)
    public = settings.server.public_url
    assert session["share_url"] == f"{public}/share/{token}"
    assert session["links"] == {
        "map_url": f"{public}/share/{token}",
        "api_url": f"{public}/api/v1/share/{token}",
        "ws_url": f"{public.replace('http', 'ws')}/api/v1/share/{token}/live",
    }
    assert session["status"] == "active"
    assert session["device_token"] == fleet.a.device_token
    assert session["instance_id"] == fleet.a.instance_id
    assert session["expires_at"] - session["created_at"] == 4 * 3600
    assert session["share_config"]["show_speed"] is False
    assert session["share_config"]["show_eta"] is True
    assert session["destination"] == DESTINATION


@pytest.mark.parametrize(
    ("fields", "status", "named"),
    [
        ({"expires_in_hours": 200}, 422, "expires_in_hours"),
        ({"expires_in_hours": 0}, 422, "expires_in_hours"),
        ({"destination": {"latitude": 95, "longitude": 0}}, 422, "destination.latitude"),
        ({"share_config": {"show_speed": "yes"}}, 422, "share_config.show_speed"),
        ({"device_token": "no-such-truck"}, 404, None),
        ({"colour": "red"}, 422, "colour"),
    ],
)
async def test_create_refuses_bad_input(http, fleet, fields, status, named):
    body = {"device_token": fleet.a.device_token, **fields}
    response = await http.post("/sharing/sessions", json=body, headers=bearer(fleet.a.admin_token))
    assert response.status_code == status, response.text
    if named:
        assert named in response.json()["error"]["message"]


async def test_sessions_follow_the_isolation_rule(http, fleet):
    foreign_device = await http.post(
        "/sharing/sessions",
        json={"device_token": fleet.b.device_token},
        headers=bearer(fleet.a.admin_token),
    )
    assert foreign_device.status_code == 404
    foreign_instance = await http.get(
        "/sharing/sessions",
        params={"instance_id": fleet.b.instance_id},
        headers=bearer(fleet.a.admin_token),
    )
    assert foreign_instance.status_code == 403
    b_session = await create_session(http, fleet.b)
    for method, suffix in [("GET", ""), ("PATCH", ""), ("POST", "/complete"), ("DELETE", "")]:
        response = await http.request(
            method,
            f"/sharing/sessions/{b_session['id']}{suffix}",
            json={} if method == "PATCH" else None,
            headers=bearer(fleet.a.admin_token),
        )
        assert response.status_code == 404, (method, suffix)
    read_only = await http.post(
        "/sharing/sessions",
        json={"device_token": fleet.a.device_token},
        headers=bearer(fleet.a.read_token),
    )
    assert read_only.status_code == 403


async def test_list_filters_and_paginates(http, fleet):
    first = await create_session(http, fleet.a, order_id="ORD-1")
    second = await create_session(http, fleet.a, order_id="ORD-2")
    await http.post(
        f"/sharing/sessions/{first['id']}/complete", headers=bearer(fleet.a.admin_token)
    )

    async def listing(**params):
        response = await http.get(
            "/sharing/sessions",
            params={"instance_id": fleet.a.instance_id, **params},
            headers=bearer(fleet.a.read_token),
        )
        return response

    everything = (await listing()).json()
    assert everything["total"] == 2 and everything["limit"] == 50 and everything["offset"] == 0
    assert [s["id"] for s in (await listing(status="active")).json()["items"]] == [second["id"]]
    assert [s["id"] for s in (await listing(status="completed")).json()["items"]] == [first["id"]]
    assert [s["id"] for s in (await listing(order_id="ORD-2")).json()["items"]] == [second["id"]]
    assert (await listing(device_token=fleet.a.device_token)).json()["total"] == 2
    paged = (await listing(limit=1, offset=1)).json()
    assert paged["total"] == 2 and len(paged["items"]) == 1
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"status": "paused"}):
        assert (await listing(**bad)).status_code == 400
    no_instance = await http.get("/sharing/sessions", headers=bearer(fleet.a.read_token))
    assert no_instance.status_code == 400


async def test_update_changes_only_updatable_fields_until_the_session_ends(http, fleet):
    session = await create_session(http, fleet.a, notes="old")
    url = f"/sharing/sessions/{session['id']}"
    headers = bearer(fleet.a.admin_token)
    updated = await http.patch(
        url,
        json={"notes": "new", "destination": DESTINATION, "share_config": {"show_eta": False}},
        headers=headers,
    )
    assert updated.status_code == 200
    assert updated.json()["notes"] == "new"
    assert updated.json()["destination"] == DESTINATION
    assert updated.json()["share_config"]["show_eta"] is False
    for field in ({"device_token": "x"}, {"expires_in_hours": 9}, {"status": "active"}):
        refused = await http.patch(url, json=field, headers=headers)
        assert refused.status_code == 422
        assert next(iter(field)) in refused.json()["error"]["message"]
    assert (await http.delete(url, headers=headers)).json()["status"] == "cancelled"
    assert (await http.patch(url, json={"notes": "late"}, headers=headers)).status_code == 409


async def test_complete_and_cancel_are_one_way(http, fleet):
    headers = bearer(fleet.a.admin_token)
    done = await create_session(http, fleet.a)
    completed = await http.post(f"/sharing/sessions/{done['id']}/complete", headers=headers)
    assert completed.status_code == 200
    assert completed.json()["status"] == "completed"
    assert completed.json()["ended_at"] is not None
    assert (
        await http.post(f"/sharing/sessions/{done['id']}/complete", headers=headers)
    ).status_code == 409
    assert (
        await http.delete(f"/sharing/sessions/{done['id']}", headers=headers)
    ).status_code == 409
    dropped = await create_session(http, fleet.a)
    assert (await http.delete(f"/sharing/sessions/{dropped['id']}", headers=headers)).json()[
        "status"
    ] == "cancelled"
    got = await http.get(f"/sharing/sessions/{dropped['id']}", headers=bearer(fleet.a.read_token))
    assert got.json()["status"] == "cancelled" and got.json()["end_reason"] == "cancelled"


# -- public side ----------------------------------------------------------------


async def test_public_view_has_the_contract_shape_and_nothing_more(http, tracker, fleet, caplog):
    caplog.set_level(logging.DEBUG)
    await tracker.writer.submit(fleet.a.device_token, [at(51.50, -0.13, time.time() - 600)])
    session = await create_session(
        http,
        fleet.a,
        recipient_name="Jane Doe",
        order_id="ORD-2024-1234",
        notes="On the way",
        destination=DESTINATION,
    )
    await tracker.writer.submit(fleet.a.device_token, [at(51.5074, -0.1278)])
    response = await http.get(f"/share/{session['share_token']}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "active"
    assert body["driver"] == {
        "latitude": 51.5074,
        "longitude": -0.1278,
        "heading": 90.0,
        "speed": 10.0,
    }
    assert body["destination"] == DESTINATION
    assert body["eta_seconds"] > 0
    assert body["order_id"] == "ORD-2024-1234" and body["recipient_name"] == "Jane Doe"
    assert body["driver_display_name"] == "Alpha Driver"
    assert isinstance(body["last_updated"], int)
    assert body["trail"] == [[51.5074, -0.1278]]  # this session's positions only
    for secret in (fleet.a.device_token, fleet.a.instance_id, "full_name"):
        assert secret not in response.text
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Robots-Tag"] == "noindex"
    server_logs = [
        r.getMessage() for r in caplog.records if r.name.startswith(("tracker", "hypercorn"))
    ]
    assert not any(session["share_token"] in line for line in server_logs)


@pytest.mark.parametrize(
    ("switch", "hidden"),
    [
        ("show_speed", ("driver", "speed")),
        ("show_heading", ("driver", "heading")),
        ("show_eta", ("eta_seconds",)),
        ("show_destination_on_map", ("destination",)),
    ],
)
async def test_each_share_config_switch_hides_its_field(http, tracker, fleet, switch, hidden):
    await tracker.writer.submit(fleet.a.device_token, [at(51.5, -0.12)])
    session = await create_session(
        http, fleet.a, destination=DESTINATION, share_config={switch: False}
    )
    body = (await http.get(f"/share/{session['share_token']}")).json()
    container = body[hidden[0]] if len(hidden) == 2 else body
    assert hidden[-1] not in container
    if switch == "show_destination_on_map":
        assert "123 Main Street" not in json.dumps(body)


async def test_unknown_expired_ended_links(http, tracker, fleet):
    headers = bearer(fleet.a.admin_token)
    assert (await http.get("/share/AAAAAAAAAAAAAAAAAAAAAA")).status_code == 404
    assert (await http.get("/share/not-even-a-token")).status_code == 404
    expired = await create_session(http, fleet.a)
    await tracker.db.write(
        lambda conn: conn.execute(
            "UPDATE share_sessions SET expires_at = ? WHERE id = ?",
            (time.time() - 1, expired["id"]),
        )
    )
    response = await http.get(f"/share/{expired['share_token']}")
    assert response.status_code == 404
    assert response.headers["Cache-Control"] == "no-store"
    listed = await http.get(f"/sharing/sessions/{expired['id']}", headers=headers)
    assert listed.json()["status"] == "expired"  # even before the sweeper runs
    assert await sweep_once(tracker.db, tracker.hub) == [expired["id"]]
    stored = await tracker.db.read(sessions_store.get, expired["id"])
    assert stored.status == "expired"
    for end in ("complete", "cancel"):
        session = await create_session(http, fleet.a)
        if end == "complete":
            await http.post(f"/sharing/sessions/{session['id']}/complete", headers=headers)
        else:
            await http.delete(f"/sharing/sessions/{session['id']}", headers=headers)
        gone = await http.get(f"/share/{session['share_token']}")
        assert gone.status_code == 410
        assert gone.json()["error"]["details"]["status"] in ("completed", "cancelled")


async def test_eta_falls_as_the_vehicle_approaches_and_arrival_completes(http, tracker, fleet):
    session = await create_session(
        http, fleet.a, destination=DESTINATION, share_config={"auto_complete_on_arrival": True}
    )
    token = session["share_token"]
    start = time.time() - 100
    etas = []
    for step in range(5):
        fraction = step / 4
        lat = 51.50 + (DESTINATION["latitude"] - 51.50) * fraction
        lon = -0.12 + (DESTINATION["longitude"] + 0.12) * fraction
        await tracker.writer.submit(fleet.a.device_token, [at(lat, lon, start + step * 20)])
        response = await http.get(f"/share/{token}")
        if step < 4:
            etas.append(response.json()["eta_seconds"])
        else:
            assert response.status_code == 410
            assert response.json()["error"]["details"] == {
                "status": "completed",
                "reason": "arrived",
            }
    assert etas == sorted(etas, reverse=True) and len(set(etas)) == 4
    assert etas[-1] > 0
    got = await http.get(f"/sharing/sessions/{session['id']}", headers=bearer(fleet.a.read_token))
    assert got.json()["status"] == "completed" and got.json()["end_reason"] == "arrived"


async def test_rate_limit_answers_429_with_retry_after(nursery, settings, app, fleet):
    settings = settings.replace(sharing={"rate_limit_per_minute": 12})
    tracker = app.extensions["tracker"]
    tracker.settings = settings
    tracker.share_limiter = RateLimiter(12)
    server = await start_server(nursery, app, settings)
    async with httpx.AsyncClient(base_url=server.api) as client:
        session = await create_session(client, fleet.a)
        statuses = [
            (await client.get(f"/share/{session['share_token']}")).status_code for _ in range(13)
        ]
        assert statuses[:12] == [200] * 12
        assert statuses[12] == 429
        limited = await client.get(f"/share/{session['share_token']}")
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        tracker.share_limiter = RateLimiter(12)
        # Failed lookups cost more: two guesses spend what twelve reads would.
        guesses = [
            (await client.get("/share/AAAAAAAAAAAAAAAAAAAAAA")).status_code for _ in range(3)
        ]
        assert guesses[:2] == [404, 404] and guesses[2] == 429


# -- the live stream --------------------------------------------------------------


async def test_live_stream_sends_position_on_connect_then_updates(server, tracker, fleet, http):
    await tracker.writer.submit(fleet.a.device_token, [at(51.50, -0.12, time.time() - 10)])
    session = await create_session(http, fleet.a, destination=DESTINATION)
    async with open_websocket_url(f"{server.ws}/share/{session['share_token']}/live") as ws:
        first = await receive(ws)
        assert first["type"] == "position" and first["latitude"] == 51.50
        assert first["driver_display_name"] == "Alpha Driver"
        assert first["eta_seconds"] > 0
        await ws.send_message(json.dumps({"type": "ping"}))
        assert await receive(ws) == {"type": "pong"}
        await tracker.writer.submit(fleet.a.device_token, [at(51.51, -0.10)])
        update = await receive(ws, timeout=8)
        assert update["latitude"] == 51.51 and update["eta_seconds"] < first["eta_seconds"]


async def test_live_stream_refuses_bad_and_ended_links(server, http, fleet):
    async with open_websocket_url(f"{server.ws}/share/AAAAAAAAAAAAAAAAAAAAAA/live") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await receive(ws)
        assert closed.value.reason.code == 4001
    session = await create_session(http, fleet.a)
    await http.post(
        f"/sharing/sessions/{session['id']}/complete", headers=bearer(fleet.a.admin_token)
    )
    async with open_websocket_url(f"{server.ws}/share/{session['share_token']}/live") as ws:
        assert await receive(ws) == {"type": "session_ended", "reason": "completed"}
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.reason.code == 1000


async def test_live_stream_respects_the_push_interval(nursery, settings, app, fleet):
    settings = settings.replace(sharing={"push_interval_seconds": 0.5})
    tracker = app.extensions["tracker"]
    tracker.settings = settings
    server = await start_server(nursery, app, settings)
    async with httpx.AsyncClient(base_url=server.api) as client:
        session = await create_session(client, fleet.a)
    await tracker.writer.submit(fleet.a.device_token, [at(1.0, 1.0, time.time() - 60)])
    received = []
    async with open_websocket_url(f"{server.ws}/share/{session['share_token']}/live") as ws:

        async def receive_stamped() -> None:
            message = await receive(ws)
            received.append((trio.current_time(), message))

        await receive_stamped()

        async def drive():
            for step in range(20):  # 20 fixes in 2 s
                await tracker.writer.submit(
                    fleet.a.device_token, [at(1.0 + step / 100, 1.0, time.time() - 50 + step)]
                )
                await trio.sleep(0.1)

        async with trio.open_nursery() as inner:
            inner.start_soon(drive)
            with trio.move_on_after(2.8):
                while True:
                    await receive_stamped()
    gaps = [b[0] - a[0] for a, b in zip(received, received[1:], strict=False)]
    assert 3 <= len(received) <= 7, received
    assert all(gap >= 0.45 for gap in gaps), gaps
    assert received[-1][1]["latitude"] == pytest.approx(1.19)  # the newest one is delivered


@pytest.mark.slow
async def test_hundred_viewers_all_see_the_cancel_within_a_second(nursery, settings, app, fleet):
    # 100 viewers from one loopback address: lift the per-address limit for this test.
    settings = settings.replace(sharing={"rate_limit_per_minute": 1000})
    tracker = app.extensions["tracker"]
    tracker.settings = settings
    tracker.share_limiter = RateLimiter(1000)
    server = await start_server(nursery, app, settings)
    http = httpx.AsyncClient(base_url=server.api)
    await tracker.writer.submit(fleet.a.device_token, [at(51.5, -0.12)])
    session = await create_session(http, fleet.a)
    url = f"{server.ws}/share/{session['share_token']}/live"
    ended_at: list[float] = []
    after_end: list[dict] = []
    connected = trio.Semaphore(0)

    async def viewer():
        async with open_websocket_url(url) as ws:
            assert (await receive(ws))["type"] == "position"
            connected.release()
            while True:
                message = await receive(ws, timeout=10)
                if message["type"] == "session_ended":
                    ended_at.append(trio.current_time())
                    assert message["reason"] == "cancelled"
                    try:
                        after_end.append(await receive(ws))
                    except ConnectionClosed:
                        return

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(viewer)
        with trio.fail_after(20):
            for _ in range(100):
                await connected.acquire()
        await tracker.writer.submit(fleet.a.device_token, [at(51.51, -0.11)])
        cancelled_at = trio.current_time()
        response = await http.delete(
            f"/sharing/sessions/{session['id']}", headers=bearer(fleet.a.admin_token)
        )
        assert response.status_code == 200
    await http.aclose()
    assert len(ended_at) == 100
    assert max(ended_at) - cancelled_at < 1.0
    assert after_end == []


async def test_viewer_is_told_when_the_session_expires(server, http, tracker, fleet):
    session = await create_session(http, fleet.a)
    await tracker.db.write(
        lambda conn: conn.execute(
            "UPDATE share_sessions SET expires_at = ? WHERE id = ?",
            (time.time() + 1, session["id"]),
        )
    )
    async with open_websocket_url(f"{server.ws}/share/{session['share_token']}/live") as ws:
        assert await receive(ws, timeout=5) == {"type": "session_ended", "reason": "expired"}
