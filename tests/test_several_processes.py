"""Two `tracker serve` processes on one database and one Redis act as one tracker live.

Both processes run on the same SQLite file (WAL lets processes of one
machine share it) with `broker.url` naming a redis-server of the test's own:
a dispatcher watching `/ws/realtime` on one process sees a position posted
through the other, and keeps seeing them after Redis restarts mid-stream,
while both processes go on acknowledging ingest.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from tests.conftest import ServerProcess

WAIT_SECONDS = 30


@dataclass
class Fleet:
    instance_id: str
    device_token: str
    ingest_key: str
    read_token: str


@dataclass
class Cluster:
    first: ServerProcess
    second: ServerProcess
    fleet: Fleet


@pytest.fixture
def cluster(tmp_path, redis_server, shared_database) -> Iterator[Cluster]:
    env = {
        **shared_database.env,
        "TRACKER_BROKER_URL": redis_server.url,
        "TRACKER_AUTH_JWT_SECRET": "s" * 48,
    }
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = ServerProcess(tmp_path / "first", env=env)
    second = ServerProcess(tmp_path / "second", env=env)
    instance_id = json.loads(first.cli("instance", "create", "Two", "--json"))["instance_id"]
    device = json.loads(first.cli("device", "add", "--instance", instance_id, "--json"))
    read_token = first.cli("token", "create", "--instance", instance_id, "--scope", "read")
    fleet = Fleet(instance_id, device["device_token"], device["ingest_key"], read_token.strip())
    try:
        first.start()  # one after the other: the first applies the migrations
        second.start()
        yield Cluster(first, second, fleet)
    finally:
        for process in (first, second):
            if process.process is not None and process.process.poll() is None:
                process.stop(signal.SIGTERM)


class Poster:
    """Posts fresh positions of the fleet's device through one process or the other."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.latitude = 40.0

    async def post(self, process: ServerProcess) -> float:
        """One new position through process; its latitude, once acknowledged."""
        self.latitude = round(self.latitude + 0.001, 6)
        fleet = self.cluster.fleet
        async with httpx.AsyncClient(base_url=process.url, timeout=10) as http:
            response = await http.post(
                f"/api/v1/devices/{fleet.device_token}/positions",
                json={"latitude": self.latitude, "longitude": 8.5, "timestamp": time.time()},
                headers={"X-Ingest-Key": fleet.ingest_key},
            )
        assert response.status_code == 201, response.text
        return self.latitude


async def watch(process: ServerProcess, fleet: Fleet, nursery: trio.Nursery) -> WebSocketConnection:
    ws = await nursery.start(_open, process.url.replace("http://", "ws://") + "/api/v1/ws/realtime")
    await ws.send_message(
        json.dumps(
            {"type": "authenticate", "jwt": fleet.read_token, "instance_id": fleet.instance_id}
        )
    )
    with trio.fail_after(WAIT_SECONDS):
        assert json.loads(await ws.get_message())["type"] == "welcome"
    return ws


async def _open(url: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with open_websocket_url(url) as ws:
        task_status.started(ws)
        await trio.sleep_forever()


async def next_latitude(ws: WebSocketConnection) -> float:
    """The latitude of the next position message (batches and events aside)."""
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == "position":
            return message["Lat"]
        if message["type"] == "positions":
            return message["positions"][-1]["Lat"]


async def post_until_seen(poster: Poster, through: ServerProcess, ws: WebSocketConnection) -> None:
    """Post through one process until the watcher sees one of these posts: a process that
    just started or reconnected subscribes to Redis a moment after it answers."""
    posted: set[float] = set()
    with trio.fail_after(WAIT_SECONDS):
        while True:
            posted.add(await poster.post(through))
            with trio.move_on_after(0.5):
                while await next_latitude(ws) not in posted:
                    pass
                return


async def test_a_watcher_on_one_process_sees_a_position_posted_through_the_other(cluster, nursery):
    ws = await watch(cluster.first, cluster.fleet, nursery)
    poster = Poster(cluster)
    await post_until_seen(poster, cluster.second, ws)
    for _ in range(3):  # and then each one, in order
        latitude = await poster.post(cluster.second)
        with trio.fail_after(WAIT_SECONDS):
            assert await next_latitude(ws) == latitude


async def test_redis_restarted_mid_stream_ingest_goes_on_and_positions_flow_again(
    cluster, redis_server, nursery
):
    ws = await watch(cluster.first, cluster.fleet, nursery)
    poster = Poster(cluster)
    await post_until_seen(poster, cluster.second, ws)

    redis_server.stop()
    for process in (cluster.second, cluster.first, cluster.second):
        await poster.post(process)  # acknowledged (201) by both while Redis is down
    latitude = await poster.post(cluster.first)
    with trio.fail_after(WAIT_SECONDS):  # a process's own watchers never needed Redis
        while await next_latitude(ws) != latitude:
            pass

    redis_server.start()
    await post_until_seen(poster, cluster.second, ws)
    latitude = await poster.post(cluster.second)
    with trio.fail_after(WAIT_SECONDS):  # after the resync's snapshot, if it comes now
        while await next_latitude(ws) != latitude:
            pass


async def test_a_share_cancelled_while_redis_is_down_ends_the_page_once_it_is_back(
    cluster, redis_server, nursery
):
    fleet = cluster.fleet
    admin = cluster.first.cli(
        "token", "create", "--instance", fleet.instance_id, "--scope", "admin"
    ).strip()
    poster = Poster(cluster)
    await poster.post(cluster.second)
    async with httpx.AsyncClient(base_url=cluster.second.url + "/api/v1", timeout=10) as http:
        response = await http.post(
            "/sharing/sessions",
            json={"device_token": fleet.device_token, "instance_id": fleet.instance_id},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert response.status_code == 201, response.text
        session = response.json()
        url = cluster.first.url.replace("http://", "ws://")
        viewer = await nursery.start(_open, f"{url}/api/v1/share/{session['share_token']}/live")
        with trio.fail_after(WAIT_SECONDS):
            assert json.loads(await viewer.get_message())["type"] == "position"

        redis_server.stop()  # the cancel's message to the viewer's process is lost
        cancelled = await http.delete(
            f"/sharing/sessions/{session['id']}", headers={"Authorization": f"Bearer {admin}"}
        )
        assert cancelled.status_code == 200
        redis_server.start()
    with trio.fail_after(WAIT_SECONDS):  # the first process resyncs: reads the session again
        while True:
            message = json.loads(await viewer.get_message())
            if message["type"] == "session_ended":
                assert message["reason"] == "cancelled"
                break


async def test_after_redis_comes_back_a_watcher_is_told_to_resync_and_gets_what_it_missed(
    cluster, redis_server, nursery
):
    ws = await watch(cluster.first, cluster.fleet, nursery)
    poster = Poster(cluster)
    await post_until_seen(poster, cluster.second, ws)

    redis_server.stop()
    for _ in range(3):  # acknowledged by the second process; the first hears nothing of them
        missed = await poster.post(cluster.second)
    redis_server.start()
    with trio.fail_after(WAIT_SECONDS):  # no new post: the resync alone brings it
        while json.loads(await ws.get_message())["type"] != "resync":
            pass
        assert await next_latitude(ws) == missed


async def test_a_geofence_drawn_through_one_process_fires_on_a_fix_posted_to_the_other(
    cluster, nursery
):
    fleet = cluster.fleet
    poster = Poster(cluster)
    await poster.post(cluster.first)  # the first process's writer has looked: no fences yet
    admin = cluster.first.cli(
        "token", "create", "--instance", fleet.instance_id, "--scope", "admin"
    ).strip()
    async with httpx.AsyncClient(base_url=cluster.second.url + "/api/v1", timeout=10) as http:
        response = await http.post(
            f"/geofences?instance_id={fleet.instance_id}",
            json={"name": "Depot", "circle": {"latitude": 45.0, "longitude": 8.5, "radius_m": 500}},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert response.status_code == 201, response.text
    ws = await nursery.start(
        _open, cluster.first.url.replace("http://", "ws://") + "/api/v1/ws/realtime"
    )
    await ws.send_message(
        json.dumps(
            {
                "type": "authenticate",
                "jwt": fleet.read_token,
                "instance_id": fleet.instance_id,
                "events": True,
            }
        )
    )
    async with httpx.AsyncClient(base_url=cluster.first.url + "/api/v1", timeout=10) as http:
        response = await http.post(
            f"/devices/{fleet.device_token}/positions",
            json={"latitude": 45.0, "longitude": 8.5, "timestamp": time.time()},
            headers={"X-Ingest-Key": fleet.ingest_key},
        )
        assert response.status_code == 201, response.text
    with trio.fail_after(WAIT_SECONDS):
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == "event":
                assert message["event"]["type"] == "geofence.entered"
                assert message["event"]["data"]["geofence_name"] == "Depot"
                break
