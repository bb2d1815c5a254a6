"""`/ws/realtime`: every device of an instance, live, for dispatchers.

Protocol: the client's first message must be `authenticate` (JWT, instance,
units, timezone, date_format) within `realtime.auth_timeout_seconds`; the
server answers `welcome`, then one `position` per device with a known
position (the snapshot), then live positions as the writer commits them.
`{"type": "subscribe", "device_tokens": [...]}` narrows the stream;
`{"type": "ping"}` is answered `{"type": "pong"}`; the server pings every
`realtime.ping_interval_seconds` and closes a client silent for two
intervals. Close codes are listed in docs/websockets.md.

`"batch": true` in `authenticate` asks for `{"type": "positions",
"positions": [...]}` instead: everything one hub delivery brings (deliveries
are paced by `realtime.fanout_interval_seconds`, tracker/hub.py) goes out in
one frame, shared by every subscriber that got the same positions. No delay
is added to the unbatched stream's; a dashboard just parses far fewer
messages (docs/benchmarks.md).

`"events": true` in `authenticate` adds the instance's events
(tracker/events.py) as `{"type": "event", "event": {"type", "id",
"timestamp", "instance_id", "data"}}` messages, the body a webhook gets,
after their commit and in order with the positions.

Positions are encoded once per stream format (units, zone, date format) and
the bytes are shared by every subscriber that asked for that format: the
whole frame of a `position` message, and the JSON that batches join.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from tracker import jsoncodec
from tracker.auth import Principal
from tracker.broker import RESYNC_TOPIC
from tracker.context import Tracker
from tracker.domain import DeviceFix
from tracker.errors import StorageUnavailable, TrackerError
from tracker.events import Event, envelope
from tracker.geo import metres_to_feet, mps_to_mph
from tracker.hub import EVERYONE, LiveFix, Mailbox, events_topic, instance_topic
from tracker.profiles import display_value
from tracker.store import Database
from tracker.store import positions as positions_store
from tracker.store.hotreads import HotReads
from tracker.timefmt import TimeFormatError, TimeStyle
from tracker.websocket import (
    BAD_TOKEN,
    FORBIDDEN,
    INVALID_MESSAGE,
    MAX_MESSAGE_BYTES,
    MESSAGE_TOO_BIG,
    TIMEOUT,
    Connection,
    Frame,
    json_message,
    run_connection,
)

log = logging.getLogger("tracker.realtime")

MAX_SUBSCRIBED_DEVICES = 10_000
SNAPSHOT_OVERLAP_SECONDS = 30.0  # how long a snapshot fix may still come again as live
SNAPSHOT_ON_LOOP_MAX_ROWS = 200  # larger snapshots are read in a worker thread (~5 us a row)
SNAPSHOT_MAX_INSTANCES = 10_000  # snapshots kept at once (all of the current data_version)
UNITS = ("metric", "imperial")
_NO_SUBSCRIPTION = contextlib.nullcontext()  # reentrant: one for every connection
RESYNC_FRAME = Frame.text(b'{"type":"resync"}')


class StreamRefused(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class StreamFormat:
    """How one subscriber wants positions written: units, time style, one frame per tick."""

    units: str
    time: TimeStyle
    batch: bool = False
    events: bool = False
    # The keys of this format's encodings in each LiveFix's cache, made once per
    # subscriber (not per frame), as strings: equal formats share the encodings, and a
    # string computes its hash once where a tuple would hash its items on every look-up.
    key: str = field(init=False, repr=False, compare=False)
    frame_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = f"realtime {self.units} {self.time.timezone} {self.time.date_format}"
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "frame_key", f"{key} frame")

    def payload(self, fix: LiveFix) -> bytes:
        """The position message's JSON, encoded once per format."""
        return fix.encoded(self.key, self._encode)

    def frame(self, fix: LiveFix) -> Frame:
        """The position message as a whole frame, built once per format."""
        frame = fix.cached(self.frame_key)
        if frame is None:
            frame = fix.cache(self.frame_key, Frame.text(self.payload(fix)))
        return frame

    def frames(self, items: list[Any]) -> Iterator[Frame]:
        """What a take() found, as frames: control frames in place, fixes per the format."""
        items = [event_frame(item) if isinstance(item, Event) else item for item in items]
        if not self.batch:
            for item in items:
                yield item if isinstance(item, Frame) else self.frame(item)
            return
        group: list[LiveFix] = []
        for item in items:
            if isinstance(item, Frame):
                if group:
                    yield self.batch_frame(group)
                    group = []
                yield item
            else:
                group.append(item)
        if group:
            yield self.batch_frame(group)

    def batch_frame(self, fixes: list[LiveFix]) -> Frame:
        """One `positions` frame; subscribers that got the same fixes share it.

        A subscriber that keeps up gets exactly what the hub delivered in one
        go, so every such subscriber of the instance asks for the same list.
        """
        key = (self.key, tuple(fixes))  # the fixes themselves: no reused identities
        frame = _recent_batches.get(key)
        if frame is None:
            if len(_recent_batches) >= RECENT_BATCHES:
                _recent_batches.clear()
            frame = _recent_batches[key] = batch_frame([self.payload(fix) for fix in fixes])
        return frame

    def _encode(self, fix: LiveFix) -> bytes:
        p = fix.position
        speed, accuracy, altitude = p.speed, p.accuracy, p.altitude
        if self.units == "imperial":
            speed = None if speed is None else round(mps_to_mph(speed), 3)
            accuracy = None if accuracy is None else round(metres_to_feet(accuracy), 2)
            altitude = None if altitude is None else round(metres_to_feet(altitude), 2)
        message: dict[str, Any] = {
            "type": "position",
            "DeviceToken": fix.device_token,
            "Lat": p.latitude,
            "Lng": p.longitude,
            "Speed": speed,
            "Heading": p.heading,
            "Accuracy": accuracy,
            "Altitude": altitude,
            "Battery": p.battery,
            "TrackToken": fix.track_token,
            "DisplayIdentifier": fix.display_name,
            "Timestamp": self.time.format(p.timestamp),
        }
        if p.attributes.get("alarm"):
            message["Alarm"] = p.attributes["alarm"]
        return jsoncodec.dumps(message)


def event_frame(event: Event) -> Frame:
    return Frame.text(jsoncodec.dumps({"type": "event", "event": envelope(event)}))


RECENT_BATCHES = 256  # batch frames kept for the other subscribers of a delivery
_recent_batches: dict[tuple, Frame] = {}


def batch_frame(payloads: list[bytes]) -> Frame:
    """One `positions` message from encoded position messages (joined, not re-encoded)."""
    return Frame.text(b'{"type":"positions","positions":[' + b",".join(payloads) + b"]}")


def _authenticate(tracker: Tracker, message: dict[str, Any]) -> tuple[Principal, str, StreamFormat]:
    if message.get("type") != "authenticate":
        raise StreamRefused(INVALID_MESSAGE, "first message must be authenticate")
    token = message.get("jwt") or message.get("access_token")
    if not isinstance(token, str):
        raise StreamRefused(BAD_TOKEN, "missing jwt")
    try:
        principal = tracker.verifier.verify(token)
    except TrackerError as error:
        raise StreamRefused(BAD_TOKEN, error.message) from None
    instance_id = message.get("instance_id")
    if not isinstance(instance_id, str) or not instance_id:
        raise StreamRefused(INVALID_MESSAGE, "instance_id is required")
    if not principal.may_access(instance_id) or principal.scope not in ("read", "admin"):
        raise StreamRefused(FORBIDDEN, "this token may not watch that instance")
    units = message.get("units", "metric")
    if units not in UNITS:
        raise StreamRefused(
            INVALID_MESSAGE, f"unknown units {str(units)[:40]!r}: metric or imperial"
        )
    try:
        style = TimeStyle.parse(message.get("timezone"), message.get("date_format"))
    except TimeFormatError as error:
        raise StreamRefused(INVALID_MESSAGE, str(error)[:120]) from None
    batch = message.get("batch", False)
    if not isinstance(batch, bool):
        raise StreamRefused(INVALID_MESSAGE, "batch must be true or false")
    with_events = message.get("events", False)
    if not isinstance(with_events, bool):
        raise StreamRefused(INVALID_MESSAGE, "events must be true or false")
    return principal, instance_id, _stream_format(units, style, batch, with_events)


STREAM_FORMATS_KEPT = 1_024  # distinct formats kept for reuse (a handful in practice)
_stream_formats: dict[tuple, StreamFormat] = {}


def _stream_format(units: str, style: TimeStyle, batch: bool, events: bool) -> StreamFormat:
    """The subscriber's format, one object (and one pair of cache keys) per distinct format:
    an idle subscriber holds a reference, not its own copy (issue #20, memory)."""
    key = (units, style.timezone, style.date_format, batch, events)
    stream_format = _stream_formats.get(key)
    if stream_format is None:
        if len(_stream_formats) >= STREAM_FORMATS_KEPT:
            _stream_formats.clear()
        stream_format = _stream_formats[key] = StreamFormat(units, style, batch, events)
    return stream_format


def _origin_allowed(tracker: Tracker, origin: str | None) -> bool:
    if origin is None:
        return True  # not a browser: Origin checks guard against cross-site pages only
    allowed = set(tracker.settings.realtime.allowed_origins)
    allowed.add(tracker.settings.server.public_url)
    return origin.rstrip("/") in {item.rstrip("/") for item in allowed}


async def _first_message(tracker: Tracker, connection: Connection) -> dict[str, Any]:
    with trio.move_on_after(tracker.settings.realtime.auth_timeout_seconds):
        text = await connection.receive_text()
        if len(text.encode()) > MAX_MESSAGE_BYTES:
            raise StreamRefused(MESSAGE_TOO_BIG, "message too large")
        message = json_message(text)
        if message is None:
            raise StreamRefused(INVALID_MESSAGE, "messages must be JSON objects")
        return message
    raise StreamRefused(TIMEOUT, "no authenticate message in time")


def _snapshot_fix(row: DeviceFix) -> LiveFix:
    return LiveFix(
        instance_id=row.instance_id,
        device_token=row.device_token,
        position=row.position,
        track_token=row.track_token,
        display_name=display_value(row.profile, row.display_field, row.device_token),
    )


async def realtime_stream(tracker: Tracker, connection: Connection) -> None:
    origin = connection.header(b"origin")
    if not _origin_allowed(tracker, origin):
        log.warning("refused /ws/realtime from origin %s", origin)
        await connection.reject()
        return
    await connection.accept()
    try:
        principal, instance_id, stream_format = _authenticate(
            tracker, await _first_message(tracker, connection)
        )  # (the message, token and all, is not kept for the connection's life)
    except StreamRefused as refused:
        await connection.send_json(
            {"type": "error", "code": refused.code, "message": refused.reason}
        )
        await connection.close(refused.code, refused.reason)
        return

    ping_interval = tracker.settings.realtime.ping_interval_seconds
    with (
        tracker.hub.subscribe(instance_topic(instance_id), connection.mailbox) as subscription,
        (
            tracker.hub.subscribe(events_topic(instance_id), connection.mailbox)
            if stream_format.events
            else _NO_SUBSCRIPTION
        ),
    ):
        connection.post(
            "welcome",
            {
                "type": "welcome",
                "instance_id": instance_id,
                "subject": principal.subject,
                "units": stream_format.units,
                "timezone": stream_format.time.timezone,
                "date_format": stream_format.time.date_format,
                "batch": stream_format.batch,
                "events": stream_format.events,
                "ping_interval_seconds": ping_interval,
            },
        )
        # The sender has not started: every live fix published since subscribing is
        # still pending, so the snapshot never overtakes a newer one.
        frames = await _queue_snapshot(tracker, connection, instance_id, stream_format.frames)

        async def on_message(message: dict[str, Any]) -> None:
            if message.get("type") != "subscribe":
                kind = str(message.get("type"))[:40]
                connection.post("error", _error(f"unknown message type {kind!r}"))
                return
            keys = _device_filter(message.get("device_tokens"))
            if keys is False:
                connection.post("error", _error("device_tokens must be a list of strings"))
                return
            subscription.keys = keys
            connection.post(
                "subscribed",
                {"type": "subscribed", "device_tokens": sorted(keys) if keys else None},
            )

        await run_connection(
            connection,
            sender=functools.partial(connection.run_sender, frames),  # (lighter than a lambda)
            on_message=on_message,
            keepalive=tracker.keepalive,
        )


def _error(message: str) -> dict[str, Any]:
    return {"type": "error", "code": INVALID_MESSAGE, "message": message}


def _device_filter(value: Any) -> frozenset[str] | None | bool:
    """The subscribe filter: a set of tokens, None for everything, False when malformed."""
    if value is None or value == []:
        return None
    if (
        isinstance(value, list)
        and len(value) <= MAX_SUBSCRIBED_DEVICES
        and all(isinstance(item, str) for item in value)
    ):
        return frozenset(value)
    return False


async def _queue_snapshot(
    tracker: Tracker,
    connection: Connection,
    instance_id: str,
    frames: Callable[[list[Any]], Iterator[Frame]],
) -> Callable[[list[Any]], Iterator[Frame]]:
    """Queue the instance's snapshot behind what the (already subscribed) mailbox holds;
    returns frames, filtered so that no snapshot fix is sent a second time."""
    snapshot = await _snapshots(tracker.db).fixes(instance_id)
    after = AfterSnapshot(frames, snapshot)
    for device_token, fix in snapshot.items():
        pending = connection.mailbox.peek(device_token)
        if isinstance(pending, LiveFix) and pending.position.timestamp >= fix.position.timestamp:
            after.moved_on(device_token)  # its snapshot fix is not sent: nothing to filter
            continue
        connection.mailbox.put(device_token, fix)
    return after


class AfterSnapshot:
    """frames, never sending a device's snapshot fix a second time.

    The snapshot can hold a fix that the writer committed but has not yet
    published: its publish then reaches the mailbox after the snapshot was
    sent. Until a newer fix of that device passes, a live fix no newer than
    the device's snapshot fix is that one again, and is dropped. The writer
    publishes as soon as its commit returns, so after SNAPSHOT_OVERLAP_SECONDS
    the check stops (the stream is then all new).

    Kept for every connection, so it is small (issue #20, memory per idle
    WebSocket): the snapshot is the dict shared by every connection that got
    it (`Snapshots`), not a copy; the devices this connection has moved past
    are a set made only when the first one does; both are let go when the
    overlap ends. The object itself is the sender's frames (no closure).
    """

    __slots__ = ("_frames", "_snapshot", "_moved_on", "_until")

    def __init__(
        self, frames: Callable[[list[Any]], Iterator[Frame]], snapshot: dict[str, LiveFix]
    ):
        self._frames = frames
        self._snapshot: dict[str, LiveFix] | None = snapshot or None
        self._moved_on: set[str] | None = None  # devices whose snapshot fix no longer filters
        self._until = trio.current_time() + SNAPSHOT_OVERLAP_SECONDS

    def moved_on(self, device_token: str) -> None:
        """From here on, every fix of this device is new to this connection."""
        if self._moved_on is None:
            self._moved_on = set()
        self._moved_on.add(device_token)

    def __call__(self, items: list[Any]) -> Iterator[Frame]:
        if self._snapshot is not None:
            if trio.current_time() > self._until:
                self._snapshot = self._moved_on = None
            else:
                items = [item for item in items if not self._seen_in_snapshot(item)]
        return self._frames(items)

    def _seen_in_snapshot(self, item: Any) -> bool:
        if not isinstance(item, LiveFix):
            return False
        assert self._snapshot is not None
        sent = self._snapshot.get(item.device_token)
        if sent is None or item is sent:
            return False
        if self._moved_on is not None and item.device_token in self._moved_on:
            return False
        if item.position.timestamp <= sent.position.timestamp:
            return True
        self.moved_on(item.device_token)  # newer: from here on, this device's stream is new
        return False


class Snapshots:
    """The snapshot on connect, read once and shared by the connections that arrive together.

    A reconnect storm (a restart, a network blip) brings thousands of clients
    of one instance within seconds; reading the same rows for each of them in
    a worker thread was a third of a connection's cost. Here the snapshot of
    an instance is kept with the `PRAGMA data_version` seen just before it was
    read (HotReads' own connection, which never writes, so the version moves
    exactly when some other connection, in any process, commits), and a
    connection is given the kept one when the version has not moved since.

    Why that is correct: the caller has subscribed to the instance's topic
    before it asks (realtime_stream). If the version is the one seen before
    the kept read, nothing was committed between that read and this moment,
    so the kept rows are the database as it is now. Anything committed after
    this moment is published after its commit, so after the subscription: it
    reaches the mailbox, and a live fix already pending is never overwritten
    by an older snapshot row (`_queue_snapshot`). A commit that lands
    between the version read and the rows' read is in the rows, and also
    moved the version, so the next caller reads again. The same argument
    lets a caller wait for a read in flight that began at the version it
    sees now, instead of starting its own.

    Small instances are read on the event loop (no worker-thread hop; a
    read of `SNAPSHOT_ON_LOOP_MAX_ROWS` rows is well under a millisecond);
    an instance whose last snapshot was larger, or that was never read, in a
    worker thread as before, so a large fleet never stalls the loop. When
    SQLite fails on the loop (or the database is not a file), the worker
    thread's read answers, with its errors, as before.
    """

    def __init__(self, db: Database):
        self.db = db
        self.reads = HotReads(db.path)
        self._version: int | None = None  # the version every kept snapshot was read at
        self._kept: dict[str, dict[str, LiveFix]] = {}  # by instance, then device
        self._sizes: dict[str, int] = {}  # rows of each instance's last snapshot
        self._reading: dict[str, tuple[int, trio.Event]] = {}  # reads in flight

    async def fixes(self, instance_id: str) -> dict[str, LiveFix]:
        """The instance's live positions by device, as of now or later (see the class doc).

        The dict is shared by every caller given it: read it, never change it."""
        version = self.reads.data_version()
        if version is None:
            return await self._read_in_thread(instance_id)
        if version != self._version:
            self._kept.clear()
            self._version = version
        kept = self._kept.get(instance_id)
        if kept is not None:
            return kept
        reading = self._reading.get(instance_id)
        if reading is not None and reading[0] == version:
            await reading[1].wait()
            kept = self._kept.get(instance_id) if self._version == version else None
            return kept if kept is not None else await self._read_in_thread(instance_id)
        rows = None
        if self._sizes.get(instance_id, math.inf) <= SNAPSHOT_ON_LOOP_MAX_ROWS:
            rows = self.reads.instance_fixes(instance_id)
        if rows is not None:
            fixes = _by_device(rows)
        else:
            done = trio.Event()
            self._reading[instance_id] = (version, done)
            try:
                fixes = await self._read_in_thread(instance_id)
            finally:
                done.set()
                if self._reading.get(instance_id, (0, None))[1] is done:
                    del self._reading[instance_id]
        if len(self._sizes) >= SNAPSHOT_MAX_INSTANCES:
            self._sizes.clear()
        self._sizes[instance_id] = len(fixes)
        if self._version == version and len(self._kept) < SNAPSHOT_MAX_INSTANCES:
            self._kept[instance_id] = fixes
        return fixes

    async def _read_in_thread(self, instance_id: str) -> dict[str, LiveFix]:
        return _by_device(await self.db.read(positions_store.latest_for_instance, instance_id))


async def run_resyncs(
    tracker: Tracker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """After the broker lost messages (`broker:resync`, tracker/broker.py), every watched
    instance's subscribers get `{"type": "resync"}` and then the instance's last positions,
    read now, as on connect: whatever they missed is replaced by what is current.

    One task per process does it for every connection (one read per instance, no
    per-connection state). The positions go through the instance's topic like live
    ones, so each subscriber's device filter applies; the resync message goes to all.
    A small instance's positions are read on the event loop and published with no
    await between, so no live fix can come between the read and the publish; a large
    one's are read in a thread, and a fix of a device that arrives during that read
    may be followed by the older one read (the device's next fix puts it right)."""
    hub = tracker.hub
    mailbox = Mailbox()
    with hub.subscribe(RESYNC_TOPIC, mailbox):
        task_status.started()
        while True:
            await mailbox.take()
            for topic in hub.topics(instance_topic("")):
                instance_id = topic.removeprefix(instance_topic(""))
                hub.publish(topic, EVERYONE, RESYNC_FRAME)
                try:
                    fixes = await _snapshots(tracker.db).fixes(instance_id)
                except StorageUnavailable:
                    continue  # logged by the store; the message told them to look again
                for device_token, fix in fixes.items():
                    hub.publish(topic, device_token, fix)


def _by_device(rows: list[DeviceFix]) -> dict[str, LiveFix]:
    return {row.device_token: _snapshot_fix(row) for row in rows}


# One per database (so per app), made on first use and gone with the database.
_snapshots_by_db: weakref.WeakKeyDictionary[Database, Snapshots] = weakref.WeakKeyDictionary()


def _snapshots(db: Database) -> Snapshots:
    snapshots = _snapshots_by_db.get(db)
    if snapshots is None:
        snapshots = _snapshots_by_db[db] = Snapshots(db)
    return snapshots
