"""The expiry sweeper: persists the expiry of overdue share sessions and tells live viewers.

Reads never show an overdue session as active (sharing.effective_status), and
each live viewer has its own deadline at `expires_at`; this task makes the
stored status catch up, so lists and filters agree, and publishes
`SessionEnded("expired")` for any viewer still listening.
"""

from __future__ import annotations

import contextlib
import time

import trio

from tracker.errors import StorageUnavailable
from tracker.hub import Hub, session_topic
from tracker.sharing import SessionEnded
from tracker.store import Database
from tracker.store import sessions as sessions_store

SWEEP_EVERY_SECONDS = 30


async def sweep_once(db: Database, hub: Hub, now: float | None = None) -> list[str]:
    expired = await db.write(sessions_store.expire_overdue, time.time() if now is None else now)
    for session_id in expired:
        hub.publish(session_topic(session_id), "ended", SessionEnded("expired"))
    return expired


async def run_sweeper(db: Database, hub: Hub) -> None:
    while True:
        with contextlib.suppress(StorageUnavailable):  # the store logged it; next round retries
            await sweep_once(db, hub)
        await trio.sleep(SWEEP_EVERY_SECONDS)
