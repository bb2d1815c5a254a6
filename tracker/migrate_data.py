"""`tracker migrate-data --from URL --to URL`: move an installation to another database.

Copies every table that holds data (instances, users, devices with their
ingest keys, positions, trips, share sessions, geofences, webhooks and their
deliveries, the events outbox and its watermarks, the server's own keys),
keeping every id, typically from the SQLite file of a single server to the
PostgreSQL database of several (docs/deployment.md). The target is migrated
to the current schema when opened and must hold no instance yet; the source
is migrated too (an older file is brought up to date first) and otherwise only
read. Everything is copied in one transaction on the target, each table
streamed in key order PAGE_ROWS rows at a time, so a failure leaves the target as it was. Then
the target's id sequences are moved past the copied ids, and every table's
rows are counted on both sides: the command fails when any count differs.
What is not data is not copied: the run-once leases (held by running
processes), the device generation counter and the migration bookkeeping.

Stop the servers on the source first: rows written during the copy would be
left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tracker.config import StorageSettings
from tracker.store import open_database

PAGE_ROWS = 5_000

# In an order that satisfies every foreign key, each with the key it is paged by.
TABLES: list[tuple[str, str]] = [
    ("instances", "id"),
    ("users", "id"),
    ("devices", "token"),
    ("trips", "device_token, track_token"),
    ("positions", "id"),
    ("share_sessions", "id"),
    ("geofences", "id"),
    ("geofence_presence", "device_token, geofence_id"),
    ("webhooks", "id"),
    ("events", "seq"),
    ("webhook_deliveries", "id"),
    ("event_watermarks", "name"),
    ("server_keys", "name"),
]
# Rows a fresh database may already have (made on first open): replaced by the source's.
REPLACED = {"event_watermarks", "server_keys"}


class MigrationRefused(Exception):
    """The target is not empty, or is the source: nothing was copied."""


@dataclass(frozen=True)
class Copied:
    table: str
    rows: int


def migrate_data(
    source_url: str, target_url: str, progress: Callable[[Copied], None] = lambda _: None
) -> list[Copied]:
    """Copy every table from source to target (see the module doc); the rows per table."""
    if _same(source_url, target_url):
        raise MigrationRefused("--from and --to name the same database")
    source = open_database(StorageSettings(url=source_url))
    try:
        target = open_database(StorageSettings(url=target_url))
        try:
            held = target.read_sync(_count, "instances")
            if held:
                raise MigrationRefused(
                    f"the target already holds data ({held} instance(s)): migrate-data"
                    " fills an empty database"
                )
            copied = target.write_sync(
                lambda target_conn: source.read_sync(
                    _copy_all, target_conn, target.dialect, progress
                )
            )
            for each in copied:
                stored = target.read_sync(_count, each.table)
                if stored != each.rows:
                    raise AssertionError(
                        f"{each.table}: {each.rows} rows read from the source,"
                        f" {stored} in the target"
                    )
            return copied
        finally:
            target.close()
    finally:
        source.close()


def _same(source_url: str, target_url: str) -> bool:
    source, target = StorageSettings(url=source_url), StorageSettings(url=target_url)
    if source.engine == "sqlite" and target.engine == "sqlite":
        from pathlib import Path

        return Path(source.sqlite_path).resolve() == Path(target.sqlite_path).resolve()
    return source_url == target_url


def _count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _copy_all(source_conn, target_conn, dialect: str, progress) -> list[Copied]:
    copied = []
    for table, key in TABLES:
        if table in REPLACED:
            target_conn.execute(f"DELETE FROM {table}")
        cursor = source_conn.execute(f"SELECT * FROM {table} ORDER BY {key}")
        columns = [column[0] for column in cursor.description]
        insert = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )
        rows = 0
        while page := cursor.fetchmany(PAGE_ROWS):
            target_conn.executemany(insert, [tuple(row) for row in page])
            rows += len(page)
        if dialect == "postgresql":
            _move_sequences_past(target_conn, table)
        each = Copied(table, rows)
        progress(each)
        copied.append(each)
    return copied


def _move_sequences_past(conn, table: str) -> None:
    """PostgreSQL: an identity column's next value after the largest copied id."""
    for (column,) in conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = ? AND is_identity = 'YES'",
        (table,),
    ).fetchall():
        conn.execute(
            f"SELECT setval(pg_get_serial_sequence(?, ?),"
            f" (SELECT coalesce(max({column}), 0) + 1 FROM {table}), false)",
            (table, column),
        )
