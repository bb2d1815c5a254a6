"""WebSocket connections on raw ASGI: routing, and a connection shape that dodges the stack's traps.

The two WebSocket endpoints (`/ws/realtime`, `/share/{token}/live`) are
push-heavy, so they bypass Quart's websocket wrapper (about four times the
CPU per frame, DESIGN.md) and speak ASGI to Hypercorn directly.
`WebSocketRouter` wraps Quart's `asgi_app` and hands those paths to their
handlers; everything else goes to Quart.

Every connection runs, in one nursery, a receiver and a sender, and is
watched by the app's one `Keepalive` task:
- the receiver is always reading, so the client's frames never pile up, and
  it notices a disconnect at once and cancels the connection's scope (after
  a client goes away Hypercorn's send returns at once without yielding, and a
  send loop would spin);
- the sender waits on the connection's mailbox (a real checkpoint), so it
  never loops on `send`; an overflowing mailbox closes the connection with
  4009 (slow consumer);
- the keepalive pings each connection once per interval, closes a client
  silent for two intervals, and cuts the TCP connection under a send stuck
  for a whole interval (a client that stopped reading: Hypercorn shields
  its socket writes from cancellation, so a timeout around `send` could
  never fire). One task for all connections rather than a pinger each
  keeps an idle connection small (docs/benchmarks.md, memory);
- control frames the server sends (pong, ping, errors) go through the same
  mailbox, so only the sender ever sends.

Sending: a message is framed once (`Frame`) and the same bytes go to every
subscriber. On Hypercorn's trio worker over plain TCP a frame is written to
the socket at once, without yielding, when nothing else is being written to
it (Hypercorn's send lock is free): almost always on a healthy connection,
and it skips wsproto's per-send framing, the ASGI message dispatch and two
trips through trio's scheduler (docs/benchmarks.md). What the kernel does
not take (a client that reads slowly) goes the ordinary way, through
Hypercorn's stream under its lock, shielded so that a frame is never cut in
half. The frames are unmasked, unfragmented and uncompressed, which RFC 6455
and RFC 7692 allow whatever extensions were negotiated. Under any other ASGI
server (or a Hypercorn whose internals moved) the same code falls back to
plain ASGI `websocket.send`. The handshake, the close and the replies to
protocol pings stay with Hypercorn and wsproto.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio
from hypercorn.events import Closed
from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer

from tracker import jsoncodec
from tracker.hub import Mailbox, MailboxClosed, SlowConsumer
from tracker.metrics import WebSocketMeter
from tracker.sendguard import CLIENT_GONE_ERRORS

log = logging.getLogger("tracker.websocket")

MAX_MESSAGE_BYTES = 4096
CLOSE_TIMEOUT_SECONDS = 2.0
KEEPALIVE_TICK_SECONDS = 0.5  # how often the keepalive looks (pings spread at this grain)
FRAMES_PER_WRITE = 64  # frames joined into one write; the sender yields between writes

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


class Frame(bytes):
    """A whole WebSocket text frame, ready for the wire: built once, sent to many."""

    __slots__ = ()

    @classmethod
    def text(cls, payload: bytes | str) -> Frame:
        """An unmasked, unfragmented text frame (RFC 6455 section 5.2): a server's frame."""
        if isinstance(payload, str):
            payload = payload.encode()
        size = len(payload)
        if size < 126:
            header = bytes((0x81, size))
        elif size < 1 << 16:
            header = b"\x81\x7e" + size.to_bytes(2, "big")
        else:
            header = b"\x81\x7f" + size.to_bytes(8, "big")
        return cls(header + payload)

    def payload(self) -> bytes:
        size = self[1]
        return self[2 if size < 126 else 4 if size == 126 else 10 :]


class Unsent(Frame):
    """The rest of a direct write the socket did not take: it goes out next, whole."""

    __slots__ = ()


UNSENT = object()  # the mailbox key of an Unsent


def _hypercorn_stream(send: Callable) -> WSStream | None:
    """Hypercorn's stream behind an ASGI send callable, when it is one (see the module doc)."""
    stream = getattr(send, "__self__", None)
    if isinstance(stream, WSStream) and callable(getattr(stream, "send", None)):
        return stream
    return None


def _hypercorn_tcp(stream: WSStream | None) -> TCPServer | None:
    """The plain-TCP connection under an HTTP/1.1 WebSocket stream (None under TLS, HTTP/2)."""
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    if (
        isinstance(server, TCPServer)
        and isinstance(getattr(server, "stream", None), trio.SocketStream)
        and isinstance(getattr(server, "send_lock", None), trio.Lock)
    ):
        return server
    return None


class Connection:
    """One accepted (or about to be accepted) WebSocket, over raw ASGI."""

    __slots__ = (
        "scope",
        "_receive",
        "_send",
        "_stream",
        "_tcp",
        "mailbox",
        "closed",
        "sending_since",
        "last_heard",
        "ping_due",
        "cancel_scope",
        "_frames",
        "meter",
    )

    def __init__(self, scope: dict, receive: Callable, send: Callable):
        self.scope = scope
        self._receive = receive
        self._send = send
        self._stream = _hypercorn_stream(send)
        self._tcp = _hypercorn_tcp(self._stream)
        self.mailbox = Mailbox()
        self.closed = False
        self.sending_since: float | None = None  # when the send in progress began
        self.last_heard = trio.current_time()  # the client's last message
        self.ping_due = math.inf  # set by the keepalive
        self.cancel_scope: trio.CancelScope | None = None  # of run_connection
        self._frames: Callable[[list[Any]], Iterable[Frame]] | None = None  # of run_sender
        self.meter: WebSocketMeter | None = None  # its endpoint's counters (`metered`)

    def metered(self, meter: WebSocketMeter) -> Connection:
        """Count this connection as open, and what it sends, on its endpoint's meter:
        `with connection.metered(meter):` (the connection is its own context manager,
        so an open connection does not hold a generator for it)."""
        self.meter = meter
        return self

    def __enter__(self) -> Connection:
        if self.meter is not None:
            self.meter.open += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.meter is not None:
            self.meter.open -= 1

    def header(self, name: bytes) -> str | None:
        """A request header of the handshake (name in lower case), or None."""
        for key, value in self.scope.get("headers", ()):
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    def end(self) -> None:
        """Stop the connection's tasks (run_connection returns)."""
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    @property
    def client_address(self) -> str:
        client = self.scope.get("client")
        return client[0] if client else "?"

    async def accept(self) -> None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise Disconnected()
        await self._asgi_send({"type": "websocket.accept"})

    async def reject(self) -> None:
        """Refuse the handshake: Hypercorn answers HTTP 403."""
        message = await self._receive()
        if message["type"] == "websocket.connect":
            await self._asgi_send({"type": "websocket.close", "code": 1008})
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

    async def _asgi_send(self, message: dict[str, Any]) -> None:
        """An ASGI send; Disconnected when the socket was closed under it (tracker/sendguard.py)."""
        try:
            await self._send(message)
        except CLIENT_GONE_ERRORS:
            raise Disconnected() from None

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_frame(Frame.text(jsoncodec.dumps(message)))

    async def send_frame(self, frame: Frame) -> None:
        """Send a framed message; Disconnected when the client has gone."""
        await self.send_frames([frame])

    async def send_frames(self, frames: list[Frame]) -> None:
        """Send framed messages in order, in one write when they can go straight out."""
        if self.meter is not None:  # an Unsent rest was counted when it was first written
            self.meter.sent += len(frames) - isinstance(frames[0], Unsent)
        stream = self._stream
        if stream is None:
            for frame in frames:
                await self._asgi_send({"type": "websocket.send", "text": frame.payload().decode()})
            return
        if stream.closed or stream.state is not ASGIWebsocketState.CONNECTED:
            raise Disconnected()
        data: bytes = frames[0] if len(frames) == 1 else b"".join(frames)
        written = self._write_now(data)
        if written == len(data):
            return
        partial = written > 0 or isinstance(frames[0], Unsent)
        self.sending_since = trio.current_time()
        try:
            with trio.CancelScope(shield=partial):  # never cut a frame in half
                await stream.send(Data(stream_id=stream.stream_id, data=data[written:]))
        except CLIENT_GONE_ERRORS:  # Hypercorn closed the socket under the write
            raise Disconnected() from None
        finally:
            self.sending_since = None

    def _write_now(self, data: bytes) -> int:
        """Write to the socket without waiting, when nothing else is writing to it:
        how many bytes went (0 when it cannot now). Disconnected when the client is gone."""
        tcp = self._tcp
        if tcp is None or tcp.send_lock.locked():
            return 0
        socket = tcp.stream.socket
        descriptor = socket.fileno()
        if descriptor < 0 or socket.did_shutdown_SHUT_WR:
            return 0
        try:
            return os.write(descriptor, data)
        except BlockingIOError:
            return 0
        except OSError:
            raise Disconnected() from None

    def flush(self, mailbox: Mailbox) -> None:
        """The hub's pump: write what this idle sender's mailbox just got, in one write.

        Whatever cannot go now (the socket is full or busy, the client left)
        goes back to the mailbox, first, and the sender is woken to finish it.
        """
        stream = self._stream
        frames = self._frames
        if (
            frames is None
            or stream is None
            or stream.closed
            or not mailbox.waiting
            or mailbox.woken
            or mailbox.overflowed
        ):
            mailbox.wake()
            return
        items = mailbox.drain()
        try:
            rendered = list(frames(items))
        except Exception:
            log.exception("rendering for WebSocket client %s failed", self.client_address)
            self.end()
            return
        if self.meter is not None:
            self.meter.sent += len(rendered)
        data: bytes = rendered[0] if len(rendered) == 1 else b"".join(rendered)
        try:
            written = self._write_now(data)
        except Disconnected:
            written = 0
        if written < len(data):
            mailbox.put(UNSENT, Unsent(data[written:]))

    def send_stuck_for(self, now: float) -> float:
        """How long the send in progress has been waiting (0 when none is)."""
        return 0.0 if self.sending_since is None else now - self.sending_since

    async def abort(self) -> None:
        """Cut the TCP connection: the way out of a send that cannot finish.

        Closing the socket fails the blocked write, and Hypercorn then tells
        the receiver that the client is gone. Without Hypercorn's stream, a
        close is the best there is.
        """
        self.closed = True
        protocol = getattr(getattr(self._stream, "send", None), "__self__", None)
        transport_send = getattr(protocol, "send", None)
        with trio.move_on_after(CLOSE_TIMEOUT_SECONDS), contextlib.suppress(Disconnected):
            if transport_send is None:
                await self._asgi_send({"type": "websocket.close", "code": SLOW_CONSUMER})
            else:
                await transport_send(Closed())

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        with trio.move_on_after(CLOSE_TIMEOUT_SECONDS), contextlib.suppress(Disconnected):
            await self._asgi_send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    def post(self, key: str, message: dict[str, Any]) -> None:
        """Queue a control message (pong, error) for the sender."""
        self.mailbox.put(key, Frame.text(jsoncodec.dumps(message)))

    async def run_sender(self, frames: Callable[[list[Any]], Iterable[Frame]]) -> None:
        """Send the frames of everything that reaches the mailbox, in order; 4009 when behind.

        frames turns what one take() found (control frames among the stream's
        own items, oldest first) into the frames to send. While this sender
        waits, the hub's pump may write for it (`flush`).
        """
        if self._tcp is not None:
            self._frames = frames
            self.mailbox.flusher = self
        try:
            await self._send_loop(frames)
        finally:
            self.mailbox.flusher = None
            self._frames = None

    async def _send_loop(self, frames: Callable[[list[Any]], Iterable[Frame]]) -> None:
        while True:
            try:
                items = await self.mailbox.take()
            except SlowConsumer:
                log.info("closing slow WebSocket consumer %s", self.client_address)
                if self.meter is not None:
                    self.meter.slow_closes += 1
                await self.close(SLOW_CONSUMER, "slow consumer")
                return
            except MailboxClosed:
                await self.close(GOING_AWAY, "server shutting down")
                return
            chunk: list[Frame] = []
            for frame in frames(items):
                chunk.append(frame)
                if len(chunk) == FRAMES_PER_WRITE:
                    await self.send_frames(chunk)
                    chunk = []
                    await trio.lowlevel.checkpoint()  # a whole snapshot must not hog the loop
            if chunk:
                await self.send_frames(chunk)
            # An idle connection must not keep its last batch (a whole snapshot) alive.
            # (Waiting in take() is a real checkpoint: after a disconnect, when
            # Hypercorn's send returns without yielding, the receiver still runs.)
            items = frame = chunk = None


MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


class Keepalive:
    """Pings every open connection once per interval, from one task (see the module doc)."""

    def __init__(self) -> None:
        self._connections: set[Connection] = set()
        self.interval = math.inf

    def watch(self, connection: Connection) -> None:
        """Keep this connection alive until `forget` (plain calls, not a context manager:
        an open connection does not hold a generator for it)."""
        # The first ping somewhere in the interval: clients that connected together
        # (a restart) are pinged, and answer, spread out rather than all at once.
        connection.ping_due = trio.current_time() + self.interval * random.uniform(0.5, 1.0)
        self._connections.add(connection)

    def forget(self, connection: Connection) -> None:
        self._connections.discard(connection)

    async def run(
        self, interval: float, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Every tick, look at each connection: cut, close, ping (when due) or leave it."""
        self.interval = interval
        async with trio.open_nursery() as nursery:  # the closes, which wait on the client
            task_status.started()
            while True:
                await trio.sleep(min(interval / 4, KEEPALIVE_TICK_SECONDS))
                now = trio.current_time()
                for connection in list(self._connections):
                    if connection.send_stuck_for(now) >= interval:
                        log.info(
                            "cutting WebSocket client %s: not reading", connection.client_address
                        )
                        if connection.meter is not None:
                            connection.meter.slow_closes += 1
                        self._connections.discard(connection)
                        nursery.start_soon(_cut_off, connection)
                    elif now - connection.last_heard > 2 * interval:
                        self._connections.discard(connection)
                        nursery.start_soon(_time_out, connection)
                    elif now >= connection.ping_due:
                        connection.ping_due = now + interval
                        connection.post("ping", {"type": "ping"})


async def _cut_off(connection: Connection) -> None:
    await connection.abort()
    connection.end()


async def _time_out(connection: Connection) -> None:
    await connection.close(TIMEOUT, "no answer to pings")
    connection.end()


async def run_connection(
    connection: Connection,
    *,
    sender: Callable[[], Awaitable[None]],
    on_message: MessageHandler,
    keepalive: Keepalive,
) -> None:
    """Run an accepted connection: its receiver and sender in one nursery, under keepalive.

    The receiver answers `ping` with `pong`, ignores `pong`, and hands other
    messages to on_message; a message over 4 KiB closes with 1009. When
    either ends (or the client goes away, or the keepalive gives up on the
    client) the other is cancelled.
    """

    async def receiver() -> None:
        try:
            while True:
                text = await connection.receive_text()
                connection.last_heard = trio.current_time()
                if len(text.encode()) > MAX_MESSAGE_BYTES:
                    await connection.close(MESSAGE_TOO_BIG, "message too large")
                    return
                message = json_message(text)
                kind = message.get("type") if message else None
                if kind == "ping":
                    connection.post("pong", {"type": "pong"})
                elif kind != "pong":
                    await on_message(message or {})
        except Disconnected:
            pass
        finally:
            connection.end()

    async def run_sender() -> None:
        try:
            await sender()
        except Disconnected:
            pass
        except MailboxClosed:  # the server is shutting down
            await connection.close(GOING_AWAY, "server shutting down")
        finally:
            connection.end()

    keepalive.watch(connection)
    try:
        async with trio.open_nursery() as nursery:
            connection.cancel_scope = nursery.cancel_scope
            nursery.start_soon(receiver)
            nursery.start_soon(run_sender)
    finally:
        keepalive.forget(connection)


def json_message(text: str) -> dict[str, Any] | None:
    """A client message as a JSON object, or None when it is not one."""
    try:
        value = jsoncodec.loads(text)
    except jsoncodec.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class WebSocketRouter:
    """ASGI middleware: WebSocket paths we serve ourselves, the rest to Quart.

    It knows every open connection of its endpoints, so that a stopping
    server can tell each client it is going away (`close_all`), whatever the
    connection was doing: streaming, or still waiting to authenticate.
    """

    def __init__(self, inner: Callable, routes: list[tuple[str, Handler]]):
        self.inner = inner
        self.routes = [(re.compile(pattern), handler) for pattern, handler in routes]
        self.open: dict[Connection, trio.CancelScope] = {}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket":
            for pattern, handler in self.routes:
                match = pattern.fullmatch(scope["path"])
                if match:
                    # Served here, not in a method of its own: one coroutine frame
                    # less for every open connection.
                    connection = Connection(scope, receive, send)
                    with trio.CancelScope() as cancel_scope:
                        self.open[connection] = cancel_scope
                        try:
                            await handler(connection, match.groupdict())
                        except Disconnected:
                            return
                        finally:
                            del self.open[connection]
                    # Returning with the socket open would make Hypercorn close it as 1011.
                    await connection.close(NORMAL)
                    return
        await self.inner(scope, receive, send)

    async def close_all(self) -> None:
        """Close every open connection with 1001 (server going away), all at once."""

        async def going_away(connection: Connection, scope: trio.CancelScope) -> None:
            connection.mailbox.close()  # a sender busy writing stops at its next take()
            await connection.close(GOING_AWAY, "server shutting down")
            scope.cancel()

        async with trio.open_nursery() as nursery:
            for connection, scope in list(self.open.items()):
                nursery.start_soon(going_away, connection, scope)
