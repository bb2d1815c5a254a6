"""The Redis broker: what one process publishes reaches another process's subscribers.

Two `RedisBroker`s, each with its own hub, stand for two tracker processes;
they talk through a real redis-server of the test's own (tests/engines.py),
which some tests stop and start again mid-stream.
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest
import redis
import trio

from tracker.broker import (
    CHANNEL,
    RESYNC_TOPIC,
    RedisBroker,
    Resync,
    encode_fix,
    encode_publish,
    encode_resync,
)
from tracker.domain import StoredEvent
from tracker.events import OUTBOX_TOPIC
from tracker.hub import Hub, LiveFix, Mailbox, events_topic, instance_topic, session_topic
from tracker.models import Position
from tracker.sharing import SessionChanged, SessionEnded

WAIT_SECONDS = 20


class Process:
    """A hub and its broker: the live half of one tracker process."""

    def __init__(self, url: str):
        self.hub = Hub()
        self.broker = RedisBroker(url, self.hub)
        self.subscriptions = ExitStack()  # they end with the hub, at the end of the test

    def watch(self, topic: str) -> Mailbox:
        mailbox = Mailbox()
        self.subscriptions.enter_context(self.hub.subscribe(topic, mailbox))
        return mailbox


@pytest.fixture
async def processes(nursery, redis_server):
    first, second = Process(redis_server.url), Process(redis_server.url)
    for process in (first, second):
        await nursery.start(process.broker.run)
    with trio.fail_after(WAIT_SECONDS):
        await first.broker.subscribed.wait()
        await second.broker.subscribed.wait()
    return first, second


def live_fix(device_token: str = "truck-1", latitude: float = 51.5) -> LiveFix:
    position = Position(
        latitude=latitude,
        longitude=-0.1234567,
        timestamp=time.time(),
        speed=12.5,
        heading=270.0,
        accuracy=4.0,
        altitude=35.2,
        battery=81.0,
        track_token="client-trip-7",
        valid=True,
        attributes={"alarm": "sos", "charge": True},
    )
    return LiveFix("instance-1", device_token, position, "trip-1", "Ada Lovelace")


async def take(mailbox: Mailbox) -> list:
    with trio.fail_after(WAIT_SECONDS):
        return await mailbox.take()


async def test_a_fix_published_by_one_process_reaches_the_others_subscribers_whole(processes):
    first, second = processes
    watcher = second.watch(instance_topic("instance-1"))
    viewer = second.watch("device:truck-1")
    sent = live_fix()
    first.broker.publish_fix(sent)
    for mailbox in (watcher, viewer):
        [received] = await take(mailbox)
        assert isinstance(received, LiveFix) and received is not sent
        assert (
            received.instance_id,
            received.device_token,
            received.position,
            received.track_token,
            received.display_name,
        ) == (sent.instance_id, sent.device_token, sent.position, sent.track_token, "Ada Lovelace")


async def test_share_endings_changes_events_and_nudges_reach_the_other_process(processes):
    first, second = processes
    session = second.watch(session_topic("session-1"))
    events = second.watch(events_topic("instance-1"))
    outbox = second.watch(OUTBOX_TOPIC)
    event = StoredEvent(
        41, "evt_1", "instance-1", "share.cancelled", 1.5, {"id": "session-1", "eta": None}
    )
    first.broker.publish(session_topic("session-1"), "changed", SessionChanged())
    first.broker.publish(session_topic("session-1"), "ended", SessionEnded("cancelled"))
    first.broker.publish(events_topic("instance-1"), event.seq, event)
    first.broker.publish(OUTBOX_TOPIC, "new", None)
    received = await take(session)
    while len(received) < 2:
        received += await take(session)
    assert received == [SessionChanged(), SessionEnded("cancelled")]
    assert await take(events) == [event]
    assert await take(outbox) == [None]


async def test_a_burst_of_fixes_of_many_devices_arrives_whole_in_the_other_process(processes):
    first, second = processes
    watcher = second.watch(instance_topic("instance-1"))
    sent = {f"truck-{n}" for n in range(1234)}  # more than one batch each way
    for token in sorted(sent):
        first.broker.publish_fix(live_fix(token))
    received: set[str] = set()
    while received != sent:
        received |= {fix.device_token for fix in await take(watcher)}
        assert received <= sent


async def test_a_process_delivers_its_own_fixes_at_once_and_never_twice(processes):
    first, second = processes
    own = first.watch(instance_topic("instance-1"))
    other = second.watch(instance_topic("instance-1"))
    first.broker.publish_fix(live_fix("truck-1"))
    assert [fix.device_token for fix in await take(own)] == ["truck-1"]  # no round trip
    await take(other)
    first.broker.publish_fix(live_fix("truck-2"))
    await take(other)  # truck-2 went through Redis after truck-1 did
    assert [fix.device_token for fix in await take(own)] == ["truck-2"]  # no echo of truck-1


def test_a_process_knows_its_own_messages_by_their_first_bytes():
    broker = RedisBroker("redis://127.0.0.1:6379/0", Hub())
    own = [
        encode_fix(broker.origin, live_fix()),
        encode_publish(broker.origin, session_topic("s-1"), "s-1", SessionEnded("cancelled")),
        encode_publish(broker.origin, OUTBOX_TOPIC, "nudge", None),
        encode_resync(broker.origin),
    ]
    assert all(broker.is_own(message) for message in own)
    others = [encode_fix("elsewhere", live_fix()), encode_resync(broker.origin[:-1])]
    assert not any(broker.is_own(message) for message in others)


async def test_a_message_this_version_cannot_read_is_skipped_and_the_stream_goes_on(
    processes, redis_server, caplog
):
    first, second = processes
    watcher = second.watch(instance_topic("instance-1"))
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.publish(
            CHANNEL, encode_fix("future", live_fix("truck-3")).replace(b'"v":1', b'"v":2')
        )
        client.publish(CHANNEL, b"not json")
        client.publish(CHANNEL, b'{"v": 1, "origin": "elsewhere", "kind": "fix"}')
        client.publish(CHANNEL, b'{"v": 1, "origin": "elsewhere", "kind": "teleport"}')
    finally:
        client.close()
    first.broker.publish_fix(live_fix("truck-4"))
    assert [fix.device_token for fix in await take(watcher)] == ["truck-4"]
    skipped = [r.getMessage() for r in caplog.records if "skipped a message" in r.getMessage()]
    assert len(skipped) == 2 * 4, skipped  # each process skips each of the four


async def test_after_redis_restarts_subscribers_are_told_to_resync_and_fixes_flow_again(
    processes, redis_server
):
    first, second = processes
    own = first.watch(instance_topic("instance-1"))
    other = second.watch(instance_topic("instance-1"))
    resyncs = second.watch(RESYNC_TOPIC)
    first.broker.publish_fix(live_fix("truck-1"))
    await take(other)
    await take(own)

    redis_server.stop()
    first.broker.publish_fix(live_fix("truck-2"))  # for the others: dropped, or sent once up
    assert [fix.device_token for fix in await take(own)] == ["truck-2"]  # its own still see it

    redis_server.start()
    assert await take(resyncs) == [Resync()]
    with trio.fail_after(WAIT_SECONDS):
        latitude = 10.0
        while True:  # the sender reconnects when it has something to send
            latitude += 0.001
            first.broker.publish_fix(live_fix("truck-5", latitude))
            with trio.move_on_after(0.5):
                received = await other.take()
                if any(fix.device_token == "truck-5" for fix in received):
                    break
