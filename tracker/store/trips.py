"""The trips table: one row of running aggregates per trip."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from tracker.trips import Trip

_COLUMNS = (
    "device_token, track_token, started_at, ended_at, distance_m, max_speed, waypoint_count,"
    " start_lat, start_lon, end_lat, end_lon, anchor_lat, anchor_lon"
)


def _trip(row: sqlite3.Row) -> Trip:
    return Trip(**dict(row))


def near(conn: sqlite3.Connection, device_token: str, low: float, high: float) -> list[Trip]:
    """The device's trips that overlap [low, high]."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM trips WHERE device_token = ? AND ended_at >= ? AND started_at <= ?",
        (device_token, low, high),
    ).fetchall()
    return [_trip(row) for row in rows]


def count_in_window(conn: sqlite3.Connection, device_token: str, low: float, high: float) -> int:
    return conn.execute(
        "SELECT COUNT(*) FROM trips WHERE device_token = ? AND ended_at >= ? AND started_at <= ?",
        (device_token, low, high),
    ).fetchone()[0]


def newest_in_window(
    conn: sqlite3.Connection, device_token: str, low: float, high: float, limit: int, offset: int
) -> list[Trip]:
    """One page of the device's trips that overlap [low, high], newest (latest end) first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM trips WHERE device_token = ? AND ended_at >= ? AND started_at <= ?"
        " ORDER BY ended_at DESC, track_token LIMIT ? OFFSET ?",
        (device_token, low, high, limit, offset),
    ).fetchall()
    return [_trip(row) for row in rows]


def oldest_in_window_after(
    conn: sqlite3.Connection,
    device_token: str,
    low: float,
    high: float,
    after: tuple[float, str] | None,
    limit: int,
) -> list[Trip]:
    """Up to `limit` trips overlapping [low, high] in order of start, after the
    (started_at, track_token) key `after` (keyset paging, for exports)."""
    start, token = after if after is not None else (float("-inf"), "")
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM trips WHERE device_token = ? AND ended_at >= ? AND started_at <= ?"
        " AND (started_at, track_token) > (?, ?) ORDER BY started_at, track_token LIMIT ?",
        (device_token, low, high, start, token, limit),
    ).fetchall()
    return [_trip(row) for row in rows]


def get(conn: sqlite3.Connection, device_token: str, track_token: str) -> Trip | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM trips WHERE device_token = ? AND track_token = ?",
        (device_token, track_token),
    ).fetchone()
    return _trip(row) if row else None


def latest(conn: sqlite3.Connection, device_token: str) -> Trip | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM trips WHERE device_token = ? ORDER BY ended_at DESC LIMIT 1",
        (device_token,),
    ).fetchone()
    return _trip(row) if row else None


_SAVE = (
    f"INSERT INTO trips ({_COLUMNS}) VALUES ({', '.join('?' * 13)})"
    " ON CONFLICT (device_token, track_token) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name}"
        for name in (column.strip() for column in _COLUMNS.split(","))
        if name not in ("device_token", "track_token")
    )
)


def save(conn: sqlite3.Connection, trips: Iterable[Trip]) -> None:
    conn.executemany(
        _SAVE,
        [
            (
                t.device_token,
                t.track_token,
                t.started_at,
                t.ended_at,
                t.distance_m,
                t.max_speed,
                t.waypoint_count,
                t.start_lat,
                t.start_lon,
                t.end_lat,
                t.end_lon,
                t.anchor_lat,
                t.anchor_lon,
            )
            for t in trips
        ],
    )


def prune_empty(conn: sqlite3.Connection, before: float) -> int:
    """Delete trips that ended before `before` and have no positions left."""
    return conn.execute(
        "DELETE FROM trips WHERE ended_at < ? AND NOT EXISTS (SELECT 1 FROM positions p"
        " WHERE p.device_token = trips.device_token AND p.track_token = trips.track_token"
        " AND p.ts BETWEEN trips.started_at AND trips.ended_at)",
        (before,),
    ).rowcount
