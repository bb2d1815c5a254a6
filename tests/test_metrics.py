"""An operator scrapes /metrics and sees the counters move with traffic.

Every test runs the real server and reads /metrics with prometheus_client's
own parser, as Prometheus would: ingest in each wire format, a dispatcher's
WebSocket, a share link and its rate limit, the connection cap.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from tests.conftest import bearer, start_server
from tracker.app import create_app

METRICS_TOKEN = "scrape-" + "x" * 24


@pytest.fixture
def settings(settings):
    return settings.replace(
        metrics={"enabled": True, "token": METRICS_TOKEN},
        sharing={"rate_limit_per_minute": 3},
    )


@pytest.fixture
async def root(server):
    """A client at the server's root, where /metrics is (not under the API prefix)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def scrape(root: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics as {(name, labels): value}, read by Prometheus' parser."""
    response = await root.get("/metrics", headers=bearer(METRICS_TOKEN))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_ingest_in_every_format_moves_the_counters(server, root, http, fleet):
    before = await scrape(root)
    now = time.time()
    native = await http.post(
        f"/devices/{fleet.a.device_token}/positions",
        json={
            "positions": [
                {"latitude": 51.5, "longitude": -0.1, "timestamp": now - 3 + i} for i in range(3)
            ]
        },
        headers={"X-Ingest-Key": fleet.a.ingest_key},
    )
    assert native.status_code == 201
    wrong_key = await http.post(
        f"/devices/{fleet.a.device_token}/positions",
        json={"latitude": 51.5, "longitude": -0.1},
        headers={"X-Ingest-Key": "not-the-key"},
    )
    assert wrong_key.status_code == 401
    osmand = await root.post(
        "/ingest/osmand", params={"id": fleet.b.ingest_key, "lat": 48.85, "lon": 2.35}
    )
    assert osmand.status_code == 200
    owntracks = await root.post(
        "/ingest/owntracks",
        json={"_type": "location", "lat": 52.52, "lon": 13.4, "tst": int(now)},
        auth=(fleet.a.device_token, fleet.a.ingest_key),
    )
    assert owntracks.status_code == 200

    after = await scrape(root)
    moved = {
        labels: value(after, "tracker_ingest_requests_total", format=labels[0], status=labels[1])
        - value(before, "tracker_ingest_requests_total", format=labels[0], status=labels[1])
        for labels in [
            ("native", "201"),
            ("native", "401"),
            ("osmand", "200"),
            ("owntracks", "200"),
        ]
    }
    assert moved == {
        ("native", "201"): 1,
        ("native", "401"): 1,
        ("osmand", "200"): 1,
        ("owntracks", "200"): 1,
    }
    committed = value(after, "tracker_positions_committed_total") - value(
        before, "tracker_positions_committed_total"
    )
    assert committed == 5  # 3 native + 1 OsmAnd + 1 OwnTracks
    commits = value(after, "tracker_commit_seconds_count") - value(
        before, "tracker_commit_seconds_count"
    )
    assert 1 <= commits <= 3  # three stored requests, some of which may share a commit
    batched = value(after, "tracker_commit_batch_positions_sum") - value(
        before, "tracker_commit_batch_positions_sum"
    )
    assert batched == 5
    # The newest position was taken a moment ago (fixes dated in the future are left out).
    assert 0 <= value(after, "tracker_newest_position_age_seconds") < 3600


async def test_websockets_and_share_sessions_show_while_open(server, root, http, fleet):
    before = await scrape(root)
    assert value(before, "tracker_websocket_connections", endpoint="realtime") == 0
    async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
        await ws.send_message(
            json.dumps(
                {
                    "type": "authenticate",
                    "jwt": fleet.a.read_token,
                    "instance_id": fleet.a.instance_id,
                }
            )
        )
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["type"] == "welcome"
        posted = await http.post(
            f"/devices/{fleet.a.device_token}/positions",
            json={"latitude": 51.5, "longitude": -0.1},
            headers={"X-Ingest-Key": fleet.a.ingest_key},
        )
        assert posted.status_code == 201
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["type"] == "position"
        session = await http.post(
            "/sharing/sessions",
            json={"device_token": fleet.a.device_token, "instance_id": fleet.a.instance_id},
            headers=bearer(fleet.a.admin_token),
        )
        assert session.status_code == 201
        during = await scrape(root)
    assert value(during, "tracker_websocket_connections", endpoint="realtime") == 1
    sent = value(during, "tracker_websocket_messages_sent_total", endpoint="realtime")
    assert sent - value(before, "tracker_websocket_messages_sent_total", endpoint="realtime") >= 2
    assert value(during, "tracker_share_sessions_active") == 1

    with trio.fail_after(5):  # the server notices the close on its own time
        while value(await scrape(root), "tracker_websocket_connections", endpoint="realtime"):
            await trio.sleep(0.05)


async def test_share_rate_limit_refusals_are_counted(server, root, http, fleet):
    before = await scrape(root)
    statuses = [(await http.get("/share/not-a-real-token")).status_code for _ in range(4)]
    assert 429 in statuses  # a failed lookup costs several requests' worth
    refused = statuses.count(429)
    after = await scrape(root)
    assert (
        value(after, "tracker_requests_refused_total", reason="rate_limit")
        - value(before, "tracker_requests_refused_total", reason="rate_limit")
        == refused
    )


async def test_connection_cap_refusals_are_counted(nursery, settings):
    settings = settings.replace(server={"max_connections_per_address": 1})
    server = await start_server(nursery, create_app(settings), settings)
    async with (
        open_websocket_url(f"{server.ws}/ws/realtime"),
        httpx.AsyncClient(base_url=server.url, timeout=10) as root,
    ):
        refused = await root.get("/metrics", headers=bearer(METRICS_TOKEN))
        assert refused.status_code == 429
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as root:
        with trio.fail_after(5):  # the WebSocket's slot frees once the server sees it close
            while (
                response := await root.get("/metrics", headers=bearer(METRICS_TOKEN))
            ).status_code == 429:
                await trio.sleep(0.05)
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
    assert value(samples, "tracker_requests_refused_total", reason="connection_cap") >= 1


async def test_metrics_need_the_token_when_one_is_set(root):
    missing = await root.get("/metrics")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = await root.get("/metrics", headers=bearer("scrape-wrong"))
    assert wrong.status_code == 401
    assert (await root.get("/metrics", headers=bearer(METRICS_TOKEN))).status_code == 200


async def test_metrics_are_off_by_default(nursery, settings):
    settings = settings.replace(metrics={"enabled": False, "token": ""})
    server = await start_server(nursery, create_app(settings), settings)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as root:
        response = await root.get("/metrics")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_without_a_token_anyone_on_the_network_may_scrape(nursery, settings):
    settings = settings.replace(metrics={"enabled": True, "token": ""})
    server = await start_server(nursery, create_app(settings), settings)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as root:
        response = await root.get("/metrics")
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"tracker_ingest_requests", "tracker_websocket_connections"} <= names


async def test_two_apps_count_apart(settings, tmp_path):
    first = create_app(settings)
    second = create_app(settings.replace(storage={"path": str(tmp_path / "second.db")}))
    first.extensions["tracker"].metrics.ingest_answered("native", 201)
    text = second.extensions["tracker"].metrics.exposition().decode()
    assert 'tracker_ingest_requests_total{format="native"' not in text
