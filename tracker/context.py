"""What one running app shares: settings, store, token verifier (and later hub, writer).

Routes reach it with `current()`; tests reach it through `app.extensions`.
There is one per app and none at module level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from quart import current_app

from tracker.auth import TokenVerifier
from tracker.config import Settings
from tracker.store import Database


@dataclass
class Tracker:
    settings: Settings
    db: Database
    verifier: TokenVerifier
    started_at: float = field(default_factory=time.monotonic)


def current() -> Tracker:
    return current_app.extensions["tracker"]
