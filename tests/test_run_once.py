"""Run-once work runs in one process at a time, and another takes over when that one dies.

Three `tracker serve` processes share one SQLite file and a redis-server of the
test's own. Each share session that expires is told once (one `share.expired`
webhook delivery, one line in the delivery log), whichever process sweeps and
whichever delivers; and when the process holding the sweeper is killed, a
survivor takes the sweeper (and the webhooks) over and expires a session that
expires after the kill. Below them, the lease rules on a plain SQLite
connection, and a holder that stops its job when it loses its lease or cannot
renew it in time.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import trio

from tests.conftest import TEST_STORAGE, ServerProcess, SharedDatabase, bearer
from tests.test_webhooks import Receiver
from tracker import events, expiry, webhooks
from tracker.config import WebhookSettings
from tracker.domain import Lease, Webhook
from tracker.hub import Hub
from tracker.leases import LEASE_TTL_SECONDS, LeaseHolder
from tracker.store import Database, instances, schema
from tracker.store import leases as leases_store
from tracker.store import webhooks as webhooks_store
from tracker.webhooks import Dispatcher

# A dead holder's lease lapses within the TTL, a survivor asks within a third of it,
# then sweeps at once and delivers within a second: this bounds a takeover generously.
TAKEOVER_SECONDS = LEASE_TTL_SECONDS * 2 + 15
EXPIRES_IN_SECONDS = 3


@dataclass
class Cluster:
    processes: list[ServerProcess]
    database: SharedDatabase
    instance_id: str
    device_token: str
    admin_token: str

    def holder_of(self, lease: str) -> ServerProcess | None:
        """The process whose pid the lease's holder names (None: nobody holds it)."""
        rows = self.database.rows(
            "SELECT name, holder, expires_at FROM leases WHERE name = ?", (lease,)
        )
        current = Lease(*rows[0]) if rows else None
        if current is None or current.expires_at < time.time():
            return None
        pid = int(current.holder.rsplit(":", 2)[1])
        return next((p for p in self.processes if p.process.pid == pid), None)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def cluster(tmp_path, redis_server, shared_database) -> Iterator[Cluster]:
    env = {
        **shared_database.env,
        "TRACKER_BROKER_URL": redis_server.url,
        "TRACKER_AUTH_JWT_SECRET": "r" * 48,
        "TRACKER_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
        "TRACKER_SHARING_EXPIRY_SWEEP_SECONDS": "1",
    }
    processes = []
    for name in ("first", "second", "third"):
        (tmp_path / name).mkdir()
        processes.append(ServerProcess(tmp_path / name, env=env))
    first = processes[0]
    instance_id = json.loads(first.cli("instance", "create", "Three", "--json"))["instance_id"]
    device = json.loads(first.cli("device", "add", "--instance", instance_id, "--json"))
    admin_token = first.cli("token", "create", "--instance", instance_id, "--scope", "admin")
    try:
        for process in processes:  # one after the other: the first applies the migrations
            process.start()
        yield Cluster(
            processes, shared_database, instance_id, device["device_token"], admin_token.strip()
        )
    finally:
        for process in processes:
            if process.process is not None and process.process.poll() is None:
                process.stop(signal.SIGTERM)


async def subscribe(cluster: Cluster, through: ServerProcess, url: str) -> dict:
    async with httpx.AsyncClient(base_url=through.url + "/api/v1", timeout=10) as http:
        response = await http.post(
            f"/webhooks?instance_id={cluster.instance_id}",
            json={"url": url, "event_types": ["share.expired"]},
            headers=bearer(cluster.admin_token),
        )
    assert response.status_code == 201, response.text
    return response.json()


async def share_expiring_soon(cluster: Cluster, through: ServerProcess) -> str:
    async with httpx.AsyncClient(base_url=through.url + "/api/v1", timeout=10) as http:
        response = await http.post(
            "/sharing/sessions",
            json={
                "device_token": cluster.device_token,
                "expires_in_hours": EXPIRES_IN_SECONDS / 3600,
            },
            headers=bearer(cluster.admin_token),
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def delivery_log(cluster: Cluster, through: ServerProcess, webhook_id: str) -> list[dict]:
    async with httpx.AsyncClient(base_url=through.url + "/api/v1", timeout=10) as http:
        response = await http.get(
            f"/webhooks/{webhook_id}/deliveries?limit=100", headers=bearer(cluster.admin_token)
        )
    assert response.status_code == 200, response.text
    return response.json()["items"]


def expired_sessions(receiver: Receiver) -> list[str]:
    """The session id of every share.expired delivery received, duplicates included."""
    return [event["data"]["id"] for event in receiver.events() if event["type"] == "share.expired"]


async def until_expired(receiver: Receiver, session_ids: set[str], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not session_ids <= set(expired_sessions(receiver)):
            await trio.sleep(0.1)


async def test_three_processes_tell_each_expired_share_once(cluster, receiver):
    webhook = await subscribe(cluster, cluster.processes[1], receiver.url)
    sessions = [await share_expiring_soon(cluster, process) for process in cluster.processes]
    await until_expired(receiver, set(sessions), TAKEOVER_SECONDS)
    # A later session's expiry, told after these: any second sweep or second delivery of
    # the first ones (by another process) has had its chance by then.
    last = await share_expiring_soon(cluster, cluster.processes[2])
    await until_expired(receiver, {last}, TAKEOVER_SECONDS)

    assert sorted(expired_sessions(receiver)) == sorted([*sessions, last])
    event_ids = [headers["webhook-id"] for headers, _ in receiver.received]
    assert len(event_ids) == len(set(event_ids)) == 4
    log = await delivery_log(cluster, cluster.processes[0], webhook["id"])
    assert sorted(entry["event_id"] for entry in log) == sorted(event_ids)
    assert {entry["outcome"] for entry in log} == {"delivered"}


async def test_when_the_sweeping_process_is_killed_another_takes_over(cluster, receiver):
    webhook = await subscribe(cluster, cluster.processes[0], receiver.url)
    with trio.fail_after(TAKEOVER_SECONDS):
        while (sweeping := cluster.holder_of(expiry.LEASE)) is None:
            await trio.sleep(0.1)
    before = await share_expiring_soon(cluster, sweeping)
    await until_expired(receiver, {before}, TAKEOVER_SECONDS)
    # The kill comes once the delivery is recorded: a kill between the receiver's answer and
    # that record would make the next holder send it again (at least once, by design).
    with trio.fail_after(TAKEOVER_SECONDS):
        while not await delivery_log(cluster, sweeping, webhook["id"]):
            await trio.sleep(0.1)

    sweeping.process.send_signal(signal.SIGKILL)
    sweeping.process.wait()
    survivor = next(p for p in cluster.processes if p is not sweeping)
    after = await share_expiring_soon(cluster, survivor)
    await until_expired(receiver, {after}, TAKEOVER_SECONDS)

    # Each session expired once, and each expiry was delivered once.
    assert sorted(expired_sessions(receiver)) == sorted([before, after])
    log = await delivery_log(cluster, survivor, webhook["id"])
    assert [entry["outcome"] for entry in log] == ["delivered", "delivered"]
    now_sweeping = cluster.holder_of(expiry.LEASE)
    assert now_sweeping is not None and now_sweeping is not sweeping
    assert cluster.holder_of(webhooks.LEASE) not in (None, sweeping)


# -- the lease rules, on a plain SQLite connection --------------------------------------


@pytest.fixture
def conn(request) -> Iterator[sqlite3.Connection]:
    if TEST_STORAGE == "postgresql":  # the same rules on PostgreSQL (tracker/store/postgres.py)
        from tracker.store.postgres import PostgresDatabase, connect

        url = request.getfixturevalue("postgres_url")
        PostgresDatabase(url).close()  # its migrations
        conn = connect(url)
        yield conn
        conn.raw.close()
        return
    conn = sqlite3.connect(":memory:", isolation_level=None)
    schema.migrate(conn)
    yield conn
    conn.close()


def test_a_free_lease_goes_to_the_first_who_asks_and_only_its_holder_renews_it(conn):
    taken = leases_store.acquire(conn, "sweeper", "a", now=100, ttl_seconds=15)
    assert (taken.holder, taken.expires_at) == ("a", 115)
    refused = leases_store.acquire(conn, "sweeper", "b", now=110, ttl_seconds=15)
    assert (refused.holder, refused.expires_at) == ("a", 115)
    renewed = leases_store.acquire(conn, "sweeper", "a", now=110, ttl_seconds=15)
    assert (renewed.holder, renewed.expires_at) == ("a", 125)
    other = leases_store.acquire(conn, "retention", "b", now=110, ttl_seconds=15)
    assert other.holder == "b"  # each job has its own lease


def test_a_lapsed_lease_goes_to_the_next_who_asks(conn):
    leases_store.acquire(conn, "sweeper", "a", now=100, ttl_seconds=15)
    assert leases_store.acquire(conn, "sweeper", "b", now=115, ttl_seconds=15).holder == "a"
    taken = leases_store.acquire(conn, "sweeper", "b", now=115.5, ttl_seconds=15)
    assert (taken.holder, taken.expires_at) == ("b", 130.5)
    assert leases_store.acquire(conn, "sweeper", "a", now=116, ttl_seconds=15).holder == "b"
    assert not leases_store.held_by(conn, "sweeper", "a")
    assert leases_store.held_by(conn, "sweeper", "b")


def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(conn):
    leases_store.acquire(conn, "sweeper", "a", now=100, ttl_seconds=15)
    assert not leases_store.release(conn, "sweeper", "b")
    assert leases_store.current(conn, "sweeper").holder == "a"
    assert leases_store.release(conn, "sweeper", "a")
    assert leases_store.current(conn, "sweeper") is None
    assert leases_store.acquire(conn, "sweeper", "b", now=101, ttl_seconds=15).holder == "b"


def test_a_lone_process_takes_the_lease_of_its_killed_predecessor_at_once(conn):
    leases_store.acquire(conn, "sweeper", "earlier run", now=100, ttl_seconds=15)
    taken = leases_store.acquire(conn, "sweeper", "this run", 101, 15, take_over=True)
    assert taken.holder == "this run"


# -- a holder's job, in one process with two holders ------------------------------------

TTL = 1.5


class Job:
    """A job that records whether it runs and when it was stopped."""

    def __init__(self):
        self.running: set[str] = set()
        self.stopped_at: dict[str, float] = {}

    def for_holder(self, holder: str):
        async def run() -> None:
            self.running.add(holder)
            try:
                await trio.sleep_forever()
            finally:
                self.running.discard(holder)
                self.stopped_at[holder] = time.time()

        return run


async def until(condition, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


@pytest.fixture
def databases(tmp_path, request) -> Iterator[tuple[Database, Database]]:
    if TEST_STORAGE == "postgresql":
        from tracker.store.postgres import PostgresDatabase

        url = request.getfixturevalue("postgres_url")
        first, second = PostgresDatabase(url), PostgresDatabase(url)
    else:
        first, second = Database(tmp_path / "leases.db"), Database(tmp_path / "leases.db")
    yield first, second
    first.close()
    second.close()


async def test_a_second_holder_waits_and_takes_over_when_the_first_stops(databases, nursery):
    job = Job()
    a, b = LeaseHolder(databases[0], "a", TTL), LeaseHolder(databases[1], "b", TTL)
    a_scope = trio.CancelScope()
    nursery.start_soon(_run_in, a_scope, a, job.for_holder("a"))
    await until(lambda: "a" in job.running)
    nursery.start_soon(b.run, "sweeper", job.for_holder("b"))
    await trio.sleep(TTL * 2)  # several renewals and asks: b keeps waiting
    assert job.running == {"a"}
    a_scope.cancel()  # a stops cleanly, releasing the lease
    await until(lambda: job.running == {"b"})
    assert (await databases[0].read(leases_store.current, "sweeper")).holder == "b"


async def _run_in(scope: trio.CancelScope, holder: LeaseHolder, job) -> None:
    with scope:
        await holder.run("sweeper", job)


async def test_a_holder_that_finds_another_holder_stops_its_job(databases, nursery):
    job = Job()
    a = LeaseHolder(databases[0], "a", TTL)
    nursery.start_soon(a.run, "sweeper", job.for_holder("a"))
    await until(lambda: "a" in job.running)
    await databases[1].write(leases_store.acquire, "sweeper", "b", time.time(), 60, True)
    await until(lambda: "a" in job.stopped_at)
    assert job.running == set()


async def test_a_holder_that_cannot_renew_stops_before_its_lease_lapses(databases, nursery):
    job = Job()
    a = LeaseHolder(databases[0], "a", TTL * 2)  # its job stops 0.5 s before its lease lapses
    nursery.start_soon(a.run, "sweeper", job.for_holder("a"))
    await until(lambda: "a" in job.running)
    if TEST_STORAGE == "postgresql":  # another process holds the lease's row: renewals wait
        from tracker.store.postgres import connect

        blocker = connect(databases[1].url).raw
        blocker.execute("BEGIN")
        blocker.execute("SELECT 1 FROM leases WHERE name = 'sweeper' FOR UPDATE")
    else:
        blocker = sqlite3.connect(databases[1].path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock: renewals wait
    try:
        await until(lambda: "a" in job.stopped_at)
        lease = await databases[1].read(leases_store.current, "sweeper")
        assert lease.holder == "a" and job.stopped_at["a"] < lease.expires_at
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await until(lambda: "a" in job.running)  # renewed again: the job runs again


async def test_a_dispatcher_whose_lease_passed_on_leaves_its_event_to_the_new_holder(
    databases, receiver, nursery
):
    db = databases[0]
    instance = await db.write(instances.create, "Fenced")
    hook = Webhook(
        id="hook",
        instance_id=instance.id,
        url=receiver.url,
        event_types=["share.created"],
        enabled=True,
        disabled_reason=None,
        secret=webhooks.new_secret(),
        description=None,
        created_at=time.time(),
        cursor=0,
        failing_since=None,
        next_attempt_at=None,
    )
    await db.write(webhooks_store.create, hook)
    await db.write(leases_store.acquire, webhooks.LEASE, "b", time.time(), 60)
    await db.write(events.emit, instance.id, "share.created", {"id": "s1"}, time.time())
    settings = WebhookSettings(allow_private_targets=True)

    # a's process was frozen past its lease (b holds it now) and wakes up mid-delivery:
    # its POST goes out, but it records nothing and sends nothing more.
    stale = trio.CancelScope()
    nursery.start_soon(_dispatch_in, stale, Dispatcher(db, Hub(), settings, "a"))
    await until(lambda: len(receiver.received) == 1)
    await trio.sleep(webhooks.POLL_SECONDS * 2)
    assert len(receiver.received) == 1
    assert await db.read(webhooks_store.deliveries, "hook", 10, 0) == ([], 0)
    assert (await db.read(webhooks_store.get, "hook")).cursor == 0
    stale.cancel()

    # b delivers the event again, same webhook-id: the receiver deduplicates.
    nursery.start_soon(Dispatcher(db, Hub(), settings, "b").run)
    await until(lambda: len(receiver.received) == 2)
    assert len({headers["webhook-id"] for headers, _ in receiver.received}) == 1
    await until(lambda: db.read_sync(webhooks_store.get, "hook").cursor > 0)
    logged, total = await db.read(webhooks_store.deliveries, "hook", 10, 0)
    assert total == 1 and logged[0].outcome == "delivered"


async def _dispatch_in(scope: trio.CancelScope, dispatcher: Dispatcher) -> None:
    with scope:
        await dispatcher.run()
