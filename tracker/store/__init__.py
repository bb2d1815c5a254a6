"""The one door to SQLite: connections, threads, transactions.

SQLite calls block, so none runs on the event loop. `Database.write` runs a
function on the single writer connection in a worker thread, inside one
`BEGIN IMMEDIATE` transaction, one call at a time (a CapacityLimiter of 1);
`Database.read` runs a function on one of a few reader connections, which
WAL lets proceed beside the writer. The modules of this package (instances,
devices, positions, trips, sessions) hold the SQL, as plain functions of a
`sqlite3.Connection`, so the command line can call the same functions
synchronously through `Database.write_sync` / `read_sync`.

When SQLite cannot store or read (disk full, an I/O error, the file locked
past the busy timeout, read-only), every door raises the one domain error
`StorageUnavailable` (a 503 with Retry-After for HTTP clients, a one-line
message for the command line) and `StorageFailures` logs it: one line per
kind of failure per minute, no traceback, and one line when writes succeed
again. Any other exception is a bug and goes up untouched.
`Database.can_store` is the readiness probe: a real one-row write.

`open_database(settings.storage)` opens the engine `storage.url` names: this
file's SQLite, or PostgreSQL (tracker/store/postgres.py, the same doors).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import trio

from tracker.config import StorageSettings
from tracker.errors import StorageUnavailable
from tracker.store import schema

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("tracker.store")

READER_CONNECTIONS = 4
BUSY_TIMEOUT_MS = 10_000
FAILURE_LOG_INTERVAL_SECONDS = 60.0
PROBE_CACHE_SECONDS = 1.0  # readiness and /health probe at most once a second
PROBE_KEY = "readiness_probe"  # the row of server_keys that the probe rewrites

# SQLite's primary result codes that mean "cannot now", not "wrong request".
_UNAVAILABLE = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_BUSY: "database busy",
    sqlite3.SQLITE_LOCKED: "database locked",
    sqlite3.SQLITE_READONLY: "database read-only",
    sqlite3.SQLITE_CANTOPEN: "cannot open the database file",
}


def unavailable_reason(error: sqlite3.Error) -> str | None:
    """Why the database cannot serve now ("disk full", ...), or None for any other error."""
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else _UNAVAILABLE.get(code & 0xFF)


class StorageFailures:
    """Logs storage failures: each kind at most once per interval, with a count of the rest."""

    def __init__(self, interval: float = FAILURE_LOG_INTERVAL_SECONDS, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._logged_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.failing = False  # since the last failure, no write has succeeded

    def failed(self, reason: str, error: sqlite3.Error) -> None:
        now = self.clock()
        with self._lock:
            self.failing = True
            logged_at = self._logged_at.get(reason)
            if logged_at is not None and now - logged_at < self.interval:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._logged_at[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
        log.error(
            "database cannot store now (%s: %s); writes are refused until it can%s",
            reason,
            error,
            f"; {suppressed} more since the last report" if suppressed else "",
        )

    def stored(self) -> None:
        """A write succeeded: say so once after failures."""
        if not self.failing:
            return
        with self._lock:
            suppressed = sum(self._suppressed.values())
            self.failing = False
            self._logged_at.clear()
            self._suppressed.clear()
        log.warning(
            "database stores again%s",
            f" ({suppressed} failures not reported)" if suppressed else "",
        )


def _connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Database:
    """A SQLite file with its schema applied, a writer and a pool of readers."""

    dialect = "sqlite"

    def __init__(self, path: str | Path, synchronous: str = "normal"):
        self.path = str(path)
        self.name = self.path  # where the data lives, for messages
        self.synchronous = synchronous
        self.failures = StorageFailures()
        self._sync_lock = threading.Lock()
        try:
            self._writer = _connect(self.path, synchronous)
            schema.migrate(self._writer)
            self._readers = [_connect(self.path, synchronous) for _ in range(READER_CONNECTIONS)]
        except sqlite3.Error as error:
            raise self._unavailable(error) from None
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(READER_CONNECTIONS)
        self._probed_at = -PROBE_CACHE_SECONDS
        self._probe_ok = True

    # Why this engine's error means "cannot now" (None: a bug, not the database).
    _reason = staticmethod(unavailable_reason)

    def _unavailable(self, error: Exception) -> BaseException:
        """The StorageUnavailable for a "cannot now" error (logged), else the error itself."""
        reason = self._reason(error)
        if reason is None:
            return error
        self.failures.failed(reason, error)
        return StorageUnavailable(reason)

    def close(self) -> None:
        for conn in [self._writer, *self._readers]:
            conn.close()

    # -- async doors, for the server ---------------------------------------

    async def write(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn(conn, *args) in one write transaction, off the event loop."""
        return await trio.to_thread.run_sync(
            self.write_sync, fn, *args, limiter=self._write_limiter
        )

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        """Run fn(conn, *args) on a reader connection, off the event loop."""
        async with self._read_limiter:
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(fn, conn, *args)
            except sqlite3.Error as error:
                raise self._unavailable(error) from None
            finally:
                self._readers.append(conn)

    async def can_store(self) -> bool:
        """Whether a write commits now: a one-row write, at most once per PROBE_CACHE_SECONDS.

        A real write, since only a write meets a full disk (a rollback-only
        transaction touches nothing).
        """
        now = time.monotonic()
        if now - self._probed_at >= PROBE_CACHE_SECONDS:
            self._probed_at = now
            try:
                await self.write(_touch_probe, time.time())
                self._probe_ok = True
            except StorageUnavailable:
                self._probe_ok = False
        return self._probe_ok

    # -- synchronous doors, for the command line and the writer thread ------

    def write_sync(self, fn: Callable[..., T], *args: object) -> T:
        with self._sync_lock:
            conn = self._writer
            try:
                if conn.in_transaction:  # a rollback that failed earlier (I/O error)
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn, *args)
                    conn.execute("COMMIT")  # a full disk may refuse the commit itself
                except BaseException:
                    # SQLite may have rolled back already (it does on some SQLITE_FULL)
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise self._unavailable(error) from None
            self.failures.stored()
            return result

    def read_sync(self, fn: Callable[..., T], *args: object) -> T:
        with self._sync_lock:
            try:
                return fn(self._writer, *args)
            except sqlite3.Error as error:
                raise self._unavailable(error) from None

    async def can_read(self) -> bool:
        """Whether a reader connection answers a query (for /health)."""
        try:
            return await self.read(_answer)
        except (sqlite3.Error, StorageUnavailable):
            return False


def open_database(storage: StorageSettings) -> Database:
    """The database storage.url names (PostgreSQL: tracker/store/postgres.py), else the file."""
    if storage.engine == "postgresql":
        from tracker.store.postgres import PostgresDatabase  # psycopg only when used

        return PostgresDatabase(storage.url)
    return Database(storage.sqlite_path, storage.synchronous)


def _answer(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1").fetchone()[0] == 1


def _touch_probe(conn: sqlite3.Connection, now: float) -> None:
    conn.execute(
        "INSERT INTO server_keys (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (PROBE_KEY, repr(now)),
    )
