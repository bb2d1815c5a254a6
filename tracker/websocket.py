"""WebSocket connections on raw ASGI: routing, and a connection shape that dodges the stack's traps.

The two WebSocket endpoints (`/ws/realtime`, `/share/{token}/live`) are
push-heavy, so they bypass Quart's websocket wrapper (about four times the
CPU per frame, DESIGN.md) and speak ASGI to Hypercorn directly.
`WebSocketRouter` wraps Quart's `asgi_app` and hands those paths to their
handlers; everything else goes to Quart.

Every connection runs, in one nursery, a receiver and a sender:
- the receiver is always reading, so the client's frames never pile up, and
  it notices a disconnect at once and cancels the connection's scope (after
  a client goes away Hypercorn's send returns at once without yielding, and a
  send loop would spin);
- the sender waits on the connection's mailbox (a real checkpoint), so it
  never loops on `send`; a send that does not complete within
  `SLOW_SEND_SECONDS` (a client that stopped reading) closes the connection
  with 4009, and so does an overflowing mailbox;
- control frames the server sends (pong, ping, errors) go through the same
  mailbox, so only the sender ever sends.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from tracker import jsoncodec
from tracker.hub import Mailbox, MailboxClosed, SlowConsumer

log = logging.getLogger("tracker.websocket")

MAX_MESSAGE_BYTES = 4096
SLOW_SEND_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 2.0

# Close codes (documented in docs/websockets.md).
NORMAL = 1000
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
INVALID_MESSAGE = 4002
BAD_TOKEN = 4001
FORBIDDEN = 4003
TIMEOUT = 4008
SLOW_CONSUMER = 4009

Handler = Callable[["Connection", dict[str, str]], Awaitable[None]]


class Disconnected(Exception):
    """The client went away."""


class Connection:
    """One accepted (or about to be accepted) WebSocket, over raw ASGI."""

    def __init__(self, scope: dict, receive: Callable, send: Callable):
        self.scope = scope
        self._receive = receive
        self._send = send
        self.mailbox = Mailbox()
        self.closed = False
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", [])
        }

    @property
    def client_address(self) -> str:
        client = self.scope.get("client")
        return client[0] if client else "?"

    async def accept(self) -> None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise Disconnected()
        await self._send({"type": "websocket.accept"})

    async def reject(self) -> None:
        """Refuse the handshake: Hypercorn answers HTTP 403."""
        message = await self._receive()
        if message["type"] == "websocket.connect":
            await self._send({"type": "websocket.close", "code": 1008})
        self.closed = True

    async def receive_text(self) -> str:
        """The next text message; Disconnected when the client has gone."""
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                self.closed = True
                raise Disconnected()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", "replace")
                return text

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        with trio.move_on_after(CLOSE_TIMEOUT_SECONDS):
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    async def send_or_close_slow(self, text: str) -> bool:
        """Send; a client that does not take it within SLOW_SEND_SECONDS is closed (4009)."""
        with trio.move_on_after(SLOW_SEND_SECONDS) as scope:
            await self.send_text(text)
        if scope.cancelled_caught:
            log.info("closing slow WebSocket consumer %s", self.client_address)
            await self.close(SLOW_CONSUMER, "slow consumer")
            return False
        return True

    def post(self, key: str, message: dict[str, Any]) -> None:
        """Queue a control message (pong, error) for the sender."""
        self.mailbox.put(key, jsoncodec.dumps(message).decode())

    async def run_sender(self, render: Callable[[Any], str | None]) -> None:
        """Send everything that reaches the mailbox, in order; close 4009 when behind."""
        while True:
            try:
                items = await self.mailbox.take()
            except SlowConsumer:
                await self.close(SLOW_CONSUMER, "slow consumer")
                return
            except MailboxClosed:
                await self.close(GOING_AWAY, "server shutting down")
                return
            for item in items:
                text = item if isinstance(item, str) else render(item)
                if text is None:
                    continue
                if not await self.send_or_close_slow(text):
                    return
            # An idle connection must not keep its last batch (a whole snapshot) alive.
            items = item = text = None
            # Hypercorn's send may return without yielding after a disconnect:
            # yield here so the receiver can see the disconnect and cancel us.
            await trio.lowlevel.checkpoint()


MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


async def run_connection(
    connection: Connection,
    *,
    sender: Callable[[], Awaitable[None]],
    on_message: MessageHandler,
    ping_interval: float,
) -> None:
    """Run an accepted connection: receiver, pinger and sender in one nursery.

    The receiver answers `ping` with `pong`, ignores `pong`, and hands other
    messages to on_message; a message over 4 KiB closes with 1009. The pinger
    sends `ping` every interval and closes a client silent for two. When any
    of the three ends (or the client goes away) the others are cancelled.
    """
    last_heard = trio.current_time()

    async def receiver() -> None:
        nonlocal last_heard
        while True:
            text = await connection.receive_text()
            last_heard = trio.current_time()
            if len(text.encode()) > MAX_MESSAGE_BYTES:
                await connection.close(MESSAGE_TOO_BIG, "message too large")
                return
            message = json_message(text)
            kind = message.get("type") if message else None
            if kind == "ping":
                connection.post("pong", {"type": "pong"})
            elif kind != "pong":
                await on_message(message or {})

    async def pinger() -> None:
        while True:
            await trio.sleep(ping_interval)
            if trio.current_time() - last_heard > 2 * ping_interval:
                await connection.close(TIMEOUT, "no answer to pings")
                return
            connection.post("ping", {"type": "ping"})

    async with trio.open_nursery() as nursery:

        async def first_to_end(task: Callable[[], Awaitable[None]]) -> None:
            with contextlib.suppress(Disconnected):
                await task()
            nursery.cancel_scope.cancel()

        for task in (receiver, pinger, sender):
            nursery.start_soon(first_to_end, task)


def json_message(text: str) -> dict[str, Any] | None:
    """A client message as a JSON object, or None when it is not one."""
    try:
        value = jsoncodec.loads(text)
    except jsoncodec.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class WebSocketRouter:
    """ASGI middleware: WebSocket paths we serve ourselves, the rest to Quart."""

    def __init__(self, inner: Callable, routes: list[tuple[str, Handler]]):
        self.inner = inner
        self.routes = [(re.compile(pattern), handler) for pattern, handler in routes]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket":
            for pattern, handler in self.routes:
                match = pattern.fullmatch(scope["path"])
                if match:
                    connection = Connection(scope, receive, send)
                    try:
                        await handler(connection, match.groupdict())
                    except Disconnected:
                        return
                    # Returning with the socket open would make Hypercorn close it as 1011.
                    await connection.close(NORMAL)
                    return
        await self.inner(scope, receive, send)
