"""What one running app shares: settings, store, token verifier, hub, broker, writer, metrics.

Routes reach it with `current()`; tests reach it through `app.extensions`.
There is one per app and none at module level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio
from quart import current_app

from tracker.accounts import SignInGuard
from tracker.auth import TokenVerifier
from tracker.broker import Broker
from tracker.config import Settings
from tracker.hub import Hub
from tracker.metrics import Metrics
from tracker.ratelimit import RateLimiter
from tracker.store import Database
from tracker.websocket import Keepalive, WebSocketRouter
from tracker.writer import Writer


@dataclass
class Tracker:
    settings: Settings
    db: Database
    verifier: TokenVerifier
    hub: Hub
    writer: Writer
    share_limiter: RateLimiter
    broker: Broker  # publishers publish here; it reaches every process's hub
    cookie_key: bytes = b""  # signs μlogger session cookies (tracker/ingest/ulogger.py)
    metrics: Metrics = field(default_factory=Metrics)
    keepalive: Keepalive = field(default_factory=Keepalive)
    sign_ins: SignInGuard = field(default_factory=SignInGuard)
    websockets: WebSocketRouter | None = None  # set by the app factory
    started_at: float = field(default_factory=time.monotonic)
    background: trio.CancelScope | None = None
    background_done: trio.Event = field(default_factory=trio.Event)


def current() -> Tracker:
    return current_app.extensions["tracker"]
