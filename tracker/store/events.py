"""The events outbox and the sweepers' watermarks: append, read in order, find the quiet."""

from __future__ import annotations

import sqlite3

from tracker import jsoncodec
from tracker.domain import StoredEvent
from tracker.store import pg_schema

_COLUMNS = "seq, id, instance_id, type, created_at, data, webhook_id"


def _event(row: sqlite3.Row) -> StoredEvent:
    values = dict(row)
    values["data"] = jsoncodec.loads(row["data"])
    return StoredEvent(**values)


def append(
    conn: sqlite3.Connection,
    event_id: str,
    instance_id: str,
    event_type: str,
    created_at: float,
    data: dict,
    webhook_id: str | None = None,
) -> int:
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        # Readers follow the outbox by seq (webhooks' cursors): several processes must
        # commit its rows in seq order, so appends take turns until each one commits.
        conn.execute(
            "SELECT pg_advisory_xact_lock(?, ?)", (pg_schema.LOCK_CLASS, pg_schema.EVENTS_LOCK)
        )
    return conn.execute(
        "INSERT INTO events (id, instance_id, type, created_at, data, webhook_id)"
        " VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
        (
            event_id,
            instance_id,
            event_type,
            created_at,
            jsoncodec.dumps(data).decode(),
            webhook_id,
        ),
    ).fetchone()[0]


def last_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]


def next_for_webhook(
    conn: sqlite3.Connection, instance_id: str, webhook_id: str, after: int, types: list[str]
) -> StoredEvent | None:
    """The oldest event after `after` that this webhook wants (its types, or aimed at it)."""
    marks = ", ".join("?" * len(types)) or "NULL"
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE instance_id = ? AND seq > ?"
        f" AND ((webhook_id IS NULL AND type IN ({marks})) OR webhook_id = ?)"
        " ORDER BY seq LIMIT 1",
        [instance_id, after, *types, webhook_id],
    ).fetchone()
    return _event(row) if row else None


def recent(conn: sqlite3.Connection, instance_id: str, limit: int) -> list[StoredEvent]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM events WHERE instance_id = ? AND webhook_id IS NULL"
        " ORDER BY seq DESC LIMIT ?",
        (instance_id, limit),
    ).fetchall()
    return [_event(row) for row in rows]


def watermark(conn: sqlite3.Connection, name: str) -> float | None:
    """Where a sweeper looked up to; on PostgreSQL, held until the transaction ends (the
    sweeper reads and moves it in one write, as SQLite's BEGIN IMMEDIATE serializes)."""
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        conn.execute(
            "SELECT pg_advisory_xact_lock(?, ?)", (pg_schema.LOCK_CLASS, pg_schema.WATERMARKS_LOCK)
        )
    row = conn.execute("SELECT until FROM event_watermarks WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def set_watermark(conn: sqlite3.Connection, name: str, until: float) -> None:
    conn.execute(
        "INSERT INTO event_watermarks (name, until) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET until = excluded.until",
        (name, until),
    )


def devices_last_seen_between(
    conn: sqlite3.Connection, low: float, high: float
) -> list[tuple[str, str, float]]:
    """(device token, instance, last fix time) of devices whose live fix is in (low, high]."""
    return [
        (row[0], row[1], row[2])
        for row in conn.execute(
            "SELECT d.token, d.instance_id, p.ts FROM devices d"
            " JOIN positions p ON p.id = d.last_position_id WHERE p.ts > ? AND p.ts <= ?"
            " ORDER BY p.ts",
            (low, high),
        )
    ]


def trips_ended_between(
    conn: sqlite3.Connection, low: float, high: float
) -> list[tuple[str, str, str, float, float, float]]:
    """(device, instance, track, started, ended, distance) of trips whose end is in (low, high]."""
    return [
        tuple(row)
        for row in conn.execute(
            "SELECT t.device_token, d.instance_id, t.track_token, t.started_at, t.ended_at,"
            " t.distance_m FROM trips t JOIN devices d ON d.token = t.device_token"
            " WHERE t.ended_at > ? AND t.ended_at <= ? ORDER BY t.ended_at",
            (low, high),
        )
    ]


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Drop events older than `before` (delivered or given up long ago)."""
    return conn.execute("DELETE FROM events WHERE created_at < ?", (before,)).rowcount
