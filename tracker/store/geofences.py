"""The geofences table, and which fences each device is inside."""

from __future__ import annotations

import sqlite3

from tracker import jsoncodec
from tracker.domain import StoredGeofence

_COLUMNS = "id, instance_id, name, shape, device_tokens, created_at"


def _geofence(row: sqlite3.Row) -> StoredGeofence:
    values = dict(row)
    values["shape"] = jsoncodec.loads(row["shape"])
    values["device_tokens"] = (
        jsoncodec.loads(row["device_tokens"]) if row["device_tokens"] is not None else None
    )
    return StoredGeofence(**values)


def _json(value: object) -> str | None:
    return None if value is None else jsoncodec.dumps(value).decode()


def create(conn: sqlite3.Connection, fence: StoredGeofence) -> None:
    conn.execute(
        f"INSERT INTO geofences ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (
            fence.id,
            fence.instance_id,
            fence.name,
            _json(fence.shape),
            _json(fence.device_tokens),
            fence.created_at,
        ),
    )


def get(conn: sqlite3.Connection, fence_id: str) -> StoredGeofence | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM geofences WHERE id = ?", (fence_id,)).fetchone()
    return _geofence(row) if row else None


def list_for_instance(conn: sqlite3.Connection, instance_id: str) -> list[StoredGeofence]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM geofences WHERE instance_id = ? ORDER BY created_at, id",
        (instance_id,),
    ).fetchall()
    return [_geofence(row) for row in rows]


def update(conn: sqlite3.Connection, fence_id: str, changes: dict) -> bool:
    """Change name, shape or device_tokens; a new shape forgets every device's state."""
    columns = {
        name: _json(value) if name in ("shape", "device_tokens") else value
        for name, value in changes.items()
    }
    if not columns:
        return get(conn, fence_id) is not None
    assignments = ", ".join(f"{name} = ?" for name in columns)
    cursor = conn.execute(
        f"UPDATE geofences SET {assignments} WHERE id = ?", [*columns.values(), fence_id]
    )
    if "shape" in changes:
        conn.execute("DELETE FROM geofence_presence WHERE geofence_id = ?", (fence_id,))
    return cursor.rowcount > 0


def delete(conn: sqlite3.Connection, fence_id: str) -> bool:
    return conn.execute("DELETE FROM geofences WHERE id = ?", (fence_id,)).rowcount > 0


def inside(conn: sqlite3.Connection, device_token: str) -> set[str]:
    """The fences a device is inside, as last decided."""
    return {
        row[0]
        for row in conn.execute(
            "SELECT geofence_id FROM geofence_presence WHERE device_token = ?", (device_token,)
        )
    }


def set_inside(
    conn: sqlite3.Connection, fence_id: str, device_token: str, is_inside: bool, now: float
) -> None:
    if is_inside:
        conn.execute(
            "INSERT INTO geofence_presence (device_token, geofence_id, since) VALUES (?, ?, ?)"
            " ON CONFLICT (device_token, geofence_id) DO UPDATE SET since = excluded.since",
            (device_token, fence_id, now),
        )
    else:
        conn.execute(
            "DELETE FROM geofence_presence WHERE device_token = ? AND geofence_id = ?",
            (device_token, fence_id),
        )


def generation(conn: sqlite3.Connection) -> int:
    """Moves with every change to any geofence, by any process (migration m011)."""
    return conn.execute("SELECT generation FROM geofence_generation").fetchone()[0]
