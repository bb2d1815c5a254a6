"""The instances table: fleets (tenants), each with a UUID."""

from __future__ import annotations

import sqlite3
import time
import uuid

from tracker.domain import Instance


def create(conn: sqlite3.Connection, name: str, instance_id: str | None = None) -> Instance:
    instance = Instance(id=instance_id or str(uuid.uuid4()), name=name, created_at=time.time())
    conn.execute(
        "INSERT INTO instances (id, name, created_at) VALUES (?, ?, ?)",
        (instance.id, instance.name, instance.created_at),
    )
    return instance


def get(conn: sqlite3.Connection, instance_id: str) -> Instance | None:
    row = conn.execute(
        "SELECT id, name, created_at FROM instances WHERE id = ?", (instance_id,)
    ).fetchone()
    return Instance(**dict(row)) if row else None


def device_count(conn: sqlite3.Connection, instance_id: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM devices WHERE instance_id = ?", (instance_id,)
    ).fetchone()[0]


def by_name(conn: sqlite3.Connection, name: str) -> Instance | None:
    row = conn.execute(
        "SELECT id, name, created_at FROM instances WHERE name = ? ORDER BY created_at LIMIT 1",
        (name,),
    ).fetchone()
    return Instance(**dict(row)) if row else None
