"""Shared fixtures: settings on a temp database, a fleet of two instances, the app, a real server.

Most tests run in-process through `app.test_app()` (the lifespan and its
nursery run); end-to-end tests use `server`, which starts Hypercorn on a free
loopback port and talks to it over real sockets with httpx.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from functools import partial

import httpx
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request, TextMessage

from tracker.app import create_app
from tracker.config import Settings
from tracker.context import Tracker
from tracker.server import serve
from tracker.store import devices, instances

# TEST_TRACKER_STORAGE=postgresql: `settings` names a fresh database on the session's
# PostgreSQL (tests/engines.py) instead of a SQLite file; TEST_TRACKER_BROKER=redis: a
# redis-server of the test's own as broker.url. .ci/run runs the suites that pass there
# a second time so. (Not TRACKER_...: the config refuses unknown TRACKER_ variables.)
TEST_STORAGE = os.environ.get("TEST_TRACKER_STORAGE", "sqlite")
TEST_BROKER = os.environ.get("TEST_TRACKER_BROKER", "")

sqlite_only = pytest.mark.skipif(
    TEST_STORAGE != "sqlite", reason="SQLite only (TEST_TRACKER_STORAGE names another engine)"
)


@pytest.fixture
def settings(tmp_path, request) -> Settings:
    storage = {"path": str(tmp_path / "tracker.db")}
    if TEST_STORAGE == "postgresql":
        storage["url"] = request.getfixturevalue("postgres_url")
    broker = {"url": request.getfixturevalue("redis_server").url} if TEST_BROKER == "redis" else {}
    return Settings().replace(
        server={"host": "127.0.0.1", "port": 0, "public_url": "http://tracker.test"},
        storage=storage,
        broker=broker,
        auth={"jwt_secret": secrets.token_urlsafe(48)},
    )


@dataclass
class SharedDatabase:
    """The database several `tracker serve` processes of a test share (TEST_TRACKER_STORAGE
    picks the engine): the environment that names it, and reads for assertions."""

    env: dict[str, str]
    path: str  # the SQLite file, or "" on PostgreSQL
    url: str  # "" on SQLite

    def rows(self, sql: str, params: tuple = ()) -> list:
        """The rows of one query (sqlite3's ? paramstyle on either engine)."""
        if self.url:
            from tracker.store.postgres import connect

            conn = connect(self.url)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.raw.close()
        import sqlite3

        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@pytest.fixture
def shared_database(tmp_path, request) -> SharedDatabase:
    if TEST_STORAGE == "postgresql":
        url = request.getfixturevalue("postgres_url")
        return SharedDatabase({"TRACKER_STORAGE_URL": url}, "", url)
    path = str(tmp_path / "shared.db")
    return SharedDatabase({"TRACKER_STORAGE_PATH": path}, path, "")


@dataclass
class Tenant:
    instance_id: str
    device_token: str
    ingest_key: str
    admin_token: str
    read_token: str
    ingest_token: str


@dataclass
class Fleet:
    a: Tenant
    b: Tenant
    super_admin_token: str


def make_tenant(tracker: Tracker, name: str) -> Tenant:
    instance = tracker.db.write_sync(instances.create, name)
    device, key = tracker.db.write_sync(
        devices.create, instance.id, f"{name.lower()}-truck-1", {"full_name": f"{name} Driver"}
    )

    def mint(scope: str) -> str:
        return tracker.verifier.mint(
            subject=f"{name}-{scope}", instances=[instance.id], scope=scope, ttl_seconds=3600
        )

    return Tenant(instance.id, device.token, key, mint("admin"), mint("read"), mint("ingest"))


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    if TEST_STORAGE == "postgresql":  # a test without the app's lifespan leaves its pools open
        app.extensions["tracker"].db.close()


@pytest.fixture
def tracker(app) -> Tracker:
    return app.extensions["tracker"]


@pytest.fixture
def fleet(tracker) -> Fleet:
    return Fleet(
        a=make_tenant(tracker, "Alpha"),
        b=make_tenant(tracker, "Bravo"),
        super_admin_token=tracker.verifier.mint(
            subject="root", instances="*", scope="admin", ttl_seconds=3600
        ),
    )


@pytest.fixture
async def client(app):
    """An in-process test client with the app's lifespan (and nursery) running."""
    async with app.test_app() as test_app:
        yield test_app.test_client()


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:PORT
    api: str  # url + api prefix
    app: object
    settings: Settings

    @property
    def ws(self) -> str:
        return self.api.replace("http://", "ws://", 1)


async def raw_websocket(
    server: LiveServer, path: str, first: dict | None = None, receive_buffer: int | None = None
) -> tuple[trio.SocketStream, WSConnection]:
    """A WebSocket on a bare socket (wsproto), for clients that misbehave on purpose:
    handshake done, first sent; receive_buffer shrinks the socket's receive buffer."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    if receive_buffer:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, receive_buffer)
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    ws = WSConnection(ConnectionType.CLIENT)
    prefix = server.settings.server.api_prefix
    await stream.send_all(ws.send(Request(host=host, target=prefix + path)))
    ws.receive_data(await stream.receive_some(4096))  # the 101 answer
    list(ws.events())
    if first is not None:
        await stream.send_all(ws.send(TextMessage(data=json.dumps(first))))
    return stream, ws


async def start_server(nursery: trio.Nursery, app, settings: Settings) -> LiveServer:
    """Start the real server (Hypercorn's trio worker) on a free loopback port.

    It runs until the nursery is cancelled, as it is at the end of each test.
    """
    binds = await nursery.start(partial(serve, app, settings, shutdown_trigger=trio.sleep_forever))
    url = binds[0]
    return LiveServer(url=url, api=url + settings.server.api_prefix, app=app, settings=settings)


@pytest.fixture
async def server(nursery, app, settings) -> LiveServer:
    return await start_server(nursery, app, settings)


@pytest.fixture
async def http(server):
    async with httpx.AsyncClient(base_url=server.api, timeout=10) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`tracker serve` in its own process, for tests that signal or kill it."""

    def __init__(self, workdir, env: dict[str, str] | None = None):
        import os

        self.workdir = workdir
        self.port = free_port()
        self.env = {
            **os.environ,
            "TRACKER_SERVER_PORT": str(self.port),
            "TRACKER_STORAGE_PATH": str(workdir / "tracker.db"),
            **(env or {}),
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def cli(self, *args: str) -> str:
        import subprocess
        import sys

        result = subprocess.run(
            [sys.executable, "-m", "tracker", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self) -> None:
        import subprocess
        import sys
        import time

        with open(self.workdir / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tracker", "serve"],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.workdir / "server.log").read_text()
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("server did not start")

    def stop(self, signal_number: int) -> int:
        self.process.send_signal(signal_number)
        return self.process.wait(timeout=15)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server of the test's own (tests/engines.py), stopped after it."""
    from tests.engines import RedisServer

    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL cluster (tests/engines.py), one per test session."""
    from tests.engines import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgres_server.create_database(f"test_{secrets.token_hex(6)}")
