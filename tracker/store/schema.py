"""The schema, as numbered migrations recorded in the database (sqlite-utils Migrations).

A migration is never edited once released: a change to the schema is a new
function appended below, so an existing database file is brought forward at
start, step by step.
"""

from __future__ import annotations

import sqlite3

import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("tracker")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created_at REAL NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE devices (
            token TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
            ingest_key_hash TEXT NOT NULL UNIQUE,
            profile TEXT NOT NULL DEFAULT '{}',
            display_field TEXT NOT NULL DEFAULT 'full_name',
            created_at REAL NOT NULL,
            last_position_id INTEGER
        )"""
    )
    db.execute("CREATE INDEX devices_instance ON devices(instance_id, token)")
    db.execute(
        """
        CREATE TABLE trips (
            device_token TEXT NOT NULL REFERENCES devices(token) ON DELETE CASCADE,
            track_token TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            distance_m REAL NOT NULL DEFAULT 0,
            max_speed REAL,
            waypoint_count INTEGER NOT NULL DEFAULT 0,
            start_lat REAL NOT NULL,
            start_lon REAL NOT NULL,
            end_lat REAL NOT NULL,
            end_lon REAL NOT NULL,
            anchor_lat REAL NOT NULL,
            anchor_lon REAL NOT NULL,
            PRIMARY KEY (device_token, track_token)
        )"""
    )
    db.execute("CREATE INDEX trips_device_time ON trips(device_token, ended_at)")
    db.execute(
        """
        CREATE TABLE positions (
            id INTEGER PRIMARY KEY,
            device_token TEXT NOT NULL REFERENCES devices(token) ON DELETE CASCADE,
            track_token TEXT NOT NULL,
            ts REAL NOT NULL,
            lat REAL NOT NULL,
            lon REAL NOT NULL,
            speed REAL,
            heading REAL,
            accuracy REAL,
            altitude REAL,
            battery REAL,
            valid INTEGER NOT NULL DEFAULT 1,
            attributes TEXT,
            received_at REAL NOT NULL,
            UNIQUE (device_token, ts)
        )"""
    )
    db.execute("CREATE INDEX positions_trip ON positions(device_token, track_token, ts)")
    db.execute("CREATE INDEX positions_ts ON positions(ts)")
    db.execute(
        """
        CREATE TABLE share_sessions (
            id TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
            device_token TEXT NOT NULL REFERENCES devices(token) ON DELETE CASCADE,
            status TEXT NOT NULL,
            end_reason TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            ended_at REAL,
            recipient_name TEXT,
            notes TEXT,
            order_id TEXT,
            destination TEXT,
            share_config TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX share_sessions_instance ON share_sessions(instance_id, created_at)")
    db.execute("CREATE INDEX share_sessions_status ON share_sessions(status, expires_at)")
    db.execute(
        """
        CREATE TABLE server_keys (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )"""
    )


@migrations()
def m002_share_sessions_by_device(db: sqlite_utils.Database) -> None:
    db.execute("CREATE INDEX share_sessions_device ON share_sessions(device_token, status)")


@migrations()
def m003_users(db: sqlite_utils.Database) -> None:
    # instance_id NULL: a super-admin (or super-viewer) over every instance.
    db.execute(
        """
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            username TEXT NOT NULL UNIQUE COLLATE NOCASE,
            instance_id TEXT REFERENCES instances(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX users_instance ON users(instance_id, username)")


@migrations()
def m004_device_mqtt_topic(db: sqlite_utils.Database) -> None:
    # The topic a device's OwnTracks app publishes to over MQTT (tracker/ingest/mqtt.py).
    db.execute("ALTER TABLE devices ADD COLUMN mqtt_topic TEXT")
    db.execute("CREATE UNIQUE INDEX devices_mqtt_topic ON devices(mqtt_topic)")


@migrations()
def m005_events_and_webhooks(db: sqlite_utils.Database) -> None:
    # The outbox (tracker/events.py): seq orders every event; webhook_id targets one
    # webhook (a test event), NULL means every webhook of the instance that wants the type.
    db.execute(
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
            type TEXT NOT NULL,
            created_at REAL NOT NULL,
            data TEXT NOT NULL,
            webhook_id TEXT
        )"""
    )
    db.execute("CREATE INDEX events_instance ON events(instance_id, seq)")
    db.execute("CREATE INDEX trips_ended ON trips(ended_at)")
    # Where the sweepers of tracker/events.py have looked up to (device.offline, trip.ended).
    db.execute(
        """
        CREATE TABLE event_watermarks (
            name TEXT PRIMARY KEY,
            until REAL NOT NULL
        )"""
    )
    db.execute(
        """
        CREATE TABLE webhooks (
            id TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
            url TEXT NOT NULL,
            event_types TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            disabled_reason TEXT,
            secret TEXT NOT NULL,
            description TEXT,
            created_at REAL NOT NULL,
            cursor INTEGER NOT NULL,
            failing_since REAL,
            next_attempt_at REAL
        )"""
    )
    db.execute("CREATE INDEX webhooks_instance ON webhooks(instance_id, created_at)")
    db.execute(
        """
        CREATE TABLE webhook_deliveries (
            id INTEGER PRIMARY KEY,
            webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            attempted_at REAL NOT NULL,
            duration_ms REAL NOT NULL,
            status_code INTEGER,
            error TEXT,
            outcome TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries(webhook_id, id)")


@migrations()
def m006_geofences(db: sqlite_utils.Database) -> None:
    # shape: {"circle": {...}} or {"polygon": GeoJSON Polygon}; device_tokens NULL: every device.
    db.execute(
        """
        CREATE TABLE geofences (
            id TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            shape TEXT NOT NULL,
            device_tokens TEXT,
            created_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX geofences_instance ON geofences(instance_id, created_at)")
    # The fences each device is inside, as last decided (with hysteresis) on a live fix;
    # no row: outside (or never seen inside).
    db.execute(
        """
        CREATE TABLE geofence_presence (
            device_token TEXT NOT NULL REFERENCES devices(token) ON DELETE CASCADE,
            geofence_id TEXT NOT NULL REFERENCES geofences(id) ON DELETE CASCADE,
            since REAL NOT NULL,
            PRIMARY KEY (device_token, geofence_id)
        )"""
    )
    db.execute("CREATE INDEX geofence_presence_fence ON geofence_presence(geofence_id)")


@migrations()
def m007_device_generation(db: sqlite_utils.Database) -> None:
    # Bumped by every change to a device but its live position (last_position_id,
    # which each ingest commit moves), whichever process makes it: the server's
    # cache of devices (tracker/store/hotreads.py) reads it when SQLite says that
    # another connection committed, and forgets its devices when it moved. A later
    # column that the cache reads needs a migration that adds it to the UPDATE trigger.
    db.execute(
        "CREATE TABLE device_generation"
        " (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO device_generation (id, generation) VALUES (1, 0)")
    bump = "BEGIN UPDATE device_generation SET generation = generation + 1; END"
    db.execute(f"CREATE TRIGGER devices_inserted AFTER INSERT ON devices {bump}")
    db.execute(f"CREATE TRIGGER devices_deleted AFTER DELETE ON devices {bump}")
    db.execute(
        "CREATE TRIGGER devices_updated AFTER UPDATE OF"
        " token, instance_id, ingest_key_hash, profile, display_field, mqtt_topic"
        f" ON devices {bump}"
    )


@migrations()
def m008_no_time_index_on_positions(db: sqlite_utils.Database) -> None:
    # positions(ts) served only the retention sweep and one metric, both now read by
    # device through UNIQUE(device_token, ts); keeping it up cost every insert about a
    # third of its time (the writer's largest cost, issue #20).
    db.execute("DROP INDEX IF EXISTS positions_ts")


@migrations()
def m009_no_trip_index_on_positions(db: sqlite_utils.Database) -> None:
    # A trip's fixes are read through UNIQUE(device_token, ts) within the trip's
    # [started_at, ended_at] (tracker/store/positions.py); the index by trip cost every
    # insert a quarter of its time (issue #20).
    db.execute("DROP INDEX IF EXISTS positions_trip")


@migrations()
def m010_leases(db: sqlite_utils.Database) -> None:
    # Who runs each run-once job (the sweeper, the pruner, webhook delivery) when
    # several processes share the database, and until when (tracker/leases.py).
    db.execute(
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_at REAL NOT NULL
        )"""
    )


@migrations()
def m011_geofence_generation(db: sqlite_utils.Database) -> None:
    # Bumped by every change to a geofence, whichever process makes it: the writer's
    # index of fences (tracker/geofences.py) reads it once per commit and reloads the
    # fences when it moved, so a fence changed through another process counts at once.
    db.execute(
        "CREATE TABLE geofence_generation"
        " (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO geofence_generation (id, generation) VALUES (1, 0)")
    bump = "BEGIN UPDATE geofence_generation SET generation = generation + 1; END"
    for event, name in (("INSERT", "inserted"), ("UPDATE", "updated"), ("DELETE", "deleted")):
        db.execute(f"CREATE TRIGGER geofences_{name} AFTER {event} ON geofences {bump}")


def migrate(conn: sqlite3.Connection) -> None:
    """Apply every pending migration to the database behind conn."""
    migrations.apply(sqlite_utils.Database(conn))
