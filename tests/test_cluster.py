"""Three `tracker serve` processes behind a real nginx act as one tracker.

The processes share one SQLite file and a redis-server of the test's own
(`broker.url`); Debian's nginx runs deploy/nginx.conf with the three in its
upstream blocks, as docs/deployment.md says to. Clients go through nginx as
users would, and some requests go straight to one process to be sure which
one served them. Without nginx or redis-server these tests fail in CI and
are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.conftest import ServerProcess, SharedDatabase, bearer, free_port
from tests.test_proxy import NGINX_MAIN_CONF, Proxy, find_binary, nginx_in_front

WAIT_SECONDS = 30
PROCESSES = 3


@dataclass
class Tenant:
    instance_id: str
    device_token: str
    ingest_key: str
    read_token: str
    admin_token: str


@dataclass
class Cluster:
    processes: list[ServerProcess]
    proxy: Proxy
    tenant: Tenant
    database: SharedDatabase

    def stored_timestamps(self) -> set[float]:
        rows = self.database.rows(
            "SELECT ts FROM positions WHERE device_token = ?", (self.tenant.device_token,)
        )
        return {row[0] for row in rows}


@pytest.fixture
async def cluster(tmp_path, redis_server, shared_database):
    env = {
        **shared_database.env,
        "TRACKER_BROKER_URL": redis_server.url,
        "TRACKER_AUTH_JWT_SECRET": "s" * 48,
        "TRACKER_SERVER_TRUSTED_PROXIES": '["127.0.0.1"]',
        "TRACKER_SHARING_PUSH_INTERVAL_SECONDS": "0",
        "TRACKER_SHARING_EXPIRY_SWEEP_SECONDS": "1",
    }
    processes = []
    for number in range(PROCESSES):
        workdir = tmp_path / f"process-{number + 1}"
        workdir.mkdir()
        osmand_port = free_port()
        process = ServerProcess(
            workdir, env={**env, "TRACKER_INGEST_OSMAND_PORT": str(osmand_port)}
        )
        process.osmand_port = osmand_port
        processes.append(process)
    first = processes[0]
    instance_id = json.loads(first.cli("instance", "create", "Three", "--json"))["instance_id"]
    device = json.loads(first.cli("device", "add", "--instance", instance_id, "--json"))
    tokens = [
        first.cli("token", "create", "--instance", instance_id, "--scope", scope).strip()
        for scope in ("read", "admin")
    ]
    tenant = Tenant(instance_id, device["device_token"], device["ingest_key"], *tokens)
    try:
        for process in processes:  # one after the other: the first applies the migrations
            process.start()
        async with nginx_in_front(
            tmp_path / "nginx", [p.port for p in processes], [p.osmand_port for p in processes]
        ) as proxy:
            yield Cluster(processes, proxy, tenant, shared_database)
    finally:
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                process.stop(signal.SIGTERM)


@dataclass
class Worker:
    """One of `serve --workers`' processes, known by its URL alone."""

    url: str


class Poster:
    """Posts fresh positions of the tenant's device; remembers the acknowledged ones."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.latitude = 40.0
        self.acknowledged: dict[float, float] = {}  # timestamp -> latitude

    async def post(self, http: httpx.AsyncClient) -> float | None:
        """One new position; its latitude once acknowledged (201), else None."""
        self.latitude = round(self.latitude + 0.001, 6)
        timestamp = round(time.time(), 3)
        tenant = self.cluster.tenant
        try:
            response = await http.post(
                f"/devices/{tenant.device_token}/positions",
                json={"latitude": self.latitude, "longitude": 8.5, "timestamp": timestamp},
                headers={"X-Ingest-Key": tenant.ingest_key},
            )
        except httpx.TransportError:
            return None
        if response.status_code != 201:
            return None
        self.acknowledged[timestamp] = self.latitude
        return self.latitude


def direct(process: ServerProcess | Worker) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=process.url + "/api/v1", timeout=10)


async def open_watcher(
    cluster: Cluster,
    nursery: trio.Nursery,
    *,
    via: ServerProcess | Worker | None = None,
    events: bool = False,
):
    """A dispatcher's /ws/realtime, through nginx (or straight to one process), welcomed."""
    tenant = cluster.tenant
    ws = await nursery.start(_websocket, cluster, "/ws/realtime", via)
    authenticate = {
        "type": "authenticate",
        "jwt": tenant.read_token,
        "instance_id": tenant.instance_id,
        "events": events,
    }
    await ws.send_message(json.dumps(authenticate))
    with trio.fail_after(WAIT_SECONDS):
        assert json.loads(await ws.get_message())["type"] == "welcome"
    return ws


async def _websocket(cluster, path, via, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    if via is None:
        async with cluster.proxy.websocket(path) as ws:
            task_status.started(ws)
            await trio.sleep_forever()
    else:
        from trio_websocket import open_websocket_url

        async with open_websocket_url(via.url.replace("http://", "ws://") + "/api/v1" + path) as ws:
            task_status.started(ws)
            await trio.sleep_forever()


async def latitudes(ws) -> list[float]:
    """The latitudes in the next message that carries positions."""
    while True:
        message = json.loads(await ws.get_message())
        if message["type"] == "position":
            return [message["Lat"]]
        if message["type"] == "positions":
            return [p["Lat"] for p in message["positions"]]


async def wait_to_see(ws, wanted: float) -> None:
    with trio.fail_after(WAIT_SECONDS):
        while wanted not in await latitudes(ws):
            pass


async def post_until_seen(poster: Poster, http: httpx.AsyncClient, ws) -> None:
    """Post until the watcher sees one of these posts: a process subscribes to Redis a
    moment after it answers its first request."""
    posted: set[float] = set()
    with trio.fail_after(WAIT_SECONDS):
        while True:
            latitude = await poster.post(http)
            if latitude is not None:
                posted.add(latitude)
            with trio.move_on_after(0.5):
                while not posted & set(await latitudes(ws)):
                    pass
                return


async def test_a_watcher_through_nginx_sees_positions_posted_through_every_process(
    cluster, nursery
):
    ws = await open_watcher(cluster, nursery)
    poster = Poster(cluster)
    for process in cluster.processes:
        async with direct(process) as http:
            await post_until_seen(poster, http, ws)
            latitude = await poster.post(http)
            assert latitude is not None
            await wait_to_see(ws, latitude)


async def test_a_share_cancelled_through_one_process_ends_the_page_served_by_another(
    cluster, nursery
):
    tenant = cluster.tenant
    first, second, third = cluster.processes
    async with direct(first) as http:
        assert await Poster(cluster).post(http) is not None
        response = await http.post(
            "/sharing/sessions",
            json={"device_token": tenant.device_token, "instance_id": tenant.instance_id},
            headers=bearer(tenant.admin_token),
        )
        assert response.status_code == 201, response.text
        session = response.json()
    viewer = await nursery.start(
        _websocket, cluster, f"/share/{session['share_token']}/live", second
    )
    with trio.fail_after(WAIT_SECONDS):
        assert json.loads(await viewer.get_message())["type"] == "position"
    async with direct(third) as http:
        cancelled = await http.delete(
            f"/sharing/sessions/{session['id']}", headers=bearer(tenant.admin_token)
        )
        assert cancelled.status_code == 200
    with trio.fail_after(WAIT_SECONDS):
        while True:
            message = json.loads(await viewer.get_message())
            if message["type"] == "session_ended":
                assert message["reason"] == "cancelled"
                break
    with trio.fail_after(WAIT_SECONDS), pytest.raises(ConnectionClosed):
        await viewer.get_message()  # and the page is told nothing more


async def test_one_device_through_two_processes_at_once_gives_one_trip_and_no_duplicate(cluster):
    tenant = cluster.tenant
    first, second, _ = cluster.processes
    start = round(time.time(), 3) - 600
    fixes = [
        {"latitude": 47.0 + i * 0.0005, "longitude": 8.5, "timestamp": start + i * 5}
        for i in range(100)
    ]
    answers = []

    async def send(process: ServerProcess, batches: list[list[dict]]) -> None:
        async with direct(process) as http:
            for batch in batches:
                response = await http.post(
                    f"/devices/{tenant.device_token}/positions",
                    json={"positions": batch},
                    headers={"X-Ingest-Key": tenant.ingest_key},
                )
                assert response.status_code == 201, response.text
                answers.append(response.json())

    # Both processes receive every fix, in batches cut differently, at the same time.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, first, [fixes[i : i + 10] for i in range(0, 100, 10)])
        nursery.start_soon(send, second, [fixes[i : i + 7] for i in range(0, 100, 7)])
    assert sum(answer["accepted"] for answer in answers) == 100
    assert sum(answer["duplicates"] for answer in answers) == 100
    assert cluster.stored_timestamps() == {fix["timestamp"] for fix in fixes}
    async with direct(cluster.processes[2]) as http:
        trips = await http.get(
            f"/devices/{tenant.device_token}/trips", headers=bearer(tenant.read_token)
        )
    assert trips.status_code == 200
    assert trips.json()["total"] == 1
    assert trips.json()["items"][0]["waypoint_count"] == 100


async def test_a_killed_process_loses_no_acknowledged_write_and_its_watchers_resume_via_nginx(
    cluster, nursery
):
    victim = cluster.processes[0]
    poster = Poster(cluster)
    watcher = await open_watcher(cluster, nursery, via=victim)
    async with cluster.proxy.client() as http:
        await post_until_seen(poster, http, watcher)
        stop_posting = trio.Event()

        async def post_all_along() -> None:
            while not stop_posting.is_set():
                await poster.post(http)
                await trio.sleep(0.01)

        async with trio.open_nursery() as posting:
            posting.start_soon(post_all_along)
            await trio.sleep(0.5)
            victim.process.kill()  # SIGKILL: no clean stop, no goodbye to its clients
            victim.process.wait(timeout=10)
            with trio.fail_after(WAIT_SECONDS), pytest.raises(ConnectionClosed):
                while True:
                    await watcher.get_message()
            # The dispatcher's page reconnects through nginx, which leaves the dead
            # process out, and follows the fleet again.
            resumed = await open_watcher(cluster, nursery)
            await post_until_seen(poster, http, resumed)
            await trio.sleep(0.5)
            stop_posting.set()
        latitude = await poster.post(http)
        assert latitude is not None
        await wait_to_see(resumed, latitude)
    assert len(poster.acknowledged) > 10
    assert set(poster.acknowledged) <= cluster.stored_timestamps()


async def test_redis_restarted_mid_stream_watchers_resync_and_no_position_is_lost(
    cluster, redis_server, nursery
):
    # One watcher on each process (straight to it), the posts through nginx.
    watchers = [await open_watcher(cluster, nursery, via=p) for p in cluster.processes]
    poster = Poster(cluster)
    async with cluster.proxy.client() as http:
        for watcher in watchers:
            await post_until_seen(poster, http, watcher)
        redis_server.stop()
        for _ in range(9):  # acknowledged by whichever process nginx picks, Redis or not
            assert await poster.post(http) is not None
        last = poster.latitude
        redis_server.start()
    # No new post: each process tells its watcher to resync and sends the last position.
    with trio.fail_after(WAIT_SECONDS):
        for watcher in watchers:
            while json.loads(await watcher.get_message())["type"] != "resync":
                pass
            assert await latitudes(watcher) == [last]
    assert set(poster.acknowledged) <= cluster.stored_timestamps()


async def test_the_sweepers_of_three_processes_expire_each_session_exactly_once(cluster, nursery):
    tenant = cluster.tenant
    watcher = await open_watcher(cluster, nursery, events=True)
    session_ids = []
    async with cluster.proxy.client() as http:  # nginx spreads them over the processes
        assert await Poster(cluster).post(http) is not None
        for _ in range(PROCESSES):
            response = await http.post(
                "/sharing/sessions",
                json={"device_token": tenant.device_token, "expires_in_hours": 2 / 3600},
                headers=bearer(tenant.admin_token),
            )
            assert response.status_code == 201, response.text
            session_ids.append(response.json()["id"])
    told: list[str] = []
    with trio.move_on_after(8):  # a few sweeps of every process after the expiry
        while True:
            message = json.loads(await watcher.get_message())
            if message["type"] == "event" and message["event"]["type"] == "share.expired":
                told.append(message["event"]["data"]["id"])
    assert sorted(told) == sorted(session_ids)
    stored = [
        row[0]
        for row in cluster.database.rows("SELECT data FROM events WHERE type = 'share.expired'")
    ]
    assert sorted(json.loads(data)["id"] for data in stored) == sorted(session_ids)


def two_free_ports() -> int:
    """A port p with p + 1 free too."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


async def test_serve_workers_runs_processes_on_consecutive_ports_as_one_tracker(
    tmp_path, redis_server, nursery
):
    port = two_free_ports()
    process = ServerProcess(
        tmp_path,
        env={
            "TRACKER_BROKER_URL": redis_server.url,
            "TRACKER_AUTH_JWT_SECRET": "s" * 48,
            "TRACKER_SERVER_PORT": str(port),
        },
    )
    instance_id = json.loads(process.cli("instance", "create", "Workers", "--json"))["instance_id"]
    device = json.loads(process.cli("device", "add", "--instance", instance_id, "--json"))
    read_token = process.cli("token", "create", "--instance", instance_id, "--scope", "read")
    tenant = Tenant(
        instance_id, device["device_token"], device["ingest_key"], read_token.strip(), ""
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "tracker", "serve", "--workers", "2"],
        cwd=tmp_path,
        env=process.env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "ab"),  # noqa: SIM115 (closed with the process)
    )
    try:
        first, second = (Worker(f"http://127.0.0.1:{p}") for p in (port, port + 1))
        with trio.fail_after(WAIT_SECONDS):
            for worker in (first, second):
                while True:
                    assert supervisor.poll() is None, (tmp_path / "server.log").read_text()
                    try:
                        async with direct(worker) as http:
                            if (await http.get("/health")).status_code == 200:
                                break
                    except httpx.TransportError:
                        await trio.sleep(0.1)
        cluster = Cluster([first, second], None, tenant, None)  # the default SQLite file
        watcher = await open_watcher(cluster, nursery, via=second)
        async with direct(first) as http:
            await post_until_seen(Poster(cluster), http, watcher)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
    for worker_port in (port, port + 1):  # the workers stopped with it
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", worker_port)


def test_serve_workers_without_a_broker_is_refused_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tracker", "serve", "--workers", "3"],
        cwd=tmp_path,
        env={**os.environ, "TRACKER_STORAGE_PATH": str(tmp_path / "tracker.db")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tracker: --workers 3 runs 3 processes on one database, and they share live positions"
        " only through a broker: set broker.url (TRACKER_BROKER_URL) to a Redis server, e.g."
        " redis://127.0.0.1:6379/0"
    ]


def test_a_second_process_on_the_database_without_a_broker_is_refused_in_one_line(tmp_path):
    first = ServerProcess(tmp_path)
    first.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tracker", "serve", "--port", str(free_port())],
            cwd=tmp_path,
            env=first.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.stop(signal.SIGTERM)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"tracker: another tracker process (pid {first.process.pid} on ")
    assert "set broker.url (TRACKER_BROKER_URL)" in line


def test_a_process_killed_without_a_clean_stop_can_be_started_again_at_once(tmp_path):
    first = ServerProcess(tmp_path)
    first.start()
    first.process.kill()  # its leases stay in the table until they lapse
    first.process.wait(timeout=10)
    again = ServerProcess(tmp_path)
    again.start()
    assert again.stop(signal.SIGTERM) == 0


def test_the_compose_cluster_is_the_documented_one_with_valid_settings_and_nginx(tmp_path):
    import yaml

    from tests.test_proxy import DEPLOYMENT_DOC, ROOT
    from tracker.config import load_settings

    text = (ROOT / "deploy" / "compose-cluster.yaml").read_text(encoding="utf-8")
    assert "```yaml\n" + text + "```" in DEPLOYMENT_DOC.read_text(encoding="utf-8")
    compose = yaml.safe_load(text)
    trackers = [name for name in compose["services"] if name.startswith("tracker")]
    assert trackers == ["tracker1", "tracker2", "tracker3"]
    for name in trackers:
        environment = {
            key: re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", "secret", value)
            for key, value in compose["services"][name]["environment"].items()
        }
        settings = load_settings(environ=environment)
        assert settings.storage.engine == "postgresql"
        assert settings.broker.url == "redis://redis:6379/0"
    site = compose["configs"]["nginx-site"]["content"].replace("$$", "$")  # Compose's escape
    ports = {name: free_port() for name in trackers}
    for name, port in ports.items():
        assert f"server {name}:8080 " in site
        site = site.replace(f"{name}:8080", f"127.0.0.1:{port}")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    (tmp_path / "temp").mkdir()
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(NGINX_MAIN_CONF.format(site=tmp_path / "site.conf"))
    checked = subprocess.run(
        [find_binary("nginx"), "-t", "-p", f"{tmp_path}/", "-c", "nginx.conf", "-e", "error.log"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
