"""Token buckets per client address, for the public share endpoints.

Each address has a bucket of `per_minute` tokens refilled continuously; a
request takes one (a failed lookup takes `FAILED_LOOKUP_COST`, so guessing
share tokens is limited much harder than reading a valid one). An empty
bucket answers with the seconds until a token is back (the Retry-After).
The table of buckets is bounded: past `MAX_TRACKED_ADDRESSES`, full buckets
(addresses that have been quiet) are forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

FAILED_LOOKUP_COST = 6.0
MAX_TRACKED_ADDRESSES = 50_000


class RateLimiter:
    def __init__(
        self,
        per_minute: float,
        clock: Callable[[], float] = trio.current_time,
        *,
        window_seconds: float = 60.0,  # a bucket of `per_minute` tokens refilled over this
    ):
        self.capacity = float(per_minute)
        self.refill_per_second = per_minute / window_seconds
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, updated at)

    def _level(self, address: str, now: float) -> float:
        tokens, updated = self._buckets.get(address, (self.capacity, now))
        return min(self.capacity, tokens + (now - updated) * self.refill_per_second)

    def take(self, address: str, cost: float = 1.0) -> int:
        """Take `cost` tokens; 0 when allowed, else the whole seconds to wait."""
        now = self.clock()
        tokens = self._level(address, now)
        if tokens < cost:
            return max(1, math.ceil((cost - tokens) / self.refill_per_second))
        self._buckets[address] = (tokens - cost, now)
        if len(self._buckets) > MAX_TRACKED_ADDRESSES:
            self._forget_full(now)
        return 0

    def wait_seconds(self, address: str, cost: float = 1.0) -> int:
        """The seconds until `cost` tokens are there, taking nothing."""
        tokens = self._level(address, self.clock())
        return 0 if tokens >= cost else max(1, math.ceil((cost - tokens) / self.refill_per_second))

    def charge(self, address: str, cost: float) -> None:
        """Take tokens after the fact (a lookup that failed), going below zero if need be."""
        now = self.clock()
        self._buckets[address] = (self._level(address, now) - cost, now)

    def _forget_full(self, now: float) -> None:
        for address in [a for a in self._buckets if self._level(a, now) >= self.capacity]:
            del self._buckets[address]
