"""Events: every one is made here, in the transaction that causes it, into the outbox.

An event (`share.created`, `device.online`, `trip.ended`, ...) is a row of the
`events` table written by `emit` on the caller's connection, inside the
caller's transaction: it exists if and only if its cause was committed, and
it survives a restart or a kill -9 until the webhook dispatcher
(tracker/webhooks.py) has delivered it. The functions here are the only
ones that change a share session's status, so "a session ended" is decided
and emitted in one place, whoever ends it (an admin, an arrival, expiry).

After the commit, the caller hands the events to `announce`, which tells the
live side through the hub: a share session's viewers (ended, changed),
`/ws/realtime` subscribers that asked for events, and the webhook dispatcher
(a nudge on `OUTBOX_TOPIC`; it reads the outbox itself, in order).

`device.online` is the first live fix after `console.offline_after_seconds`
of silence (decided by the writer from the fix times it already reads);
`device.offline` and `trip.ended` (the split gap passed) are found by
`sweep_quiet`, which looks at the window between its previous run and now,
so each is emitted once, and a server that was down emits on restart what
went quiet meanwhile.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from tracker.broker import Publisher
from tracker.domain import ShareSession
from tracker.domain import StoredEvent as Event
from tracker.hub import events_topic, session_topic
from tracker.sharing import SessionChanged, SessionEnded, admin_view
from tracker.store import events as events_store
from tracker.store import sessions as sessions_store

OUTBOX_TOPIC = "outbox"  # a nudge for the webhook dispatcher: new events are committed

SHARE_CREATED = "share.created"
SHARE_UPDATED = "share.updated"
SHARE_ARRIVED = "share.arrived"
SHARE_COMPLETED = "share.completed"
SHARE_CANCELLED = "share.cancelled"
SHARE_EXPIRED = "share.expired"
DEVICE_ONLINE = "device.online"
DEVICE_OFFLINE = "device.offline"
TRIP_STARTED = "trip.started"
TRIP_ENDED = "trip.ended"
GEOFENCE_ENTERED = "geofence.entered"
GEOFENCE_EXITED = "geofence.exited"
WEBHOOK_TEST = "webhook.test"  # sent to one webhook on request, never subscribed to

EVENT_TYPES = (
    SHARE_CREATED,
    SHARE_UPDATED,
    SHARE_ARRIVED,
    SHARE_COMPLETED,
    SHARE_CANCELLED,
    SHARE_EXPIRED,
    DEVICE_ONLINE,
    DEVICE_OFFLINE,
    TRIP_STARTED,
    TRIP_ENDED,
    GEOFENCE_ENTERED,
    GEOFENCE_EXITED,
)
_SHARE_ENDS = {
    SHARE_ARRIVED: "arrived",
    SHARE_COMPLETED: "completed",
    SHARE_CANCELLED: "cancelled",
    SHARE_EXPIRED: "expired",
}

OUTBOX_KEPT_DAYS = 30  # then an event is dropped, delivered or not (retries stop after 24 h)
OFFLINE_WATERMARK = "device.offline"
TRIP_ENDED_WATERMARK = "trip.ended"


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


def emit(
    conn: sqlite3.Connection,
    instance_id: str,
    event_type: str,
    data: dict[str, Any],
    now: float,
    webhook_id: str | None = None,
) -> Event:
    """Write one event to the outbox, in the caller's transaction."""
    event_id = new_event_id()
    seq = events_store.append(conn, event_id, instance_id, event_type, now, data, webhook_id)
    return Event(seq, event_id, instance_id, event_type, now, data, webhook_id)


def envelope(event: Event) -> dict[str, Any]:
    """What a webhook receives (and a /ws/realtime subscriber, with type "event")."""
    return {
        "type": event.type,
        "id": event.id,
        "timestamp": datetime.fromtimestamp(event.created_at, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "instance_id": event.instance_id,
        "data": event.data,
    }


# -- share sessions: every status change goes through here ------------------


def share_created(conn: sqlite3.Connection, session: ShareSession, now: float) -> Event:
    sessions_store.create(conn, session)
    return emit(conn, session.instance_id, SHARE_CREATED, admin_view(session, now), now)


def share_updated(
    conn: sqlite3.Connection, session_id: str, changes: dict, now: float
) -> Event | None:
    """Apply an admin's changes to an active session; None when it is not active."""
    if not sessions_store.update(conn, session_id, now, changes):
        return None
    session = sessions_store.get(conn, session_id)
    assert session is not None
    return emit(conn, session.instance_id, SHARE_UPDATED, admin_view(session, now), now)


def end_share(
    conn: sqlite3.Connection, session_id: str, status: str, reason: str, now: float
) -> Event | None:
    """End an active session (completed, cancelled; completed/"arrived" on arrival)."""
    if not sessions_store.end(conn, session_id, status, reason, now):
        return None
    session = sessions_store.get(conn, session_id)
    assert session is not None
    event_type = SHARE_ARRIVED if reason == "arrived" else f"share.{status}"
    return emit(conn, session.instance_id, event_type, admin_view(session, now), now)


def expire_shares(conn: sqlite3.Connection, now: float) -> list[Event]:
    """Persist the expiry of every overdue session, one `share.expired` each."""
    expired = []
    for session_id in sessions_store.expire_overdue(conn, now):
        session = sessions_store.get(conn, session_id)
        assert session is not None
        expired.append(
            emit(conn, session.instance_id, SHARE_EXPIRED, admin_view(session, now), now)
        )
    return expired


# -- devices and trips -------------------------------------------------------


def device_online(
    conn: sqlite3.Connection,
    instance_id: str,
    device_token: str,
    latitude: float,
    longitude: float,
    fix_time: float,
    silent_since: float | None,
    now: float,
) -> Event:
    data = {
        "device_token": device_token,
        "latitude": latitude,
        "longitude": longitude,
        "fix_time": fix_time,
        "silent_since": silent_since,
    }
    return emit(conn, instance_id, DEVICE_ONLINE, data, now)


def trip_started(
    conn: sqlite3.Connection,
    instance_id: str,
    device_token: str,
    track_token: str,
    started_at: float,
    latitude: float,
    longitude: float,
    now: float,
) -> Event:
    data = {
        "device_token": device_token,
        "track_token": track_token,
        "started_at": started_at,
        "latitude": latitude,
        "longitude": longitude,
    }
    return emit(conn, instance_id, TRIP_STARTED, data, now)


def sweep_quiet(
    conn: sqlite3.Connection, now: float, split_gap_seconds: float, offline_after_seconds: float
) -> list[Event]:
    """`device.offline` for devices silent past offline_after, `trip.ended` for trips whose
    split gap passed, since the previous sweep (the first sweep only sets the watermarks);
    and the outbox pruned of events older than OUTBOX_KEPT_DAYS."""
    found: list[Event] = []
    offline_until = now - offline_after_seconds
    since = events_store.watermark(conn, OFFLINE_WATERMARK)
    if since is not None and offline_until > since:
        for token, instance_id, last_fix in events_store.devices_last_seen_between(
            conn, since, offline_until
        ):
            data = {"device_token": token, "last_fix_time": last_fix}
            found.append(emit(conn, instance_id, DEVICE_OFFLINE, data, now))
    if since is None or offline_until > since:
        events_store.set_watermark(conn, OFFLINE_WATERMARK, offline_until)

    ended_until = now - split_gap_seconds
    since = events_store.watermark(conn, TRIP_ENDED_WATERMARK)
    if since is not None and ended_until > since:
        for token, instance_id, track, started, ended, distance in events_store.trips_ended_between(
            conn, since, ended_until
        ):
            data = {
                "device_token": token,
                "track_token": track,
                "started_at": started,
                "ended_at": ended,
                "distance_m": distance,
            }
            found.append(emit(conn, instance_id, TRIP_ENDED, data, now))
    if since is None or ended_until > since:
        events_store.set_watermark(conn, TRIP_ENDED_WATERMARK, ended_until)
    events_store.prune(conn, now - OUTBOX_KEPT_DAYS * 86400)
    return found


# -- after the commit ----------------------------------------------------------


def announce(hub: Publisher, events: Iterable[Event]) -> None:
    """Tell the live side about committed events (call only after the commit)."""
    any_event = False
    for event in events:
        any_event = True
        reason = _SHARE_ENDS.get(event.type)
        if reason is not None:
            hub.publish(session_topic(event.data["id"]), "ended", SessionEnded(reason))
        elif event.type == SHARE_UPDATED:
            hub.publish(session_topic(event.data["id"]), "changed", SessionChanged())
        if event.webhook_id is None:
            hub.publish(events_topic(event.instance_id), event.seq, event)
    if any_event:
        hub.publish(OUTBOX_TOPIC, "new", None)
