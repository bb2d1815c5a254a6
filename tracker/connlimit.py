"""A cap on concurrent requests and WebSockets per client address (ASGI middleware).

One address holding hundreds of WebSockets (or slow requests) would starve
everyone else of sockets and memory, so past `server.max_connections_per_address`
(0: no cap) a new HTTP request is answered 429 and a new WebSocket handshake
is refused with HTTP 429, until that address's others finish. Idle TCP
connections that never send a request are Hypercorn's to end (its read
timeout; see server.py). The address is the client's as clientaddr.py
resolved it (behind a trusted proxy, the one the proxy saw), so users
behind one proxy each have their own cap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from prometheus_client import Counter as MetricCounter

from tracker.errors import error_body

RETRY_AFTER_SECONDS = "5"


class PerAddressLimit:
    def __init__(self, inner: Callable, max_per_address: int, refused: MetricCounter | None = None):
        self.inner = inner
        self.max_per_address = max_per_address
        self.active: Counter[str] = Counter()
        self.refused = refused  # counts the refusals (tracker/metrics.py)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket") or not self.max_per_address:
            await self.inner(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "?"
        if self.active[address] >= self.max_per_address:
            if self.refused is not None:
                self.refused.inc()
            await _refuse(scope, receive, send)
            return
        self.active[address] += 1
        try:
            await self.inner(scope, receive, send)
        finally:
            self.active[address] -= 1
            if not self.active[address]:
                del self.active[address]


async def _refuse(scope: dict, receive: Callable, send: Callable) -> None:
    body = error_body("rate_limited", "too many open connections from this address")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", RETRY_AFTER_SECONDS.encode()),
        (b"connection", b"close"),
    ]
    prefix = "websocket.http.response" if scope["type"] == "websocket" else "http.response"
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
    await send({"type": f"{prefix}.start", "status": 429, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})
