"""The devices table: registration, ingest keys (hashed), MQTT topics, profiles, display fields."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
import uuid

from tracker import jsoncodec
from tracker.domain import Device
from tracker.models import Position
from tracker.store import pg_schema, positions

INGEST_KEY_BYTES = 24  # 192 bits, shown once, stored as a SHA-256 hash


class DuplicateDevice(Exception):
    """A device with this token already exists."""


class DuplicateMqttTopic(Exception):
    """Another device already has this MQTT topic."""


def new_ingest_key() -> str:
    return secrets.token_urlsafe(INGEST_KEY_BYTES)


def hash_ingest_key(key: str) -> str:
    # The key is 192 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _device(row: sqlite3.Row) -> Device:
    return Device(
        token=row["token"],
        instance_id=row["instance_id"],
        profile=jsoncodec.loads(row["profile"]),
        display_field=row["display_field"],
        created_at=row["created_at"],
        mqtt_topic=row["mqtt_topic"],
    )


_COLUMNS = "token, instance_id, profile, display_field, created_at, mqtt_topic"


def create(
    conn: sqlite3.Connection,
    instance_id: str,
    token: str,
    profile: dict[str, str] | None = None,
    display_field: str = "full_name",
    mqtt_topic: str | None = None,
) -> tuple[Device, str]:
    """Register a device; returns it and its ingest key (the only time the key is seen).

    DuplicateDevice if the token is taken, DuplicateMqttTopic if the topic is.
    """
    key = new_ingest_key()
    device = Device(
        token=token,
        instance_id=instance_id,
        profile=dict(profile or {}),
        display_field=display_field,
        created_at=time.time(),
        mqtt_topic=mqtt_topic,
    )
    try:
        conn.execute(
            "INSERT INTO devices (token, instance_id, ingest_key_hash, profile, display_field,"
            " created_at, mqtt_topic) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                device.token,
                device.instance_id,
                hash_ingest_key(key),
                jsoncodec.dumps(device.profile).decode(),
                device.display_field,
                device.created_at,
                device.mqtt_topic,
            ),
        )
    except sqlite3.IntegrityError as error:
        if "mqtt_topic" in str(error):
            raise DuplicateMqttTopic(mqtt_topic) from None
        raise DuplicateDevice(token) from None
    return device, key


def register_with_key(conn: sqlite3.Connection, instance_id: str, key: str) -> Device | None:
    """Auto-registration (trials only): a new device whose ingest key is the one it sent."""
    if conn.execute("SELECT 1 FROM instances WHERE id = ?", (instance_id,)).fetchone() is None:
        return None
    device = Device(token=str(uuid.uuid4()), instance_id=instance_id, created_at=time.time())
    conn.execute(
        "INSERT INTO devices (token, instance_id, ingest_key_hash, created_at) VALUES (?, ?, ?, ?)",
        (device.token, instance_id, hash_ingest_key(key), device.created_at),
    )
    return device


def lock_for_ingest(conn: sqlite3.Connection, tokens: list[str]) -> None:
    """Make other processes' ingest of these devices wait until this transaction ends.

    SQLite's writer already holds the whole database (BEGIN IMMEDIATE). On
    PostgreSQL, one transaction-scoped advisory lock per device, taken in
    sorted order so two processes never wait on each other in a cycle, before
    anything of the device is read: two processes ingesting one device never
    split or double a trip, and a duplicate is always seen.
    """
    if not _is_postgresql(conn):
        return
    for token in sorted(set(tokens)):
        conn.execute(
            "SELECT pg_advisory_xact_lock(?, hashtext(?))", (pg_schema.DEVICE_LOCK_CLASS, token)
        )


def get(conn: sqlite3.Connection, token: str) -> Device | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE token = ?", (token,)).fetchone()
    return _device(row) if row else None


def by_ingest_key(conn: sqlite3.Connection, key: str) -> Device | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE ingest_key_hash = ?", (hash_ingest_key(key),)
    ).fetchone()
    return _device(row) if row else None


def ingest_key_hash(conn: sqlite3.Connection, token: str) -> str | None:
    """The stored hash of the device's ingest key (what a session cookie is bound to)."""
    row = conn.execute("SELECT ingest_key_hash FROM devices WHERE token = ?", (token,)).fetchone()
    return row[0] if row else None


def by_mqtt_topic(conn: sqlite3.Connection, topic: str) -> Device | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE mqtt_topic = ?", (topic,)).fetchone()
    return _device(row) if row else None


def set_mqtt_topic(conn: sqlite3.Connection, token: str, topic: str | None) -> bool:
    """Set (or with None clear) a device's MQTT topic; DuplicateMqttTopic if another has it."""
    try:
        cursor = conn.execute("UPDATE devices SET mqtt_topic = ? WHERE token = ?", (topic, token))
    except sqlite3.IntegrityError:
        raise DuplicateMqttTopic(topic) from None
    return cursor.rowcount > 0


def rotate_ingest_key(conn: sqlite3.Connection, token: str) -> str | None:
    key = new_ingest_key()
    cursor = conn.execute(
        "UPDATE devices SET ingest_key_hash = ? WHERE token = ?", (hash_ingest_key(key), token)
    )
    return key if cursor.rowcount else None


def delete(conn: sqlite3.Connection, token: str) -> bool:
    conn.execute("DELETE FROM share_sessions WHERE device_token = ?", (token,))
    conn.execute("DELETE FROM positions WHERE device_token = ?", (token,))
    conn.execute("DELETE FROM trips WHERE device_token = ?", (token,))
    return conn.execute("DELETE FROM devices WHERE token = ?", (token,)).rowcount > 0


def set_profile(conn: sqlite3.Connection, token: str, profile: dict[str, str]) -> bool:
    cursor = conn.execute(
        "UPDATE devices SET profile = ? WHERE token = ?",
        (jsoncodec.dumps(profile).decode(), token),
    )
    return cursor.rowcount > 0


def set_display_field(conn: sqlite3.Connection, token: str, display_field: str) -> bool:
    cursor = conn.execute(
        "UPDATE devices SET display_field = ? WHERE token = ?", (display_field, token)
    )
    return cursor.rowcount > 0


def list_for_instance(
    conn: sqlite3.Connection, instance_id: str, limit: int, offset: int
) -> tuple[list[Device], int]:
    total = conn.execute(
        "SELECT count(*) FROM devices WHERE instance_id = ?", (instance_id,)
    ).fetchone()[0]
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE instance_id = ? ORDER BY token LIMIT ? OFFSET ?",
        (instance_id, limit, offset),
    ).fetchall()
    return [_device(row) for row in rows], total


_FALLBACK_FIELDS = ("full_name", "nickname", "email", "client_id")


def _is_postgresql(conn) -> bool:
    return getattr(conn, "dialect", "sqlite") == "postgresql"


def _display_name_sql(postgresql: bool = False) -> str:
    """tracker.profiles.display_value in SQL: the chosen field, the fallbacks, the token."""
    if postgresql:  # the profile is JSON text; ->> reads a top-level field as text
        values = ["profile::jsonb ->> display_field"] + [
            f"profile::jsonb ->> '{name}'" for name in _FALLBACK_FIELDS
        ]
    else:
        values = [
            f"json_extract(profile, {path})"
            for path in ["'$.' || display_field"] + [f"'$.{name}'" for name in _FALLBACK_FIELDS]
        ]
    choices = ", ".join(f"nullif(trim({value}), '')" for value in values)
    return f"coalesce({choices}, token)"


def _json_array_sql(conn) -> str:
    """The values of a JSON array parameter, as a table of one column `value`."""
    if _is_postgresql(conn):
        return "SELECT value FROM jsonb_array_elements_text(?::jsonb)"
    return "SELECT value FROM json_each(?)"


def search(
    conn: sqlite3.Connection, instance_id: str, q: str | None, limit: int, offset: int
) -> tuple[list[tuple[Device, Position | None]], int]:
    """A page of the instance's devices by display name, each with its last position.

    `q` keeps the devices whose token or display name contains it (any case).
    """
    postgresql = _is_postgresql(conn)
    name = _display_name_sql(postgresql)
    where = "instance_id = ?"
    params: list[object] = [instance_id]
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        like = "ILIKE" if postgresql else "LIKE"  # SQLite's LIKE ignores (ASCII) case
        where += f" AND (token {like} ? ESCAPE '\\' OR {name} {like} ? ESCAPE '\\')"
        params += [pattern, pattern]
    # SQLite compares text by its bytes; a PostgreSQL database may sort by a locale
    order = (
        f'lower({name}) COLLATE "C", token COLLATE "C"' if postgresql else f"lower({name}), token"
    )
    total = conn.execute(f"SELECT count(*) FROM devices WHERE {where}", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return [(device, positions.latest(conn, device.token)) for device in map(_device, rows)], total


class MissingDevices(Exception):
    """Some devices named in an all-or-nothing change are not in the instance."""

    def __init__(self, tokens: list[str]):
        super().__init__(", ".join(tokens))
        self.tokens = tokens


def in_instance(conn: sqlite3.Connection, instance_id: str, tokens: list[str]) -> dict[str, Device]:
    """The devices among `tokens` that belong to the instance, by token (others are left out)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE instance_id = ?"
        f" AND token IN ({_json_array_sql(conn)})",
        (instance_id, jsoncodec.dumps(tokens).decode()),
    ).fetchall()
    return {row["token"]: _device(row) for row in rows}


def all_in_instance(conn: sqlite3.Connection, instance_id: str) -> list[Device]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE instance_id = ? ORDER BY token", (instance_id,)
    ).fetchall()
    return [_device(row) for row in rows]


def set_display_fields(
    conn: sqlite3.Connection, instance_id: str, display_fields: dict[str, str]
) -> list[Device]:
    """Set many devices' display fields at once, or none: MissingDevices when any is not there.

    The check and the updates share the caller's transaction, so a device
    deleted meanwhile cannot leave the change half done.
    """
    tokens = list(display_fields)
    present = in_instance(conn, instance_id, tokens)
    missing = [token for token in tokens if token not in present]
    if missing:
        raise MissingDevices(missing)
    conn.executemany(
        "UPDATE devices SET display_field = ? WHERE token = ?",
        [(display_field, token) for token, display_field in display_fields.items()],
    )
    updated = in_instance(conn, instance_id, tokens)
    return [updated[token] for token in tokens]


def set_profiles(
    conn: sqlite3.Connection, profiles: dict[str, dict[str, str]]
) -> dict[str, Device]:
    """Replace the profiles of several devices; returns the devices still there, updated."""
    conn.executemany(
        "UPDATE devices SET profile = ? WHERE token = ?",
        [(jsoncodec.dumps(profile).decode(), token) for token, profile in profiles.items()],
    )
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM devices WHERE token IN ({_json_array_sql(conn)})",
        (jsoncodec.dumps(list(profiles)).decode(),),
    ).fetchall()
    return {row["token"]: _device(row) for row in rows}
