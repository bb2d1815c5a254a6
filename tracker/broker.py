"""The broker: what one process publishes after a commit reaches every process's hub.

Publishers (the writer, the sharing API, the sweepers, `events.announce`)
publish to the broker, never to the hub; each process's hub then delivers to
its own subscribers through their mailboxes, exactly as one process does.
Two brokers, chosen by `broker.url` (`open_broker`):

- `InProcessBroker` (empty url, the default): one process, so publishing is
  the hub's own `publish` / `publish_fix`, bound once: no extra call, no cost.
- `RedisBroker` (`redis://host:port/db`): the message is delivered to this
  process's hub at once (its own viewers never wait for Redis, and still see
  its fixes while Redis is down), and sent to the other processes over one
  Redis pub/sub channel, `CHANNEL`; a process skips its own messages by
  their `origin`, seen in their first bytes (they are not decoded).

redis-py's asyncio client does not run on trio, so the blocking client runs
in two threads that `RedisBroker.run` owns (each in `trio.to_thread.run_sync`
with its own limiter; both end within `POLL_SECONDS` of the app stopping):
the sender takes encoded messages from a bounded queue (`publish` only
encodes and puts, never waits) and publishes them in pipelined batches; the
listener reads the subscription and hands each batch of decoded messages to
the trio side with `trio.from_thread.run_sync`, which publishes them to the
hub.

Messages are JSON with a version, `{"v": 1, "origin": ..., "kind": ...}`:
`fix` carries a `LiveFix` (its instance, device, trip, display name and
every field of its `Position`); `publish` carries a topic, a key and an
item (`session_ended`, `session_changed`, `event`, or `none` for a nudge);
`resync` says "messages of mine were lost". A message of another version or
kind is logged and skipped (a rolling upgrade), never fatal.

Redis pub/sub is at most once: while a process is cut from Redis, what it
publishes is dropped (counted in `dropped`) and what others publish never
reaches it. Positions are safe in the database either way; what is lost is
the live view. So when the listener subscribes again after a loss, it
publishes a `Resync` on `RESYNC_TOPIC` of its own hub, and when the sender
reconnects after dropping messages, it first sends a `resync` message, which
every other process turns into the same `Resync`. Live subscribers of
`RESYNC_TOPIC` are meant to tell their clients to re-read what they show
(docs/decisions.md, "Several processes"). Reconnection backs off from
`RECONNECT_FIRST_SECONDS`, doubling with jitter, to `RECONNECT_MAX_SECONDS`.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import redis
import trio
from redis.backoff import NoBackoff
from redis.retry import Retry

from tracker.domain import StoredEvent
from tracker.hub import Hub, LiveFix
from tracker.models import Position
from tracker.sharing import SessionChanged, SessionEnded

log = logging.getLogger("tracker.broker")

VERSION = 1
CHANNEL = "tracker:live"
RESYNC_TOPIC = "broker:resync"  # a local hub topic: this process may have missed messages
OUTBOX_CAPACITY = 10_000  # encoded messages waiting for the sender; past it they are dropped
SEND_BATCH = 500  # messages per pipelined round trip
DELIVER_BATCH = 500  # messages per hop from the listener thread to trio
POLL_SECONDS = 0.2  # how often the threads look at the stop flag
RECONNECT_FIRST_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 2.0
SEND_TIMEOUT_SECONDS = 5.0
HEALTH_CHECK_SECONDS = 15  # the subscription's idle connection is pinged this often

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


class Publisher(Protocol):
    """What publishers need: the hub's publishing half (a Hub is one too)."""

    def publish(self, topic: str, key: Hashable, item: Any) -> None: ...

    def publish_fix(self, fix: LiveFix) -> None: ...


class Broker(Publisher, Protocol):
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the broker connected until cancelled (in the app's nursery)."""


@dataclass(frozen=True)
class Resync:
    """Published on RESYNC_TOPIC: this process may have missed other processes' messages."""


class BrokerMessageError(ValueError):
    """A message on the channel this version cannot read."""


def open_broker(url: str, hub: Hub) -> Broker:
    """The broker `broker.url` names: empty for one process, redis:// for several."""
    return RedisBroker(url, hub) if url else InProcessBroker(hub)


class InProcessBroker:
    """One process: publishing is the hub's own publishing, bound once (no extra call)."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.publish: Callable[[str, Hashable, Any], None] = hub.publish
        self.publish_fix: Callable[[LiveFix], None] = hub.publish_fix

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()


# -- the wire format -----------------------------------------------------------


def encode_fix(origin: str, fix: LiveFix) -> bytes:
    return orjson.dumps(
        {
            "v": VERSION,
            "origin": origin,
            "kind": "fix",
            "instance_id": fix.instance_id,
            "device_token": fix.device_token,
            "track_token": fix.track_token,
            "display_name": fix.display_name,
            "position": fix.position,  # orjson writes a dataclass as an object
        }
    )


def encode_publish(origin: str, topic: str, key: Hashable, item: Any) -> bytes:
    if isinstance(item, SessionEnded):
        encoded: dict[str, Any] = {"type": "session_ended", "reason": item.reason}
    elif isinstance(item, SessionChanged):
        encoded = {"type": "session_changed"}
    elif isinstance(item, StoredEvent):
        encoded = {"type": "event", "event": item}
    elif item is None:
        encoded = {"type": "none"}
    else:
        raise TypeError(f"the broker cannot send a {type(item).__name__} (tracker/broker.py)")
    return orjson.dumps(
        {"v": VERSION, "origin": origin, "kind": "publish", "topic": topic, "key": key}
        | {"item": encoded}
    )


def encode_resync(origin: str) -> bytes:
    return orjson.dumps({"v": VERSION, "origin": origin, "kind": "resync"})


@dataclass(frozen=True, slots=True)
class Received:
    """A decoded message of another process: a fix, a (topic, key, item), or a resync."""

    origin: str
    fix: LiveFix | None = None
    topic: str | None = None
    key: Hashable = None
    item: Any = None
    resync: bool = False


def decode(data: bytes) -> Received:
    """A message off the channel; BrokerMessageError if this version cannot read it."""
    try:
        message = orjson.loads(data)
        version, origin, kind = message["v"], message["origin"], message["kind"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        raise BrokerMessageError("not a broker message") from None
    if version != VERSION:
        raise BrokerMessageError(f"version {version!r}, this process reads {VERSION}")
    try:
        if kind == "fix":
            fix = LiveFix(
                instance_id=message["instance_id"],
                device_token=message["device_token"],
                position=Position(**message["position"]),
                track_token=message["track_token"],
                display_name=message["display_name"],
            )
            return Received(origin, fix=fix)
        if kind == "publish":
            return Received(
                origin, topic=message["topic"], key=message["key"], item=_item(message["item"])
            )
        if kind == "resync":
            return Received(origin, resync=True)
    except (KeyError, TypeError, AttributeError) as error:
        raise BrokerMessageError(f"a {kind!r} message that does not fit: {error}") from None
    raise BrokerMessageError(f"unknown kind {kind!r}")


def _item(encoded: dict[str, Any]) -> Any:
    item_type = encoded.pop("type")
    if item_type == "session_ended":
        return SessionEnded(encoded["reason"])
    if item_type == "session_changed":
        return SessionChanged()
    if item_type == "event":
        return StoredEvent(**encoded["event"])
    if item_type == "none":
        return None
    raise BrokerMessageError(f"unknown item type {item_type!r}")


# -- Redis -----------------------------------------------------------------------


def redis_address(url: str) -> str:
    """host:port/db of a redis:// URL, for the log (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


class RedisBroker:
    """Several processes: deliver here at once, and to the others through Redis pub/sub."""

    def __init__(self, url: str, hub: Hub):
        self.url = url
        self.hub = hub
        self.origin = uuid.uuid4().hex  # this process, so it skips its own messages
        # How each of its messages begins (orjson keeps the keys' order): skipped undecoded.
        self._own_prefix = orjson.dumps({"v": VERSION, "origin": self.origin})[:-1] + b","
        self.address = redis_address(url)
        self.dropped = 0  # messages not sent: Redis was down or the queue full
        self._outbox: queue.Queue[bytes] = queue.Queue(OUTBOX_CAPACITY)
        self._dropped_lock = threading.Lock()  # dropped grows in both the loop and the sender
        self._resynced_at = 0  # dropped when the last resync was sent: above it, send one
        self._stop = threading.Event()
        self.subscribed = trio.Event()  # set once the first subscription is confirmed

    # -- the trio side

    def publish(self, topic: str, key: Hashable, item: Any) -> None:
        self.hub.publish(topic, key, item)
        self._send(encode_publish(self.origin, topic, key, item))

    def publish_fix(self, fix: LiveFix) -> None:
        self.hub.publish_fix(fix)
        self._send(encode_fix(self.origin, fix))

    def _send(self, message: bytes) -> None:
        try:
            self._outbox.put_nowait(message)
        except queue.Full:
            self._drop(1)

    def is_own(self, data: bytes) -> bool:
        """Whether a message off the channel is this process's own (skipped, not decoded)."""
        return data.startswith(self._own_prefix)

    def _deliver(self, messages: list[Received]) -> None:
        for message in messages:
            if message.fix is not None:
                self.hub.publish_fix(message.fix)
            elif message.resync:
                self._resync()
            else:
                assert message.topic is not None
                self.hub.publish(message.topic, message.key, message.item)

    def _on_subscribed(self, after_loss: bool) -> None:
        self.subscribed.set()
        if after_loss:
            self._resync()

    def _resync(self) -> None:
        self.hub.publish(RESYNC_TOPIC, "resync", Resync())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The sender and listener threads, until cancelled; then both stop."""
        log.info("broker: Redis at %s", self.address)
        self._stop.clear()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_when_cancelled)
                nursery.start_soon(self._in_thread, self._send_forever)
                nursery.start_soon(self._in_thread, self._listen_forever)
                task_status.started()
        finally:
            self._stop.set()

    async def _stop_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            self._stop.set()

    async def _in_thread(self, function: Callable[..., None], *args: Any) -> None:
        await trio.to_thread.run_sync(function, *args, limiter=trio.CapacityLimiter(1))

    # -- the threads

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),  # errors surface here, so a loss is seen and resynced
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=SEND_TIMEOUT_SECONDS,
            socket_keepalive=True,
            health_check_interval=HEALTH_CHECK_SECONDS,
        )

    def _back_off(self, delay: float) -> float:
        """Wait about delay (or until stopped); the next delay."""
        self._stop.wait(random.uniform(delay / 2, delay))
        return min(delay * 2, RECONNECT_MAX_SECONDS)

    def _send_forever(self) -> None:
        client: redis.Redis | None = None
        delay = RECONNECT_FIRST_SECONDS
        try:
            while not self._stop.is_set():
                try:
                    batch = [self._outbox.get(timeout=POLL_SECONDS)]
                except queue.Empty:
                    continue
                while len(batch) < SEND_BATCH:
                    try:
                        batch.append(self._outbox.get_nowait())
                    except queue.Empty:
                        break
                with self._dropped_lock:
                    dropped = self.dropped
                messages = batch
                if dropped > self._resynced_at:
                    messages = [encode_resync(self.origin), *batch]
                try:
                    client = self._publish(client, messages)
                except _REDIS_DOWN as error:
                    client = None
                    if dropped == self._resynced_at:
                        log.warning(
                            "broker: cannot publish to Redis at %s: %s", self.address, error
                        )
                    self._drop(len(batch))
                    delay = self._back_off(delay)
                    self._drop_queued()  # published while down: the resync covers them
                    continue
                if dropped > self._resynced_at:
                    log.warning(
                        "broker: publishing to Redis at %s again (%d messages dropped meanwhile)",
                        self.address,
                        dropped - self._resynced_at,
                    )
                    self._resynced_at = dropped
                delay = RECONNECT_FIRST_SECONDS
        finally:
            if client is not None:
                client.close()

    def _publish(self, client: redis.Redis | None, messages: list[bytes]) -> redis.Redis:
        """Publish in one round trip; the client to use next. A connection left idle while
        Redis restarted fails once, so a failed batch is tried again on a fresh connection
        (a message may then arrive twice: mailboxes conflate it by key)."""
        if client is not None:
            try:
                return self._pipelined(client, messages)
            except _REDIS_DOWN:
                client.close()
        client = self._client()
        try:
            return self._pipelined(client, messages)
        except _REDIS_DOWN:
            client.close()
            raise

    def _pipelined(self, client: redis.Redis, messages: list[bytes]) -> redis.Redis:
        pipeline = client.pipeline(transaction=False)
        for message in messages:
            pipeline.publish(CHANNEL, message)
        pipeline.execute()
        return client

    def _drop(self, count: int) -> None:
        with self._dropped_lock:
            self.dropped += count

    def _drop_queued(self) -> None:
        while True:
            try:
                self._outbox.get_nowait()
            except queue.Empty:
                return
            self._drop(1)

    def _listen_forever(self) -> None:
        lost = False
        delay = RECONNECT_FIRST_SECONDS
        while not self._stop.is_set():
            client = self._client()
            subscription = client.pubsub()
            try:
                subscription.subscribe(CHANNEL)
                while not self._stop.is_set():
                    message = subscription.get_message(timeout=POLL_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        if lost:
                            log.warning(
                                "broker: subscribed to Redis at %s again; live subscribers "
                                "told to resync",
                                self.address,
                            )
                        trio.from_thread.run_sync(self._on_subscribed, lost)
                        lost = False
                        delay = RECONNECT_FIRST_SECONDS
                        continue
                    batch = self._read_batch(subscription, message)
                    if batch:
                        trio.from_thread.run_sync(self._deliver, batch)
            except _REDIS_DOWN as error:
                if not lost:
                    log.warning(
                        "broker: lost Redis at %s (%s); serving on, reconnecting",
                        self.address,
                        error,
                    )
                lost = True
                delay = self._back_off(delay)
            finally:
                subscription.close()
                client.close()

    def _read_batch(self, subscription: Any, first: dict[str, Any]) -> list[Received]:
        """The first message and whatever else is already there (up to DELIVER_BATCH read),
        decoded; other processes' only."""
        batch: list[Received] = []
        message: dict[str, Any] | None = first
        for read in range(1, DELIVER_BATCH + 1):
            assert message is not None
            if message["type"] == "message" and not self.is_own(message["data"]):
                try:
                    received = decode(message["data"])
                except BrokerMessageError as error:
                    log.warning("broker: skipped a message on %s: %s", CHANNEL, error)
                else:
                    batch.append(received)
            if read == DELIVER_BATCH:
                break
            message = subscription.get_message(timeout=0)
            if message is None:
                break
        return batch
