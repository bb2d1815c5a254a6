"""The retention pruner: positions older than `storage.retention_days` are deleted.

Runs in the app's nursery; deletes in small batches so that the writer (and
with it ingest) never waits long behind one large DELETE. A device's latest
position is kept whatever its age, so a parked device still shows where it
is. `retention_days = 0` keeps everything. With several processes, one prunes at
a time: whichever holds the lease `LEASE` (tracker/leases.py).
"""

from __future__ import annotations

import contextlib
import logging
import time

import trio

from tracker.errors import StorageUnavailable
from tracker.store import Database
from tracker.store import positions as positions_store
from tracker.store import trips as trips_store

log = logging.getLogger("tracker.retention")

PRUNE_EVERY_SECONDS = 3600
BATCH_ROWS = 5000
LEASE = "retention"


async def prune_once(db: Database, retention_days: int, now: float | None = None) -> int:
    """Delete everything past the retention window; returns the positions removed."""
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    removed = 0
    while True:
        count = await db.write(positions_store.prune, cutoff, BATCH_ROWS)
        removed += count
        if count < BATCH_ROWS:
            break
        await trio.sleep(0)  # let queued ingest commits go first
    await db.write(trips_store.prune_empty, cutoff)
    if removed:
        log.info("pruned %d positions older than %d days", removed, retention_days)
    return removed


async def run_pruner(db: Database, retention_days: int) -> None:
    if retention_days <= 0:
        return
    while True:
        with contextlib.suppress(StorageUnavailable):  # the store logged it; next round retries
            await prune_once(db, retention_days)
        await trio.sleep(PRUNE_EVERY_SECONDS)
