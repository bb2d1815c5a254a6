"""The positions table: insert a checked batch, read the latest fix and a trip's fixes, prune.

Every read of a trip's fixes is bounded: a fix's two neighbours in time (for
the writer), or one page (for `/tracks` and the exports), each an index seek on
UNIQUE(device_token, ts) within the trip's [started_at, ended_at], whatever the
trip's length. A device's trips seldom overlap in time, so the rows of other trips
such a scan steps over are few; there is no index by trip, which every insert
would pay for (migration m009).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from tracker import jsoncodec
from tracker.domain import DeviceFix
from tracker.models import Position
from tracker.trips import Trip

_INSERT = (
    "INSERT INTO positions (device_token, track_token, ts, lat, lon, speed, heading,"
    " accuracy, altitude, battery, valid, attributes, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_TIMESTAMPS_PER_QUERY = 500  # well under SQLite's bound-parameter limit
_COLUMNS = (
    "ts, lat, lon, speed, heading, accuracy, altitude, battery, valid, attributes, track_token"
)


def _position(row: sqlite3.Row) -> Position:
    return Position(
        latitude=row["lat"],
        longitude=row["lon"],
        timestamp=row["ts"],
        speed=row["speed"],
        heading=row["heading"],
        accuracy=row["accuracy"],
        altitude=row["altitude"],
        battery=row["battery"],
        track_token=row["track_token"],
        valid=bool(row["valid"]),
        attributes=jsoncodec.loads(row["attributes"]) if row["attributes"] else {},
    )


def existing_timestamps(
    conn: sqlite3.Connection, device_token: str, timestamps: Iterable[float]
) -> set[float]:
    """Which of these timestamps the device already has a fix at (one seek each, not a
    range scan: a request spanning a long trip costs its own size)."""
    wanted = list(timestamps)
    found: set[float] = set()
    for low in range(0, len(wanted), _TIMESTAMPS_PER_QUERY):
        chunk = wanted[low : low + _TIMESTAMPS_PER_QUERY]
        rows = conn.execute(
            "SELECT ts FROM positions WHERE device_token = ?"
            f" AND ts IN ({', '.join('?' * len(chunk))})",
            (device_token, *chunk),
        )
        found.update(row[0] for row in rows)
    return found


def insert_many(
    conn: sqlite3.Connection, rows: Iterable[tuple[str, str, Position]], received_at: float
) -> None:
    """Insert (device_token, track_token, position) rows with one executemany."""
    conn.executemany(
        _INSERT,
        [
            (
                device_token,
                track_token,
                p.timestamp,
                p.latitude,
                p.longitude,
                p.speed,
                p.heading,
                p.accuracy,
                p.altitude,
                p.battery,
                int(p.valid),
                jsoncodec.dumps(p.attributes).decode() if p.attributes else None,
                received_at,
            )
            for device_token, track_token, p in rows
        ],
    )


def latest_timestamp(conn: sqlite3.Connection, device_token: str) -> float | None:
    row = conn.execute(
        "SELECT p.ts FROM devices d JOIN positions p ON p.id = d.last_position_id"
        " WHERE d.token = ?",
        (device_token,),
    ).fetchone()
    return row[0] if row else None


def newest_of_device(conn: sqlite3.Connection, device_token: str) -> float | None:
    """When the device's newest stored fix was taken, valid or not (one index seek)."""
    return conn.execute(
        "SELECT max(ts) FROM positions WHERE device_token = ?", (device_token,)
    ).fetchone()[0]


def set_latest(conn: sqlite3.Connection, device_token: str, timestamp: float) -> None:
    conn.execute(
        "UPDATE devices SET last_position_id ="
        " (SELECT id FROM positions WHERE device_token = ? AND ts = ?) WHERE token = ?",
        (device_token, timestamp, device_token),
    )


def latest(conn: sqlite3.Connection, device_token: str) -> Position | None:
    row = conn.execute(
        f"SELECT {', '.join('p.' + c.strip() for c in _COLUMNS.split(','))} FROM devices d"
        " JOIN positions p ON p.id = d.last_position_id WHERE d.token = ?",
        (device_token,),
    ).fetchone()
    return _position(row) if row else None


def latest_for_instance(conn: sqlite3.Connection, instance_id: str) -> list[DeviceFix]:
    """Every device of the instance that has a live position, with its naming fields."""
    columns = ", ".join("p." + c.strip() for c in _COLUMNS.split(","))
    rows = conn.execute(
        f"SELECT d.token AS device_token, d.instance_id, d.profile, d.display_field, {columns}"
        " FROM devices d JOIN positions p ON p.id = d.last_position_id WHERE d.instance_id = ?",
        (instance_id,),
    ).fetchall()
    return [
        DeviceFix(
            device_token=r["device_token"],
            instance_id=r["instance_id"],
            profile=jsoncodec.loads(r["profile"]),
            display_field=r["display_field"],
            position=_position(r),
            track_token=r["track_token"],
        )
        for r in rows
    ]


def neighbours(
    conn: sqlite3.Connection, trip: Trip, timestamp: float
) -> tuple[Position | None, Position | None]:
    """The trip's stored fixes just before and just after `timestamp`."""
    key = (trip.device_token, trip.track_token)
    before = conn.execute(
        f"SELECT {_COLUMNS} FROM positions WHERE device_token = ? AND track_token = ?"
        " AND ts < ? AND ts >= ? ORDER BY ts DESC LIMIT 1",
        (*key, timestamp, trip.started_at),
    ).fetchone()
    after = conn.execute(
        f"SELECT {_COLUMNS} FROM positions WHERE device_token = ? AND track_token = ?"
        " AND ts > ? AND ts <= ? ORDER BY ts LIMIT 1",
        (*key, timestamp, trip.ended_at),
    ).fetchone()
    return (_position(before) if before else None, _position(after) if after else None)


def trip_page(
    conn: sqlite3.Connection, trip: Trip, after: float | None, limit: int
) -> list[Position]:
    """Up to `limit` of the trip's fixes later than `after` (all when None), in time order."""
    return trip_window_page(
        conn, trip, after if after is not None else float("-inf"), trip.ended_at, limit
    )


def last_since(
    conn: sqlite3.Connection, device_token: str, since: float, limit: int
) -> list[Position]:
    """The device's last `limit` positions at or after `since`, in time order."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM positions WHERE device_token = ? AND ts >= ?"
        " ORDER BY ts DESC LIMIT ?",
        (device_token, since, limit),
    ).fetchall()
    return [_position(row) for row in reversed(rows)]


def recent(conn: sqlite3.Connection, device_token: str, since: float) -> list[Position]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM positions WHERE device_token = ? AND ts >= ? ORDER BY ts",
        (device_token, since),
    ).fetchall()
    return [_position(row) for row in rows]


def count_in_trip(conn: sqlite3.Connection, trip: Trip, low: float, high: float) -> int:
    """How many of the trip's fixes lie in [low, high] (an index range count)."""
    return conn.execute(
        "SELECT COUNT(*) FROM positions WHERE device_token = ? AND track_token = ?"
        " AND ts BETWEEN ? AND ?",
        (
            trip.device_token,
            trip.track_token,
            max(low, trip.started_at),
            min(high, trip.ended_at),
        ),
    ).fetchone()[0]


def trip_window_page(
    conn: sqlite3.Connection, trip: Trip, after: float, high: float, limit: int
) -> list[Position]:
    """Up to `limit` of the trip's fixes in (after, high], in time order: one page of an
    export. A device has one fix per timestamp, so `ts` alone is the keyset."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM positions WHERE device_token = ? AND track_token = ?"
        " AND ts > ? AND ts >= ? AND ts <= ? ORDER BY ts LIMIT ?",
        (
            trip.device_token,
            trip.track_token,
            after,
            trip.started_at,
            min(high, trip.ended_at),
            limit,
        ),
    ).fetchall()
    return [_position(row) for row in rows]


def prune(conn: sqlite3.Connection, before: float, limit: int) -> int:
    """Delete up to `limit` positions older than `before` (never a device's latest)."""
    # Device by device (SQLite's CROSS JOIN keeps devices first), through
    # UNIQUE(device_token, ts): one seek for a device with nothing to prune. There is no
    # index on ts alone: every insert would pay for it. PostgreSQL plans joins itself.
    join = "JOIN" if getattr(conn, "dialect", "sqlite") == "postgresql" else "CROSS JOIN"
    return conn.execute(
        f"DELETE FROM positions WHERE id IN (SELECT p.id FROM devices d {join}"
        " positions p ON p.device_token = d.token AND p.ts < ?"
        " WHERE (d.last_position_id IS NULL OR p.id <> d.last_position_id) LIMIT ?)",
        (before, limit),
    ).rowcount


def newest_timestamp(conn: sqlite3.Connection, now: float) -> float | None:
    """When the newest stored fix not dated after now was taken (for the metrics)."""
    return conn.execute(
        "SELECT max((SELECT max(ts) FROM positions WHERE device_token = d.token AND ts <= ?))"
        " FROM devices d",
        (now,),
    ).fetchone()[0]
