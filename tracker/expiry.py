"""The sweepers: persist the expiry of overdue share sessions, and find what went quiet.

Reads never show an overdue session as active (sharing.effective_status), and
each live viewer has its own deadline at `expires_at`; this task makes the
stored status catch up, so lists and filters agree, emitting `share.expired`
(tracker/events.py), which says goodbye to any viewer still listening. The
same round finds devices gone silent (`device.offline`) and trips whose
split gap passed (`trip.ended`). With several processes, one runs it at a
time: whichever holds the lease `LEASE` (tracker/leases.py).
"""

from __future__ import annotations

import contextlib
import time

import trio

from tracker import events
from tracker.broker import Publisher
from tracker.errors import StorageUnavailable
from tracker.store import Database

SWEEP_EVERY_SECONDS = 30  # sharing.expiry_sweep_seconds, by default
LEASE = "sweeper"


async def sweep_once(db: Database, hub: Publisher, now: float | None = None) -> list[str]:
    """Expire overdue sessions; returns their ids."""
    expired = await db.write(events.expire_shares, time.time() if now is None else now)
    events.announce(hub, expired)
    return [event.data["id"] for event in expired]


async def sweep_quiet_once(
    db: Database,
    hub: Publisher,
    split_gap_seconds: float,
    offline_after_seconds: float,
    now: float | None = None,
) -> list[events.Event]:
    found = await db.write(
        events.sweep_quiet,
        time.time() if now is None else now,
        split_gap_seconds,
        offline_after_seconds,
    )
    events.announce(hub, found)
    return found


async def run_sweeper(
    db: Database,
    hub: Publisher,
    split_gap_seconds: float = 300,
    offline_after_seconds: float = 600,
    every_seconds: float = SWEEP_EVERY_SECONDS,
) -> None:
    while True:
        with contextlib.suppress(StorageUnavailable):  # the store logged it; next round retries
            await sweep_once(db, hub)
            await sweep_quiet_once(db, hub, split_gap_seconds, offline_after_seconds)
        await trio.sleep(every_seconds)
