"""A fleet at a glance: each device's status (moving, stopped, offline) from its last fix.

One rule, used by `GET {api_prefix}/devices` and, with the same numbers from
the page's config, by the console between two reads: a device is `offline`
when its last fix is older than `console.offline_after_seconds` (or it has
none), `moving` when that fix's speed is above `MOVING_SPEED_MPS` (walking
pace, above GPS jitter at a standstill), and `stopped` otherwise, a fix
without a speed included.
"""

from __future__ import annotations

from typing import Literal

from tracker.models import Position

Status = Literal["moving", "stopped", "offline"]
MOVING_SPEED_MPS = 0.5


def device_status(position: Position | None, now: float, offline_after_seconds: float) -> Status:
    if position is None or now - position.timestamp > offline_after_seconds:
        return "offline"
    if position.speed is not None and position.speed > MOVING_SPEED_MPS:
        return "moving"
    return "stopped"
