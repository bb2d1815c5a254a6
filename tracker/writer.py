"""Group commit: positions from concurrent requests share one transaction, then fan out.

Every ingest path hands its validated positions to `Writer.submit`, which
waits until they are committed: a request is answered only after its
positions are on disk (WAL), so an acknowledged position survives a killed
process. One task (`Writer.run`, in the app's nursery) takes whatever
requests are waiting, commits them together in the writer thread, answers
each, and publishes the fixes that advanced a device's live position to the
hub. Under load, many requests share one commit; alone, a request commits at
once.

In the transaction: duplicates (same device and timestamp) are counted and
skipped; each fix joins its trip (the client's trip id, or by the gap rule)
and the trip's aggregates are updated: in O(1) for a fix after the trip's
end, and for an older one (a backlog) from its two neighbours in time, found
by index among the stored fixes and those of this batch, so a request costs
the same whatever the length of its trip; a fix newer than the device's latest
valid one becomes the live position. Older fixes (a backlog) are stored in
their trip and never broadcast as live.

On PostgreSQL, where several processes may write at once, the transaction
first locks each device of the batch (`devices.lock_for_ingest`), so two
processes ingesting one device take turns and never split or double a trip.

Events (tracker/events.py) are written in the same transaction and announced
after it: `device.online` when a live fix follows `offline_after_seconds` of
silence, `trip.started` when a live fix starts a trip, `share.arrived` when a
session auto-completes on arrival, `geofence.entered`/`exited` for each fix
that became live (tracker/geofences.py). A commit without any writes no
outbox row.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from bisect import bisect_left, insort
from dataclasses import dataclass, field

import trio

from tracker import events
from tracker.broker import Publisher
from tracker.domain import COMPLETED, Device
from tracker.errors import StorageUnavailable
from tracker.geofences import GeofenceIndex, check_live_fixes
from tracker.hub import LiveFix
from tracker.metrics import Metrics
from tracker.models import Position
from tracker.profiles import display_value
from tracker.sharing import config_of, has_arrived
from tracker.store import Database, devices
from tracker.store import positions as positions_store
from tracker.store import sessions as sessions_store
from tracker.store import trips as trips_store
from tracker.trips import Trip, choose_trip

log = logging.getLogger("tracker.writer")

QUEUE_REQUESTS = 1024
MAX_BATCH_POSITIONS = 5000


class DeviceGone(Exception):
    """The device was deleted between authentication and commit."""


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0


@dataclass(eq=False)
class _Request:
    device_token: str
    positions: list[Position]
    done: trio.Event = field(default_factory=trio.Event)
    result: IngestResult | None = None
    error: Exception | None = None


class Writer:
    def __init__(
        self,
        db: Database,
        hub: Publisher,  # the broker: every process's hub
        split_gap_seconds: float,
        arrival_radius_m: float,
        metrics: Metrics | None = None,
        offline_after_seconds: float = 600,
    ):
        self.db = db
        self.metrics = metrics or Metrics()
        self.hub = hub
        self.split_gap_seconds = split_gap_seconds
        self.arrival_radius_m = arrival_radius_m
        self.offline_after_seconds = offline_after_seconds
        self.geofences = GeofenceIndex()  # used and changed only in the writer thread
        # likewise; SQLite only: PostgreSQL has no data_version to tell another's commit
        self.memory = DeviceMemory() if getattr(db, "dialect", "sqlite") == "sqlite" else None
        self._send, self._receive = trio.open_memory_channel[_Request](QUEUE_REQUESTS)

    async def submit(self, device_token: str, positions: list[Position]) -> IngestResult:
        """Store positions of one device; returns once they are committed."""
        if not positions:
            return IngestResult()
        request = _Request(device_token, positions)
        await self._send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            batch = [await self._receive.receive()]
            size = len(batch[0].positions)
            while size < MAX_BATCH_POSITIONS:
                try:
                    request = self._receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(request)
                size += len(request.positions)
            await self._commit(batch)

    async def _commit(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            results, live, emitted = await self.db.write(
                commit_batch,
                [(r.device_token, r.positions) for r in batch],
                self.split_gap_seconds,
                self.arrival_radius_m,
                time.time(),
                self.offline_after_seconds,
                self.geofences,
                self.memory,
            )
        except Exception as error:  # answered as a 5xx by the caller; nothing was stored
            if self.memory is not None:
                self.memory.forget()
            if not isinstance(error, StorageUnavailable):  # that one the store has logged
                log.exception("commit of %d ingest requests failed", len(batch))
            self.metrics.commit_failed()
            for request in batch:
                request.error = error
                request.done.set()
            return
        if self.memory is not None:
            self.memory.committed()
        self.metrics.committed(
            sum(len(r.positions) for r in batch),
            sum(r.accepted for r in results if isinstance(r, IngestResult)),
            time.perf_counter() - started,
        )
        for request, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                request.error = result
            else:
                request.result = result
            request.done.set()
        for fix in live:
            self.hub.publish_fix(fix)
        events.announce(self.hub, emitted)


class DeviceMemory:
    """What the writer knows of each device between its commits (writer thread only).

    Per device: its row, the time of its live fix and of its newest stored fix
    (no fix of a request newer than that can be a duplicate, so the duplicates
    query is skipped). It saves a commit three statements per device and one
    per request, and it holds only while nothing but this writer has written:
    `PRAGMA data_version` on the writer's connection moves when another
    connection commits (the command line, another process) and not for its own
    commits, and the connection's `total_changes` moves when any other write of
    this process ran on it (all of the server's writes share the one writer
    connection). Both are read at the end of each commit and compared at the
    start of the next; any difference, or a commit that failed, forgets all.
    """

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.latest: dict[str, float | None] = {}
        self.newest_stored: dict[str, float] = {}  # -inf: the device has no fix stored
        self._seal: tuple[int, int] | None = None  # (data_version, total_changes), confirmed
        self._pending: tuple[int, int] | None = None  # read at the end of the last commit

    def recall(self, conn: sqlite3.Connection) -> None:
        """At the start of a commit: forget everything if anyone else wrote since the last."""
        seal, self._seal = self._seal, None  # unconfirmed until this commit is
        if seal is None or seal != _seal_of(conn):
            self.devices.clear()
            self.latest.clear()
            self.newest_stored.clear()

    def seal(self, conn: sqlite3.Connection) -> None:
        """At the end of a commit's work (the same values hold after its COMMIT)."""
        self._pending = _seal_of(conn)

    def committed(self) -> None:
        """The commit that sealed is on disk: what it learnt holds."""
        self._seal, self._pending = self._pending, None

    def forget(self) -> None:
        self._seal = self._pending = None


def _seal_of(conn: sqlite3.Connection) -> tuple[int, int]:
    return conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes


class _BatchState:
    """What one transaction learns about each device and trip as it goes."""

    def __init__(self, conn: sqlite3.Connection, gap: float, memory: DeviceMemory | None = None):
        self.conn = conn
        self.gap = gap
        self.kept = memory is not None  # else a memory of this commit alone
        self.memory = memory if memory is not None else DeviceMemory()
        self.devices: dict[str, Device | None] = {}
        self.latest: dict[str, float | None] = {}
        self.previous: dict[str, float | None] = {}  # the live fix's time before this batch
        self.started: set[tuple[str, str]] = set()  # trips this batch started
        self.advancing: dict[str, list[Position]] = {}  # per device, each fix that became live
        self.newest: dict[str, tuple[Position, str]] = {}
        self.seen: dict[str, set[float]] = {}
        self.trips: dict[tuple[str, str], Trip] = {}
        self.device_trips: dict[str, dict[str, Trip]] = {}  # the same trips, by device
        self.touched: set[tuple[str, str]] = set()
        self.joined: dict[tuple[str, str], list[Position]] = {}  # per trip, not stored yet

    def device(self, token: str) -> Device | None:
        if token not in self.devices:
            memory = self.memory
            device = memory.devices.get(token)
            if device is None:
                device = devices.get(self.conn, token)
                if device is not None:
                    memory.devices[token] = device
                    memory.latest[token] = positions_store.latest_timestamp(self.conn, token)
                    newest = positions_store.newest_of_device(self.conn, token)
                    memory.newest_stored[token] = -math.inf if newest is None else newest
            self.devices[token] = device
            self.latest[token] = memory.latest.get(token)
            self.previous[token] = self.latest[token]
            self.seen[token] = set()
        return self.devices[token]

    def stored_at(self, token: str, stamps: set[float], low: float) -> set[float]:
        """Which of `stamps` the device had stored before this commit."""
        if low > self.memory.newest_stored[token]:
            return set()  # all newer than its newest fix: the common case, no query
        return positions_store.existing_timestamps(self.conn, token, stamps)

    def remember(self) -> None:
        """What this commit leaves for the next (kept once the commit is on disk)."""
        if not self.kept:
            return
        memory = self.memory
        for token, seen in self.seen.items():
            if seen:
                memory.newest_stored[token] = max(memory.newest_stored[token], max(seen))
            memory.latest[token] = self.latest[token]
        memory.seal(self.conn)

    def load_trips_near(self, token: str, low: float, high: float) -> None:
        for trip in trips_store.near(self.conn, token, low - self.gap, high + self.gap):
            if (token, trip.track_token) not in self.trips:
                self._remember(trip)

    def _remember(self, trip: Trip) -> None:
        self.trips[(trip.device_token, trip.track_token)] = trip
        self.device_trips.setdefault(trip.device_token, {})[trip.track_token] = trip

    def trip_for(self, token: str, position: Position) -> Trip:
        trip = self._join(token, position)
        key = (token, trip.track_token)
        self.touched.add(key)
        joined = self.joined.get(key)
        if joined is None:
            self.joined[key] = [position]
        elif position.timestamp > joined[-1].timestamp:
            joined.append(position)  # in time order: the common case
        else:
            insort(joined, position, key=_timestamp)
        return trip

    def _join(self, token: str, position: Position) -> Trip:
        if position.track_token:
            key = (token, position.track_token)
            trip = self.trips.get(key)
            if trip is None:
                trip = trips_store.get(self.conn, token, position.track_token)
                if trip is None:
                    trip = Trip.start(token, position, position.track_token)
                    self.started.add(key)
                    self._remember(trip)
                    return trip
                self._remember(trip)
        else:
            trip = choose_trip(self.device_trips.get(token, {}).values(), position, self.gap)
            if trip is None:
                trip = Trip.start(token, position)
                self._remember(trip)
                self.started.add((token, trip.track_token))
                return trip
        if position.timestamp > trip.ended_at:
            trip.add(position)
        else:
            trip.insert(position, *self._neighbours(trip, position.timestamp))
        return trip

    def _neighbours(self, trip: Trip, timestamp: float) -> tuple[Position | None, Position | None]:
        """The trip's fixes just before and after `timestamp`, stored or joined in this batch."""
        before, after = positions_store.neighbours(self.conn, trip, timestamp)
        joined = self.joined.get((trip.device_token, trip.track_token), [])
        index = bisect_left(joined, timestamp, key=_timestamp)
        if index > 0 and (before is None or joined[index - 1].timestamp > before.timestamp):
            before = joined[index - 1]
        if index < len(joined) and (after is None or joined[index].timestamp < after.timestamp):
            after = joined[index]
        return before, after


def _timestamp(position: Position) -> float:
    return position.timestamp


def commit_batch(
    conn: sqlite3.Connection,
    requests: list[tuple[str, list[Position]]],
    gap: float,
    arrival_radius_m: float,
    received_at: float,
    offline_after_seconds: float = 600,
    geofences: GeofenceIndex | None = None,
    memory: DeviceMemory | None = None,
) -> tuple[list[IngestResult | Exception], list[LiveFix], list[events.Event]]:
    """Store each request's positions in one transaction (runs in the writer thread).

    Returns each request's result, the fixes that became live, and the events
    this commit emitted. `memory` carries what the writer knew of each device
    from its previous commit (see DeviceMemory); without it, everything is read.
    """
    devices.lock_for_ingest(conn, [token for token, _ in requests])
    if memory is not None:
        memory.recall(conn)
    state = _BatchState(conn, gap, memory)
    results: list[IngestResult | Exception] = []
    rows: list[tuple[str, str, Position]] = []
    trip_for = state.trip_for
    for token, positions in requests:
        if state.device(token) is None:
            results.append(DeviceGone(token))
            continue
        ordered = sorted(positions, key=_timestamp)
        low, high = ordered[0].timestamp, ordered[-1].timestamp
        seen = state.seen[token]
        known = seen | state.stored_at(token, {p.timestamp for p in ordered}, low)
        state.load_trips_near(token, low, high)
        result = IngestResult()
        latest = state.latest[token]
        advancing = None
        for position in ordered:
            timestamp = position.timestamp
            if timestamp in known:
                result.duplicates += 1
                continue
            known.add(timestamp)
            seen.add(timestamp)
            trip = trip_for(token, position)
            rows.append((token, trip.track_token, position))
            result.accepted += 1
            if position.valid and (latest is None or timestamp > latest):
                latest = timestamp
                state.newest[token] = (position, trip.track_token)
                if advancing is None:
                    advancing = state.advancing.setdefault(token, [])
                advancing.append(position)
        state.latest[token] = latest
        results.append(result)

    positions_store.insert_many(conn, rows, received_at)
    trips_store.save(conn, [state.trips[key] for key in state.touched])

    live = []
    emitted: list[events.Event] = []
    if geofences is not None and state.newest:
        geofences.refresh(conn)
    for token, (position, track_token) in state.newest.items():
        positions_store.set_latest(conn, token, position.timestamp)
        device = state.devices[token]
        assert device is not None
        emitted.extend(
            _live_events(
                conn,
                state,
                device.instance_id,
                token,
                position,
                track_token,
                received_at,
                offline_after_seconds,
            )
        )
        if geofences is not None:
            emitted.extend(
                check_live_fixes(
                    conn, geofences, device.instance_id, token, state.advancing[token], received_at
                )
            )
        live.append(
            LiveFix(
                instance_id=device.instance_id,
                device_token=token,
                position=position,
                track_token=track_token,
                display_name=display_value(device.profile, device.display_field, token),
            )
        )
    emitted.extend(_complete_arrivals(conn, state.newest, arrival_radius_m, received_at))
    state.remember()
    return results, live, emitted


def _live_events(
    conn: sqlite3.Connection,
    state: _BatchState,
    instance_id: str,
    token: str,
    position: Position,
    track_token: str,
    now: float,
    offline_after_seconds: float,
) -> list[events.Event]:
    """device.online after a silence, trip.started when the live fix opened a trip."""
    emitted = []
    previous = state.previous[token]
    if previous is None or position.timestamp - previous >= offline_after_seconds:
        emitted.append(
            events.device_online(
                conn,
                instance_id,
                token,
                position.latitude,
                position.longitude,
                position.timestamp,
                previous,
                now,
            )
        )
    if (token, track_token) in state.started:
        trip = state.trips[(token, track_token)]
        emitted.append(
            events.trip_started(
                conn,
                instance_id,
                token,
                track_token,
                trip.started_at,
                trip.start_lat,
                trip.start_lon,
                now,
            )
        )
    return emitted


def _complete_arrivals(
    conn: sqlite3.Connection,
    newest: dict[str, tuple[Position, str]],
    arrival_radius_m: float,
    now: float,
) -> list[events.Event]:
    """Complete the auto-completing share sessions whose vehicle has just arrived."""
    arrived = []
    for session in sessions_store.active_for_devices(conn, newest.keys(), now):
        position = newest[session.device_token][0]
        if not config_of(session)["auto_complete_on_arrival"]:
            continue
        if has_arrived(session, position, arrival_radius_m):
            event = events.end_share(conn, session.id, COMPLETED, "arrived", now)
            if event is not None:
                arrived.append(event)
    return arrived
