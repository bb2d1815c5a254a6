"""Viewers get positions as soon as the loop can afford it: at once when it keeps up,
grouped only when deliveries are expensive, never later than the pacing interval.

These drive the hub's pump under trio's autojump clock: time passes only when every
task waits (or when a test's subscriber says a delivery took time; each test asks for
the clock, which is how pytest-trio knows to run it under that clock), so "at once" means
no virtual time passed, with no wall-clock bound.
"""

import pytest
import trio

from tracker.hub import Hub, Mailbox, SlowConsumer

INTERVAL = 0.5  # realtime.fanout_interval_seconds in these tests


@pytest.fixture
async def hub(nursery, autojump_clock):
    hub = Hub()
    await nursery.start(hub.run_pump, INTERVAL)
    return hub


class CostlyWriter:
    """A subscriber's WebSocket whose every write keeps the loop busy for `cost` seconds
    (the clock jumps), as a delivery to a thousand subscribers does: it records what it
    wrote, and when."""

    def __init__(self, clock, cost: float):
        self.clock = clock
        self.cost = cost
        self.writes: list[tuple[float, list]] = []

    def flush(self, mailbox: Mailbox) -> None:
        self.writes.append((trio.current_time(), mailbox.drain()))
        self.clock.jump(self.cost)


async def delivered(writer: CostlyWriter, count: int) -> None:
    """Wait (no virtual time passes) until the pump has written count times."""
    while len(writer.writes) < count:
        await trio.lowlevel.checkpoint()


async def wait_in_take(mailbox: Mailbox, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """An idle sender: parked in take(), so the pump writes for it."""
    task_status.started()
    await mailbox.take()


async def test_a_lone_position_is_delivered_at_once(hub, autojump_clock):
    mailbox = Mailbox()
    with hub.subscribe("instance:a", mailbox):
        await trio.sleep(10)  # a quiet hub
        published = trio.current_time()
        hub.publish("instance:a", "van-1", "fix 1")
        assert await mailbox.take() == ["fix 1"]
        assert trio.current_time() == published


async def test_positions_following_a_cheap_delivery_are_not_held_back(hub, autojump_clock):
    """While the loop keeps up, each position goes out on its own, as soon as it is
    published: none waits for a pacing interval."""
    mailbox = Mailbox()
    with hub.subscribe("instance:a", mailbox):
        started = trio.current_time()
        for n in range(5):
            hub.publish("instance:a", "van-1", f"fix {n}")
            assert await mailbox.take() == [f"fix {n}"]
        assert trio.current_time() == started


async def test_under_load_positions_are_grouped_and_each_device_keeps_its_newest_in_order(
    hub, nursery, autojump_clock
):
    mailbox = Mailbox()
    writer = CostlyWriter(autojump_clock, cost=0.1)
    mailbox.flusher = writer
    with hub.subscribe("instance:a", mailbox):
        await nursery.start(wait_in_take, mailbox)
        hub.publish("instance:a", "van-1", ("van-1", 0))
        await delivered(writer, 1)  # (and the write took 100 ms)
        for n in range(1, 4):  # a burst while the pump rests
            for van in ("van-1", "van-2", "van-3"):
                hub.publish("instance:a", van, (van, n))
        await trio.sleep(INTERVAL * 2)
    assert [items for _, items in writer.writes] == [
        [("van-1", 0)],
        [("van-1", 3), ("van-2", 3), ("van-3", 3)],  # newest of each device, in one write
    ]


async def test_a_grouped_position_waits_no_longer_than_the_interval(hub, nursery, autojump_clock):
    mailbox = Mailbox()
    writer = CostlyWriter(autojump_clock, cost=10.0)  # far more than the interval
    mailbox.flusher = writer
    with hub.subscribe("instance:a", mailbox):
        await nursery.start(wait_in_take, mailbox)
        hub.publish("instance:a", "van-1", "fix 1")
        await delivered(writer, 1)
        published = trio.current_time()  # after the costly write
        hub.publish("instance:a", "van-1", "fix 2")
        await trio.sleep(INTERVAL * 4)
    (_, first), (written_at, second) = writer.writes
    assert (first, second) == (["fix 1"], ["fix 2"])
    assert written_at - published <= INTERVAL + 1e-9


async def test_a_subscriber_that_falls_behind_under_load_is_cut(hub, autojump_clock):
    """A mailbox that overflows marks its reader a slow consumer (the WebSocket then
    closes with 4009), however deliveries are paced."""
    mailbox = Mailbox(capacity=3)
    with hub.subscribe("instance:a", mailbox):
        for n in range(10):
            hub.publish("instance:a", f"van-{n}", n)
        await trio.sleep(INTERVAL * 2)
        with pytest.raises(SlowConsumer):
            await mailbox.take()
