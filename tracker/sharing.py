"""Share sessions' rules: tokens, status, ETA and arrival, and what a public view may show.

A share token is the credential of a public link: 22 base62 characters from
`secrets` (about 131 bits), stored only as a SHA-256 hash, so it is shown
once, at creation, and a database comparison leaks nothing about it.

Status: `active` → `completed` (complete, or arrival with
`auto_complete_on_arrival`), `cancelled` (DELETE), `expired` (when
`expires_at` passes; a sweeper persists it, and `effective_status` treats an
overdue session as expired even before it runs).

A public view honours `share_config` and never contains the device token,
the instance or the profile beyond the display name.
"""

from __future__ import annotations

import hashlib
import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracker.config import Settings
from tracker.domain import ACTIVE, EXPIRED, ShareSession
from tracker.geo import eta_seconds, haversine_m, smoothed_speed
from tracker.models import Position

SHARE_TOKEN_LENGTH = 22
_BASE62 = string.digits + string.ascii_letters
SPEED_WINDOW_SECONDS = 300
SPEED_SAMPLES = 120  # the newest fixes of that window are enough for a smoothed speed
TRAIL_MAX_POINTS = 1000

DEFAULT_SHARE_CONFIG: dict[str, bool] = {
    "show_speed": True,
    "show_heading": True,
    "show_eta": True,
    "show_destination_on_map": True,
    "auto_complete_on_arrival": False,
}


@dataclass(frozen=True)
class SessionEnded:
    """Published on a session's topic when it ends: live viewers say goodbye."""

    reason: str  # completed, arrived, cancelled, expired


@dataclass(frozen=True)
class SessionChanged:
    """Published on a session's topic when an admin updates it: viewers re-read it."""


def new_share_token() -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(SHARE_TOKEN_LENGTH))


def hash_share_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_share_token(token: str) -> bool:
    return len(token) == SHARE_TOKEN_LENGTH and all(c in _BASE62 for c in token)


def effective_status(session: ShareSession, now: float | None = None) -> str:
    now = time.time() if now is None else now
    if session.status == ACTIVE and session.expires_at <= now:
        return EXPIRED
    return session.status


def end_reason(session: ShareSession, now: float | None = None) -> str | None:
    status = effective_status(session, now)
    if status == ACTIVE:
        return None
    return session.end_reason or status


def config_of(session: ShareSession) -> dict[str, bool]:
    return {**DEFAULT_SHARE_CONFIG, **session.share_config}


def links(settings: Settings, token: str) -> dict[str, str]:
    public = settings.server.public_url
    api_url = f"{public}{settings.server.api_prefix}/share/{token}"
    ws_url = api_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/live"
    return {"map_url": f"{public}/share/{token}", "api_url": api_url, "ws_url": ws_url}


def admin_view(session: ShareSession, now: float | None = None) -> dict[str, Any]:
    """A session as its instance's admins see it (the token itself is never stored)."""
    return {
        "id": session.id,
        "device_token": session.device_token,
        "instance_id": session.instance_id,
        "status": effective_status(session, now),
        "end_reason": end_reason(session, now),
        "created_at": int(session.created_at),
        "expires_at": int(session.expires_at),
        "ended_at": int(session.ended_at) if session.ended_at else None,
        "recipient_name": session.recipient_name,
        "notes": session.notes,
        "order_id": session.order_id,
        "destination": session.destination,
        "share_config": config_of(session),
    }


def moving_speed(recent: Sequence[Position]) -> float | None:
    return smoothed_speed([(p.timestamp, p.speed) for p in recent])


def eta_for(
    session: ShareSession, position: Position | None, speed: float | None, settings: Settings
) -> int | None:
    """Seconds to the destination, or None without a destination or position."""
    destination = session.destination
    if destination is None or position is None:
        return None
    distance = haversine_m(
        position.latitude, position.longitude, destination["latitude"], destination["longitude"]
    )
    return eta_seconds(
        distance,
        speed,
        road_factor=settings.sharing.road_factor,
        arrival_radius_m=settings.sharing.arrival_radius_m,
    )


def has_arrived(session: ShareSession, position: Position, arrival_radius_m: float) -> bool:
    destination = session.destination
    if destination is None:
        return False
    distance = haversine_m(
        position.latitude, position.longitude, destination["latitude"], destination["longitude"]
    )
    return distance <= arrival_radius_m


def driver_view(session: ShareSession, position: Position | None) -> dict[str, Any] | None:
    if position is None:
        return None
    config = config_of(session)
    driver: dict[str, Any] = {"latitude": position.latitude, "longitude": position.longitude}
    if config["show_heading"]:
        driver["heading"] = position.heading
    if config["show_speed"]:
        driver["speed"] = position.speed
    return driver


def public_view(
    session: ShareSession,
    position: Position | None,
    eta: int | None,
    display_name: str,
    trail: Sequence[Position] = (),
    now: float | None = None,
) -> dict[str, Any]:
    """GET /share/{token}: what the recipient may see, and nothing more."""
    config = config_of(session)
    view: dict[str, Any] = {
        "status": effective_status(session, now),
        "driver": driver_view(session, position),
        "order_id": session.order_id,
        "recipient_name": session.recipient_name,
        "notes": session.notes,
        "driver_display_name": display_name,
        "last_updated": int(position.timestamp) if position else None,
        "expires_at": int(session.expires_at),
        "trail": [[p.latitude, p.longitude] for p in trail[-TRAIL_MAX_POINTS:]],
    }
    if config["show_destination_on_map"]:
        view["destination"] = session.destination
    if config["show_eta"]:
        view["eta_seconds"] = eta
    return view


def live_message(
    session: ShareSession, position: Position, eta: int | None, display_name: str
) -> dict[str, Any]:
    """A `position` message of the live share stream."""
    config = config_of(session)
    message: dict[str, Any] = {
        "type": "position",
        "latitude": position.latitude,
        "longitude": position.longitude,
        "driver_display_name": display_name,
        "timestamp": int(position.timestamp),
    }
    if config["show_heading"]:
        message["heading"] = position.heading
    if config["show_speed"]:
        message["speed"] = position.speed
    if config["show_eta"]:
        message["eta_seconds"] = eta
    return message
