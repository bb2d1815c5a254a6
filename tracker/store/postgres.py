"""The door to PostgreSQL: the same doors as SQLite's `Database`, on psycopg 3 in worker threads.

`PostgresDatabase` is a `Database` (tracker/store/__init__.py) whose
connections are psycopg's: `write` runs a function in one transaction on
the one writer connection (a pool of one, which replaces a connection the
server dropped), `read` on a connection of a small reader pool, each
statement its own snapshot as SQLite's readers see it. psycopg's async API
needs asyncio, which trio is not, so its blocking API runs in trio's worker
threads like sqlite3's. Every acknowledged write is committed with
PostgreSQL's own durability (`synchronous_commit` is left on).

The store's functions are one set for both engines: they get a
`PgConnection`, a thin adapter whose `execute` / `executemany` take the
sqlite3 paramstyles (`?`, or `:name` with a dict, rewritten to psycopg's
once per statement text) and
return psycopg cursors whose rows answer `row[0]` and `row["name"]` like
`sqlite3.Row`; its `dialect` ("postgresql") lets the few statements that
cannot be written alike for both engines branch. A unique or foreign-key
violation is raised as `IntegrityError`, a `sqlite3.IntegrityError`, which
the store already catches.

"Cannot now" errors (the server unreachable or shutting down, disk full,
out of connections, a serialization failure or deadlock still there after
`TRANSACTION_RETRIES`) are `StorageUnavailable`, logged by `StorageFailures`
as SQLite's are; anything else is a bug and goes up untouched.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import psycopg
import psycopg_pool
import trio
from psycopg import errors as pg_errors

from tracker.config import redacted_url
from tracker.store import (
    BUSY_TIMEOUT_MS,
    PROBE_CACHE_SECONDS,
    READER_CONNECTIONS,
    Database,
    StorageFailures,
    pg_schema,
)

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 10
POOL_TIMEOUT_SECONDS = 10.0  # like SQLite's busy timeout: then "database busy"
TRANSACTION_RETRIES = 3  # a write that met a serialization failure or deadlock runs again


class IntegrityError(sqlite3.IntegrityError):
    """A constraint refused a PostgreSQL statement (the store catches sqlite3's)."""


class Row(tuple):
    """A result row: by position and by column name, and dict(row) works (like sqlite3.Row)."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}})


def _row_factory(cursor: psycopg.Cursor) -> Callable[[Sequence], Row]:
    description = cursor.description
    if description is None:
        return tuple  # type: ignore[return-value]
    return _row_class(tuple(column.name for column in description))


_NAMED = re.compile(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)")  # :name, not a ::cast


@functools.lru_cache(maxsize=2048)
def _pg_sql(sql: str, named: bool = False) -> str:
    """sqlite3's paramstyles to psycopg's: a literal % doubled, each ? a %s (or, with
    named parameters, each :name a %(name)s)."""
    sql = sql.replace("%", "%%")
    return _NAMED.sub(r"%(\1)s", sql) if named else sql.replace("?", "%s")


class PgConnection:
    """A psycopg connection that the store's functions use as they use a sqlite3 one."""

    dialect = "postgresql"

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection):
        self.raw = raw

    def execute(self, sql: str, params: Sequence | Mapping = ()) -> psycopg.Cursor:
        cursor = self.raw.cursor()
        named = isinstance(params, Mapping)
        try:
            cursor.execute(_pg_sql(sql, named), params if named else tuple(params))
        except psycopg.IntegrityError as error:
            raise IntegrityError(str(error)) from None
        return cursor

    def executemany(self, sql: str, rows) -> psycopg.Cursor:
        cursor = self.raw.cursor()
        rows = list(rows)
        if rows:
            try:
                cursor.executemany(_pg_sql(sql), rows)
            except psycopg.IntegrityError as error:
                raise IntegrityError(str(error)) from None
        return cursor


# SQLSTATE classes and codes that mean "cannot now", not "wrong request".
_UNAVAILABLE_CODES = {
    "53100": "disk full",
    "53200": "database out of memory",
    "53300": "too many connections to the database",
    "58030": "disk I/O error",
    "57P01": "database shutting down",
    "57P02": "database shutting down",
    "57P03": "database not accepting connections yet",
    "25006": "database read-only",
    "40001": "database busy (serialization failure)",
    "40P01": "database busy (deadlock)",
    "55P03": "database locked",
}


def unavailable_reason(error: Exception) -> str | None:
    """Why PostgreSQL cannot serve now, or None for any other error."""
    if isinstance(error, psycopg_pool.PoolTimeout):
        return "database busy (no free connection)"
    if isinstance(error, psycopg.InterfaceError):
        return "lost the database connection"
    if not isinstance(error, psycopg.Error):
        return None
    code = error.sqlstate or ""
    if code in _UNAVAILABLE_CODES:
        return _UNAVAILABLE_CODES[code]
    if code.startswith("08") or (isinstance(error, psycopg.OperationalError) and not code):
        return "cannot reach the database"
    if isinstance(error, psycopg.OperationalError):
        return "database unavailable"
    return None


def _configure(raw: psycopg.Connection) -> None:
    raw.row_factory = _row_factory


def connect(url: str) -> PgConnection:
    """One connection in autocommit, outside any Database (for scripts and tests); the
    caller closes `.raw`."""
    raw = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    _configure(raw)
    return PgConnection(raw)


class PostgresDatabase(Database):
    """A PostgreSQL database with its schema applied, one writer connection and reader pool."""

    dialect = "postgresql"
    _reason = staticmethod(unavailable_reason)  # SQLSTATEs (this module), not SQLite's codes

    def __init__(self, url: str):
        self.url = url
        self.name = redacted_url(url)  # for messages: never the password
        self.path = ""  # not a file: the on-loop reads (HotReads) stand aside
        self.failures = StorageFailures()
        self._sync_lock = threading.Lock()
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(READER_CONNECTIONS)
        self._probed_at = -PROBE_CACHE_SECONDS
        self._probe_ok = True
        self._writer_pool: psycopg_pool.ConnectionPool | None = None
        self._reader_pool: psycopg_pool.ConnectionPool | None = None
        try:
            with psycopg.connect(
                url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
            ) as c:
                pg_schema.migrate(c)
            options = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS}
            # a write waits for another's row or advisory lock as long as SQLite's busy timeout
            writer = {**options, "options": f"-c lock_timeout={BUSY_TIMEOUT_MS}"}
            self._writer_pool = self._pool(1, 1, writer)
            self._reader_pool = self._pool(1, READER_CONNECTIONS, options)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            self.close()
            raise self._unavailable(error) from None

    def _pool(self, low: int, high: int, options: dict) -> psycopg_pool.ConnectionPool:
        pool = psycopg_pool.ConnectionPool(
            self.url,
            min_size=low,
            max_size=high,
            kwargs=options,
            configure=_configure,
            timeout=POOL_TIMEOUT_SECONDS,
            open=False,
            name=self.name,
        )
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        return pool

    def close(self) -> None:
        for pool in (self._writer_pool, self._reader_pool):
            if pool is not None:
                pool.close()

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(self._read_now, fn, *args, limiter=self._read_limiter)

    def _read_now(self, fn: Callable[..., T], *args: object) -> T:
        assert self._reader_pool is not None
        try:
            with self._reader_pool.connection() as raw:
                return fn(PgConnection(raw), *args)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            raise self._unavailable(error) from None

    def write_sync(self, fn: Callable[..., T], *args: object) -> T:
        assert self._writer_pool is not None
        with self._sync_lock:
            for attempt in range(TRANSACTION_RETRIES):
                try:
                    with self._writer_pool.connection() as raw, raw.transaction():
                        result = fn(PgConnection(raw), *args)
                    break
                except pg_errors.TransactionRollback as error:
                    if attempt + 1 == TRANSACTION_RETRIES:
                        raise self._unavailable(error) from None
                    time.sleep(0.01 * (attempt + 1))
                except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
                    raise self._unavailable(error) from None
            self.failures.stored()
            return result

    def read_sync(self, fn: Callable[..., T], *args: object) -> T:
        return self._read_now(fn, *args)
