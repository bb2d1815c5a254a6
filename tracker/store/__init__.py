"""The one door to SQLite: connections, threads, transactions.

SQLite calls block, so none runs on the event loop. `Database.write` runs a
function on the single writer connection in a worker thread, inside one
`BEGIN IMMEDIATE` transaction, one call at a time (a CapacityLimiter of 1);
`Database.read` runs a function on one of a few reader connections, which
WAL lets proceed beside the writer. The modules of this package (instances,
devices, positions, trips, sessions) hold the SQL, as plain functions of a
`sqlite3.Connection`, so the command line can call the same functions
synchronously through `Database.write_sync` / `read_sync`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import trio

from tracker.store import schema

T = TypeVar("T")
P = ParamSpec("P")

READER_CONNECTIONS = 4
BUSY_TIMEOUT_MS = 10_000


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

    def __init__(self, path: str | Path, synchronous: str = "normal"):
        self.path = str(path)
        self.synchronous = synchronous
        self._writer = _connect(self.path, synchronous)
        self._sync_lock = threading.Lock()
        schema.migrate(self._writer)
        self._readers = [_connect(self.path, synchronous) for _ in range(READER_CONNECTIONS)]
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(READER_CONNECTIONS)

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
            finally:
                self._readers.append(conn)

    # -- synchronous doors, for the command line and the writer thread ------

    def write_sync(self, fn: Callable[..., T], *args: object) -> T:
        with self._sync_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def read_sync(self, fn: Callable[..., T], *args: object) -> T:
        with self._sync_lock:
            return fn(self._writer, *args)

    def check(self) -> bool:
        """True when the file answers a query (for /health)."""
        return self._writer.execute("SELECT 1").fetchone()[0] == 1
