"""The records tracker keeps, apart from how a database stores them.

The store (tracker/store/, on SQLite or PostgreSQL) reads and writes these;
the API, the writer, the sweepers and the command line work with them. They
are plain frozen dataclasses: no SQL, no engine, nothing that imports the
store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracker.models import Position


@dataclass(frozen=True)
class Instance:
    id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class Device:
    token: str
    instance_id: str
    profile: dict[str, str] = field(default_factory=dict)
    display_field: str = "full_name"
    created_at: float = 0.0
    mqtt_topic: str | None = None  # where its OwnTracks app publishes over MQTT, if it does


@dataclass(frozen=True)
class DeviceFix:
    """A device's latest fix with what a live message needs to name the device."""

    device_token: str
    instance_id: str
    profile: dict
    display_field: str
    position: Position
    track_token: str


ACTIVE, COMPLETED, CANCELLED, EXPIRED = "active", "completed", "cancelled", "expired"
STATUSES = (ACTIVE, COMPLETED, CANCELLED, EXPIRED)


@dataclass(frozen=True)
class ShareSession:
    id: str
    token_hash: str
    instance_id: str
    device_token: str
    status: str  # as stored; sharing.effective_status() also knows overdue sessions
    end_reason: str | None
    created_at: float
    expires_at: float
    ended_at: float | None
    recipient_name: str | None = None
    notes: str | None = None
    order_id: str | None = None
    destination: dict | None = None
    share_config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEvent:
    seq: int  # the outbox order
    id: str
    instance_id: str
    type: str
    created_at: float
    data: dict
    webhook_id: str | None = None  # set: for that webhook only (a test event)


@dataclass(frozen=True)
class StoredGeofence:
    id: str
    instance_id: str
    name: str
    shape: dict  # {"circle": {latitude, longitude, radius_m}} or {"polygon": GeoJSON Polygon}
    device_tokens: list[str] | None  # None: every device of the instance
    created_at: float


@dataclass(frozen=True)
class Webhook:
    id: str
    instance_id: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    secret: str
    description: str | None
    created_at: float
    cursor: int  # the outbox seq of the last event done with (delivered or given up)
    failing_since: float | None  # the first failed attempt at the current event
    next_attempt_at: float | None


@dataclass(frozen=True)
class Delivery:
    id: int
    webhook_id: str
    event_id: str
    event_type: str
    attempt: int
    attempted_at: float
    duration_ms: float
    status_code: int | None
    error: str | None
    outcome: str  # delivered, retrying, failed (not retried), disabled


@dataclass(frozen=True)
class User:
    id: str
    username: str
    instance_id: str | None  # None: every instance
    role: str
    password_hash: str
    created_at: float


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str  # "host:pid:random" of the process holding it
    expires_at: float
