"""OwnTracks over MQTT: subscribe on the user's broker and store `location` messages.

With `ingest.mqtt_url` set, `MqttIngest.run` (a task in the app's nursery)
subscribes to `{ingest.mqtt_topic_prefix}/+/+` (OwnTracks publishes to
`owntracks/<user>/<device>`), and each message takes the same road as
OwnTracks' HTTP mode: `parse_owntracks`, then the writer, with the same
duplicate, backlog and validation rules. The topic names the device: an admin
gives a device its topic (`tracker device add --mqtt-topic owntracks/alice/phone`,
or `mqtt_topic` over REST), and the topic is looked up per batch of messages,
so a new mapping counts at once. A message on a topic no device has is
ignored (and counted); only `location` messages are stored; everything is
counted in `tracker_mqtt_messages_total{result}` (tracker/metrics.py).

The network side is paho-mqtt's threaded loop (`loop_start`): its thread
hands each message to this task through a bounded memory channel (so a busy
writer slows the reading of the socket, never loses a message), and its own
reconnect logic retries with a doubling back-off when the broker goes away;
one line is logged per change of state (connected, lost, unreachable,
refused), never a traceback.

Delivery is at least once: tracker subscribes with QoS 1 and acknowledges a
message (manual acks) only once its position is committed, or once it is
known to be one that will never be stored (unknown topic, malformed, not a
location). While the database cannot store (a full disk), the batch is held
and tried again with back-off, unacknowledged, so a message is never lost:
the broker redelivers what is unacknowledged when the connection is made
again, and a redelivered duplicate is stored once. The session is persistent
(`clean_session` false, a stable `ingest.mqtt_client_id`), so the broker
queues QoS 1 messages while tracker is stopped or restarting, and tracker
receives them when it connects again.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

from tracker import jsoncodec
from tracker.config import MqttBroker
from tracker.domain import Device
from tracker.errors import StorageUnavailable
from tracker.ingest.native import IngestError
from tracker.ingest.owntracks import parse_owntracks
from tracker.metrics import Metrics
from tracker.models import Position
from tracker.store import Database, devices
from tracker.writer import DeviceGone, Writer

log = logging.getLogger("tracker.ingest.mqtt")

QUEUE_MESSAGES = 256  # between paho's thread and this task; when full, paho's thread waits
BATCH_MESSAGES = 256  # taken together: one lookup per topic, one commit per device
SUBSCRIBE_QOS = 1
KEEPALIVE_SECONDS = 60
RECONNECT_MIN_SECONDS = 1
RECONNECT_MAX_SECONDS = 60
STORAGE_RETRY_MAX_SECONDS = 30
STOP_WAIT_SECONDS = 3
MAX_LOGGED_UNKNOWN_TOPICS = 1000


def subscription(prefix: str) -> str:
    """The topic filter tracker subscribes to: OwnTracks' `<prefix>/<user>/<device>`."""
    return f"{prefix}/+/+"


def is_subscribed(topic: str, prefix: str) -> bool:
    """Whether tracker receives what is published to `topic` (so a device may be given it)."""
    return paho.topic_matches_sub(subscription(prefix), topic)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the broker delivered it; `mid` is what its acknowledgement names."""

    topic: str
    payload: bytes
    qos: int
    mid: int


class MqttIngest:
    """The subscription on the user's broker, and the task that stores what arrives."""

    def __init__(
        self,
        broker: MqttBroker,
        topic_prefix: str,
        client_id: str,
        db: Database,
        writer: Writer,
        metrics: Metrics,
        ca_file: str = "",
    ):
        self.broker = broker
        self.topic_filter = subscription(topic_prefix)
        self.client_id = client_id
        self.db = db
        self.writer = writer
        self.metrics = metrics
        self.ca_file = ca_file
        self._state = "starting"  # changed on paho's thread only
        self._stopping = False
        self._logged_unknown: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[Delivery](QUEUE_MESSAGES)
        client = self._client(send, trio.lowlevel.current_trio_token())
        client.connect_async(self.broker.host, self.broker.port, KEEPALIVE_SECONDS)
        client.loop_start()
        try:
            task_status.started()
            async with receive:  # closed first when stopping: a waiting hand-over gives up
                while True:
                    batch = [await receive.receive()]
                    while len(batch) < BATCH_MESSAGES:
                        try:
                            batch.append(receive.receive_nowait())
                        except trio.WouldBlock:
                            break
                    await self._take_when_readable(batch, client)
        finally:
            self._stopping = True
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_WAIT_SECONDS):
                await trio.to_thread.run_sync(_stop, client, abandon_on_cancel=True)
            self.metrics.mqtt_subscribed.set(0)

    # -- the trio side: store, count, acknowledge ----------------------------

    async def _take_when_readable(self, batch: list[Delivery], client: paho.Client) -> None:
        """`_take`, tried again while the database cannot be read (nothing is acknowledged then)."""
        delay = RECONNECT_MIN_SECONDS
        while True:
            try:
                return await self._take(batch, client)
            except StorageUnavailable:  # a topic lookup failed, before any commit or ack
                await trio.sleep(delay)
                delay = min(delay * 2, STORAGE_RETRY_MAX_SECONDS)

    async def _take(self, batch: list[Delivery], client: paho.Client) -> None:
        """Store a batch's locations, then acknowledge in order what is done with."""
        outcomes: list[str] = []  # per delivery: a result, or "device:<token>" while pending
        by_device: dict[str, list[Position]] = {}
        known: dict[str, Device | None] = {}
        for delivery in batch:
            if delivery.topic not in known:
                known[delivery.topic] = await self.db.read(devices.by_mqtt_topic, delivery.topic)
            device = known[delivery.topic]
            if device is None:
                self._log_unknown(delivery.topic)
                outcomes.append("unknown_topic")
                continue
            outcome = self._read(delivery)
            if isinstance(outcome, Position):
                by_device.setdefault(device.token, []).append(outcome)
                outcomes.append("device:" + device.token)
            else:
                outcomes.append(outcome)
        committed = {
            token: await self._commit(token, positions) for token, positions in by_device.items()
        }
        for delivery, outcome in zip(batch, outcomes, strict=True):
            if outcome.startswith("device:"):
                outcome = committed[outcome.removeprefix("device:")]
            if outcome == "failed":
                continue  # not acknowledged: the broker delivers it again on the next connection
            if outcome not in ("stored", "duplicate"):  # those are counted by _commit
                self.metrics.mqtt_messages[outcome].inc()
            client.ack(delivery.mid, delivery.qos)

    def _read(self, delivery: Delivery) -> Position | str:
        """The message's position, or what it is instead (a result of MQTT_RESULTS)."""
        try:
            payload = delivery.payload.strip()
            result = parse_owntracks(jsoncodec.loads(payload) if payload else None)
        except (jsoncodec.JSONDecodeError, IngestError) as error:
            log.warning("OwnTracks message on %s not stored: %s", delivery.topic, error)
            return "malformed"
        if result.encrypted:
            log.warning(
                "encrypted OwnTracks message on %s cannot be read: turn encryption off in the app",
                delivery.topic,
            )
            return "encrypted"
        if result.position is None:
            return "ignored"  # a transition, card, waypoint, lwt, ... or a retained-topic clear
        return result.position

    async def _commit(self, token: str, positions: list[Position]) -> str:
        """Store one device's positions of a batch: "stored", "unknown_topic" or "failed".

        While the database cannot store, wait and try again (the messages stay
        unacknowledged); a device deleted meanwhile makes them unknown.
        """
        delay = RECONNECT_MIN_SECONDS
        while True:
            try:
                result = await self.writer.submit(token, positions)
            except DeviceGone:
                return "unknown_topic"
            except StorageUnavailable:  # logged by the store, once per interval
                self.metrics.mqtt_messages["failed"].inc(len(positions))
                await trio.sleep(delay)
                delay = min(delay * 2, STORAGE_RETRY_MAX_SECONDS)
                continue
            except Exception:  # a bug, logged by the writer: left to the broker's redelivery
                self.metrics.mqtt_messages["failed"].inc(len(positions))
                return "failed"
            self.metrics.mqtt_messages["stored"].inc(result.accepted)
            self.metrics.mqtt_messages["duplicate"].inc(result.duplicates)
            return "stored"

    def _log_unknown(self, topic: str) -> None:
        if (
            topic not in self._logged_unknown
            and len(self._logged_unknown) < MAX_LOGGED_UNKNOWN_TOPICS
        ):
            self._logged_unknown.add(topic)
            log.info(
                "MQTT messages on %s ignored: no device has this topic"
                " (tracker device add --mqtt-topic %s)",
                topic,
                topic,
            )

    # -- paho's thread: connection state and the hand-over --------------------

    def _client(
        self, send: trio.MemorySendChannel[Delivery], token: trio.lowlevel.TrioToken
    ) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=paho.MQTTv311,
            manual_ack=True,
        )
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set(ca_certs=self.ca_file or None)
        client.reconnect_delay_set(RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS)

        def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
            try:
                delivery = Delivery(message.topic, message.payload, message.qos, message.mid)
            except UnicodeDecodeError:  # a topic that is not UTF-8: the broker should refuse it
                client.ack(message.mid, message.qos)
                self.metrics.mqtt_messages["unknown_topic"].inc()
                return
            # Stopping: the message stays unacknowledged, so the broker delivers it again.
            with contextlib.suppress(
                trio.BrokenResourceError, trio.RunFinishedError, trio.Cancelled
            ):
                trio.from_thread.run(send.send, delivery, trio_token=token)

        def on_connect(client: paho.Client, userdata: object, flags, reason, properties) -> None:
            if reason.is_failure:
                self._report(
                    "refused", logging.WARNING, "the MQTT broker at %s refused tracker: %s", reason
                )
                return
            self._report("connected", logging.INFO, "connected to the MQTT broker at %s")
            client.subscribe(self.topic_filter, qos=SUBSCRIBE_QOS)

        def on_subscribe(client: paho.Client, userdata: object, mid, reasons, properties) -> None:
            if any(reason.is_failure for reason in reasons):
                log.warning("the MQTT broker refused the subscription to %s", self.topic_filter)
                return
            log.info("subscribed to %s", self.topic_filter)
            self.metrics.mqtt_subscribed.set(1)

        def on_disconnect(client: paho.Client, userdata: object, flags, reason, properties) -> None:
            self.metrics.mqtt_subscribed.set(0)
            if not self._stopping and self._state == "connected":
                self._report(
                    "lost", logging.WARNING, "lost the MQTT broker at %s (%s); reconnecting", reason
                )

        def on_connect_fail(client: paho.Client, userdata: object) -> None:
            if self._state in ("starting", "connected"):
                self._report(
                    "unreachable",
                    logging.WARNING,
                    "cannot reach the MQTT broker at %s; retrying every %d to %d s",
                    RECONNECT_MIN_SECONDS,
                    RECONNECT_MAX_SECONDS,
                )

        client.on_message = on_message
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_connect_fail = on_connect_fail
        return client

    def _report(self, state: str, level: int, message: str, *args: object) -> None:
        """Log a change of the connection's state, once (a retry in the same state is silent)."""
        if state == self._state:
            return
        self._state = state
        log.log(level, message, self.broker.address, *args)


def _stop(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()
