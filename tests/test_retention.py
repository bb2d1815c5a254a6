"""Positions past the retention window are pruned; a device's latest position stays."""

import time

import pytest

from tracker.models import Position
from tracker.retention import prune_once
from tracker.store import positions as positions_store


@pytest.fixture
def settings(settings):
    # No background pruner: the test prunes once itself. (With a broker, the app's pruner
    # starts once it gets its lease, which may be after the positions below are stored.)
    return settings.replace(storage={"retention_days": 0})


async def test_old_positions_are_pruned_but_the_latest_is_kept(client, tracker, fleet):
    now = time.time()
    old = [
        Position.build(latitude=1, longitude=1, timestamp=now - 100 * 86400 + i) for i in range(3)
    ]
    recent = Position.build(latitude=2, longitude=2, timestamp=now - 3600)
    await tracker.writer.submit(fleet.a.device_token, old)
    await tracker.writer.submit(fleet.a.device_token, [recent])
    await tracker.writer.submit(fleet.b.device_token, old[:1])  # B's only position is old

    assert await prune_once(tracker.db, retention_days=90) == 3
    kept_a = await tracker.db.read(positions_store.recent, fleet.a.device_token, 0)
    assert [p.timestamp for p in kept_a] == [recent.timestamp]
    latest_b = await tracker.db.read(positions_store.latest, fleet.b.device_token)
    assert latest_b is not None and latest_b.timestamp == old[0].timestamp
