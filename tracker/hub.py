"""In-process pub/sub: the one place where fan-out happens.

The writer publishes each committed live fix to its instance's topic and its
device's topic; `/ws/realtime` connections subscribe to an instance, share
viewers to a device and their session. A publisher never waits: each
subscriber owns a `Mailbox`, bounded and conflating by key (a newer fix of a
device replaces an unsent older one), so a slow viewer gets fewer, fresher
updates and cannot slow ingest or anyone else. A mailbox that would exceed
its bound is marked overflowed, and its reader closes the connection as a
slow consumer.

Messages are encoded once per format, not once per subscriber: a `LiveFix`
caches its encodings by format key (`LiveFix.encoded`).

Publishing is paced by what the loop can afford (`Hub.run_pump`): a
delivery goes out at once while the event loop keeps up, and deliveries are
grouped only under load. After each delivery the pump rests for
`PACING_FACTOR` (2) times how busy that delivery found the loop: the time
the delivery itself took (every mailbox filled, every direct write) plus how
late the pump got to run after it was due (trio's scheduling lag: the time
other tasks held the loop between the publish, or the end of the last rest,
and the pump's turn). What is published during the rest waits, in order, and
goes out together with the next delivery. A lone position, or a hundred
subscribers, costs a fraction of a millisecond: the rest is negligible and
each position goes out as it is committed. A thousand subscribers cost
milliseconds per delivery, and a loop busy with ingest makes the pump late:
the rest grows, deliveries then take at most about a third of the loop, and
each subscriber is woken once per delivery with everything new instead of
once per commit (the wake-ups and writes, not the bytes, are what a thousand
subscribers cost, and unpaced they take the whole loop and starve ingest).
The rest never exceeds the interval given to `run_pump`
(`realtime.fanout_interval_seconds`): the longest a position waits for its
delivery under load (0: every publish at once, never grouped).

A subscriber whose reader is idle and whose mailbox has a `Flusher` (a
WebSocket that can write without waiting) is not woken at all: after the
delivery the pump has the flusher write what it got, and only what the
socket does not take is left to the reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from tracker.models import Position

DEFAULT_MAILBOX_CAPACITY = 10_000
# The pump rests this many times as long as its last delivery kept the loop busy (the
# delivery's own time plus how late the pump ran): deliveries take at most about
# 1 / (1 + PACING_FACTOR) of the loop under load, and nothing waits when it is idle.
PACING_FACTOR = 2.0


EVERYONE = "hub:everyone"  # a key every subscriber of the topic takes, whatever its key filter


class SlowConsumer(Exception):
    """A mailbox overflowed: its reader fell too far behind."""


class MailboxClosed(Exception):
    """The mailbox was closed (the hub is shutting down or the topic ended)."""


@dataclass(eq=False)
class LiveFix:
    """A committed fix that advanced its device's live position, ready to fan out."""

    instance_id: str
    device_token: str
    position: Position
    track_token: str
    display_name: str
    _encodings: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def cached(self, key: Hashable) -> Any:
        """An encoding made earlier under this key (None if none), for async encoders."""
        return self._encodings.get(key)

    def cache(self, key: Hashable, value: Any) -> Any:
        self._encodings[key] = value
        return value

    def encoded(self, key: Hashable, encode: Callable[[LiveFix], Any]) -> Any:
        """encode(self), computed once per key and shared by every subscriber asking for it."""
        try:
            return self._encodings[key]
        except KeyError:
            value = self._encodings[key] = encode(self)
            return value


class Mailbox:
    """A bounded, conflating mailbox: one per subscriber, keyed (e.g. by device)."""

    __slots__ = ("capacity", "_pending", "_ready", "overflowed", "closed", "waiting", "flusher")

    def __init__(self, capacity: int = DEFAULT_MAILBOX_CAPACITY):
        self.capacity = capacity
        self._pending: dict[Hashable, Any] = {}
        self._ready = trio.Event()
        self.overflowed = False
        self.closed = False
        self.waiting = False  # the reader is parked in take()
        self.flusher: Flusher | None = None  # writes for an idle reader (see Hub.run_pump)

    def put(self, key: Hashable, item: Any, wake: bool = True) -> None:
        """Never blocks: replaces an unsent item of the same key, or marks overflow."""
        if key not in self._pending and len(self._pending) >= self.capacity:
            self.overflowed = True
            wake = True
        else:
            self._pending[key] = item
        if wake:
            self._ready.set()

    @property
    def idle(self) -> bool:
        """The reader waits in take() with nothing pending and no wake-up on its way."""
        return (
            self.waiting
            and not self._pending
            and not self.woken
            and not self.overflowed
            and not self.closed
        )

    @property
    def woken(self) -> bool:
        return self._ready.is_set()

    def wake(self) -> None:
        self._ready.set()

    def drain(self) -> list[Any]:
        """Take everything pending now, oldest first (for a flusher)."""
        items = list(self._pending.values())
        self._pending.clear()
        return items

    def peek(self, key: Hashable) -> Any:
        """The pending item of this key, if any (None otherwise)."""
        return self._pending.get(key)

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def take(self) -> list[Any]:
        """Wait for at least one item, then take everything pending, oldest first."""
        while True:
            if self.overflowed:
                raise SlowConsumer()
            if self._pending:
                items = list(self._pending.values())
                self._pending.clear()
                return items
            if self.closed:
                raise MailboxClosed()
            self._ready = trio.Event()
            self.waiting = True
            try:
                await self._ready.wait()
            finally:
                self.waiting = False


class Flusher(Protocol):
    def flush(self, mailbox: Mailbox) -> None:
        """Send what the idle reader's mailbox holds, at once, or leave it to the reader."""


@dataclass(eq=False, slots=True)
class Subscription:
    mailbox: Mailbox
    keys: frozenset[Hashable] | None = None  # None: every key of the topic


class Hub:
    """Topics of subscriptions; publish puts into each subscriber's mailbox."""

    def __init__(self) -> None:
        self._topics: dict[str, set[Subscription]] = {}
        self._queue: list[tuple[str, Hashable, Any]] | None = None  # set while the pump runs
        self._queued = trio.Event()
        self._queued_at = 0.0  # when the first item of the queue was published

    async def run_pump(
        self, interval: float, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver what is published, resting after each delivery in proportion to how
        busy it found the loop, at most interval (see the module doc)."""
        self._queue = []
        task_status.started()
        rested_until = -math.inf
        try:
            while True:
                await self._queued.wait()
                started = trio.current_time()
                # Due when the first publish came, or when the rest ended if later.
                late = started - max(self._queued_at, rested_until)
                self._queued = trio.Event()
                queue, self._queue = self._queue, []
                direct: dict[Mailbox, Flusher] = {}
                for topic, key, item in queue:
                    self._deliver(topic, key, item, direct)
                del queue
                for mailbox, flusher in direct.items():
                    flusher.flush(mailbox)
                del direct
                now = trio.current_time()
                rested_until = now + min(interval, PACING_FACTOR * (now - started + late))
                await trio.sleep_until(rested_until)
        finally:
            queue, self._queue = self._queue or [], None
            for topic, key, item in queue:
                self._deliver(topic, key, item)

    @contextmanager
    def subscribe(self, topic: str, mailbox: Mailbox) -> Iterator[Subscription]:
        subscription = Subscription(mailbox)
        self._topics.setdefault(topic, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._topics.get(topic)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._topics[topic]

    def publish(self, topic: str, key: Hashable, item: Any) -> None:
        """Deliver to every subscriber of the topic (filtered by its keys), by the pump."""
        if self._queue is None:
            self._deliver(topic, key, item)
        else:
            if not self._queue:
                self._queued_at = trio.current_time()
                self._queued.set()
            self._queue.append((topic, key, item))

    def _deliver(
        self, topic: str, key: Hashable, item: Any, direct: dict[Mailbox, Flusher] | None = None
    ) -> None:
        """Put into each subscriber's mailbox. With direct, the mailboxes of idle readers
        that have a flusher are filled without waking the reader and noted in direct,
        to be flushed after the whole delivery (one write each, no task switch)."""
        for subscription in self._topics.get(topic, ()):
            if subscription.keys is None or key in subscription.keys or key is EVERYONE:
                mailbox = subscription.mailbox
                flusher = mailbox.flusher
                if (
                    direct is not None
                    and flusher is not None
                    and (mailbox in direct or mailbox.idle)
                ):
                    mailbox.put(key, item, wake=False)
                    direct[mailbox] = flusher
                else:
                    mailbox.put(key, item)

    def subscriber_count(self, topic: str) -> int:
        return len(self._topics.get(topic, ()))

    def topics(self, prefix: str) -> list[str]:
        """The topics that have subscribers and begin with prefix."""
        return [topic for topic in self._topics if topic.startswith(prefix)]

    def publish_fix(self, fix: LiveFix) -> None:
        self.publish(instance_topic(fix.instance_id), fix.device_token, fix)
        self.publish(device_topic(fix.device_token), fix.device_token, fix)


def instance_topic(instance_id: str) -> str:
    return f"instance:{instance_id}"


def device_topic(device_token: str) -> str:
    return f"device:{device_token}"


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


def events_topic(instance_id: str) -> str:
    return f"events:{instance_id}"
