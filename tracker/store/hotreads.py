"""Reads for the hot HTTP routes, on the event loop: devices and live positions, cached while fresh.

Every other read goes to a worker thread (tracker/store/__init__.py); a
thread hop costs about 0.1 ms of CPU, as much as the rest of a
single-position ingest. The hot routes (tracker/hotroutes.py) therefore read
here instead: point lookups by key on one connection of their own, answered
from memory while nothing changed.

Fresh means: as of the last commit by any connection, in any process (a
running server sees a change by `tracker device ...` at once). Before each
lookup, `PRAGMA data_version` says whether another connection committed since
the last look (a few microseconds, no I/O in WAL mode). The server's own
writer commits on every ingest, so a moved data_version alone would empty the
cache all the time under load: it only means "read `device_generation`",
which triggers bump on every change to a device but its live position
(migration m007). The cached devices are forgotten when the generation moved;
the cached live positions whenever data_version moved (an ingest commit moves
them too). An entry read after a commit is at least as fresh as the version
it is filed under, never staler.

The connection waits for no lock (busy_timeout 0): any SQLite error returns
None, and the route then asks the framework, which reads in a thread as
before. Misses are not remembered, so unknown keys cannot fill memory, and
each map is emptied when it reaches `MAX_ENTRIES`.

`data_version` and `instance_fixes` serve the snapshot a `/ws/realtime`
client gets on connect (tracker/api/realtime.py, `Snapshots`), which keeps
its own cache and the rule that makes sharing it correct.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from tracker.domain import Device, DeviceFix
from tracker.models import Position
from tracker.store import devices, positions

T = TypeVar("T")

MAX_ENTRIES = 100_000


class HotReads:
    """Cached point reads (device by ingest key, device by token, live position by device)."""

    def __init__(self, path: str):
        self._conn: sqlite3.Connection | None = None
        if path and path != ":memory:" and not path.startswith("file:"):
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._conn.execute("PRAGMA query_only = ON")
        self._data_version: int | None = None
        self._generation: int | None = None
        self._by_key_hash: dict[str, Device] = {}
        self._by_token: dict[str, Device] = {}
        self._latest: dict[str, Position] = {}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def device_by_ingest_key(self, key: str) -> Device | None:
        """The device whose ingest key this is; None when unknown (or unsure: ask the store)."""
        return self._look_up(
            self._by_key_hash, devices.hash_ingest_key(key), devices.by_ingest_key, key
        )

    def device(self, token: str) -> Device | None:
        """The device with this token; None when unknown (or unsure)."""
        return self._look_up(self._by_token, token, devices.get, token)

    def latest(self, device_token: str) -> Position | None:
        """The device's live position; None when it has none (or unsure)."""
        return self._look_up(self._latest, device_token, positions.latest, device_token)

    def _look_up(self, cache: dict, key: str, read: Callable[..., T | None], arg: str) -> T | None:
        """cache[key] while fresh, else read(conn, arg) remembered (a miss is never kept)."""
        if not self._fresh():
            return None
        value = cache.get(key)
        if value is None:
            value = self._read(read, arg)
            if value is not None:
                _remember(cache, key, value)
        return value

    def data_version(self) -> int | None:
        """`PRAGMA data_version`: it moves when another connection, in any process, committed
        since the last look (this connection never writes); None when SQLite fails."""
        if self._conn is None:
            return None
        try:
            return self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return None

    def instance_fixes(self, instance_id: str) -> list[DeviceFix] | None:
        """Every device of the instance with a live position, read now; None when SQLite fails."""
        if self._conn is None:
            return None
        return self._read(positions.latest_for_instance, instance_id)

    def _fresh(self) -> bool:
        """Forget what another connection's commit may have changed; False when SQLite fails."""
        if self._conn is None:
            return False
        try:
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return True
            self._latest.clear()
            generation = self._conn.execute("SELECT generation FROM device_generation").fetchone()[
                0
            ]
        except sqlite3.Error:
            self._data_version = None
            return False
        if generation != self._generation:
            self._by_key_hash.clear()
            self._by_token.clear()
            self._generation = generation
        self._data_version = version
        return True

    def _read(self, fn, *args):
        try:
            return fn(self._conn, *args)
        except sqlite3.Error:
            return None


def _remember(cache: dict, key: str, value: object) -> None:
    if len(cache) >= MAX_ENTRIES:
        cache.clear()
    cache[key] = value
