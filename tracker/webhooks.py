"""Webhooks: events from the outbox, POSTed in order per webhook, signed, retried, guarded.

Each delivery is a POST of `events.envelope(event)` signed per the Standard
Webhooks specification (`webhook-id`, `webhook-timestamp`,
`webhook-signature`, made by the `standardwebhooks` package), so a receiver
verifies it with any of that project's libraries. `webhook-id` is the
event's id, the same on every retry: receivers deduplicate with it, since
delivery is at least once (an attempt that reached the receiver but whose
answer was lost is sent again).

`Dispatcher.run` (in the app's nursery) reads the outbox, not a queue in
memory, so nothing committed is lost to a restart or a kill -9. Each
webhook has a cursor (the last event it is done with) and its own task, so
events reach one receiver in the order they were committed and a slow or
failing receiver never holds up another, nor ingest. A network error, a 5xx
or a 429 is retried with exponential back-off and jitter (honouring
`Retry-After`), the next events waiting behind it; after
`webhooks.retry_hours` of failure the webhook is disabled with the reason.
Any other answer outside 2xx (a 4xx, a redirect) is final: logged, and the
next event goes.

With several processes, one delivers at a time: whichever holds the lease
`LEASE` (tracker/leases.py), which stops its dispatcher before the lease can
pass to another. As a second guard, an attempt is recorded (the cursor moved,
the retry planned, the log written) only in a transaction that finds this
process still holding the lease; a dispatcher that lost it stops without
touching the cursor, and the new holder sends that event again, as after a
kill -9 (receivers deduplicate by `webhook-id`).

The guard: a URL must be http(s) without credentials; its host is resolved
and refused when any address is loopback, private, link-local (cloud
metadata), multicast or otherwise not global, unless
`webhooks.allow_private_targets`. That is checked at creation and again
before each attempt, and the attempt connects to the very address checked
(the Host header and TLS server name keep the name), so a DNS answer that
changes in between (rebinding) cannot aim it elsewhere. Redirects are not
followed, an attempt is bounded by `webhooks.timeout_seconds` overall, and at
most `MAX_RESPONSE_BYTES` of an answer are read.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import random
import secrets
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio
from standardwebhooks import Webhook as Signer

from tracker import __version__, jsoncodec
from tracker.config import WebhookSettings
from tracker.domain import Delivery, Webhook
from tracker.errors import StorageUnavailable
from tracker.events import OUTBOX_TOPIC, Event, envelope
from tracker.hub import Hub, Mailbox
from tracker.store import Database
from tracker.store import events as events_store
from tracker.store import leases as leases_store
from tracker.store import webhooks as webhooks_store

log = logging.getLogger("tracker.webhooks")

MAX_RESPONSE_BYTES = 4096
MAX_ERROR_CHARS = 300
POLL_SECONDS = 1.0  # due retries are looked for this often (new events come at once)
RESOLVE_TIMEOUT_SECONDS = 5.0
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 15 * 60
RETRY_AFTER_MAX_SECONDS = 6 * 3600
LEASE = "webhooks"

DELIVERED, RETRYING, FAILED, DISABLED = "delivered", "retrying", "failed", "disabled"
LEASE_LOST = "lease lost"  # not recorded: another process delivers from now on


class UnsafeTarget(Exception):
    """A webhook URL that is not http(s), or whose host resolves where it may not go."""


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_url(url: str) -> None:
    """http(s)://host[:port]/path, no credentials; UnsafeTarget saying what is wrong."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UnsafeTarget("url: not a URL with a valid port") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeTarget("url: must start with http:// or https://")
    if not parts.hostname:
        raise UnsafeTarget("url: names no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("url: must not contain credentials (the signature authenticates)")


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


async def resolve_target(url: str, allow_private: bool) -> str:
    """The address a delivery to url connects to; UnsafeTarget if refused or unresolvable."""
    check_url(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with trio.move_on_after(RESOLVE_TIMEOUT_SECONDS):
        try:
            found = await trio.socket.getaddrinfo(
                parts.hostname, port, type=trio.socket.SOCK_STREAM
            )
        except OSError as error:
            raise UnsafeTarget(f"url: cannot resolve {parts.hostname!r} ({error})") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in found]
        if not addresses:
            raise UnsafeTarget(f"url: {parts.hostname!r} has no address")
        if not allow_private:
            for address in addresses:
                if _refused(address):
                    raise UnsafeTarget(
                        f"url: {parts.hostname!r} resolves to {address}, a loopback, private,"
                        " link-local or reserved address (webhooks.allow_private_targets is off)"
                    )
        return str(addresses[0])
    raise UnsafeTarget(f"url: resolving {parts.hostname!r} timed out")


def signed_headers(secret: str, event_id: str, sent_at: float, body: str) -> dict[str, str]:
    timestamp = datetime.fromtimestamp(int(sent_at), UTC)
    return {
        "content-type": "application/json",
        "user-agent": f"tracker-webhooks/{__version__}",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(sent_at)),
        "webhook-signature": Signer(secret).sign(event_id, timestamp, body),
    }


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Wait before attempt+1: Retry-After when the receiver said, else 1, 2, 4 ... s
    (at most 15 min) with jitter, so receivers coming back are not hit in step."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), RETRY_AFTER_MAX_SECONDS)
    ceiling = min(BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)
    return random.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After in seconds (delta or HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError):
        return None


def _pinned(url: str, address: str) -> tuple[str, str, str]:
    """(the URL aimed at the address, the Host header, the TLS server name)."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return (
        urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        parts.netloc,
        parts.hostname or "",
    )


class Dispatcher:
    """Delivers the outbox to every enabled webhook: one task per webhook with work."""

    def __init__(
        self, db: Database, hub: Hub, settings: WebhookSettings, lease_holder: str | None = None
    ):
        self.db = db
        self.hub = hub
        self.settings = settings
        self.lease_holder = lease_holder  # set: record attempts only while it holds LEASE
        self._lease_lost = False  # then nothing more starts; tracker/leases.py stops the run
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._client: httpx.AsyncClient | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nudges = Mailbox(capacity=1)
        timeout = httpx.Timeout(self.settings.timeout_seconds)
        with self.hub.subscribe(OUTBOX_TOPIC, nudges):
            async with (
                httpx.AsyncClient(
                    follow_redirects=False, timeout=timeout, trust_env=False
                ) as client,
                trio.open_nursery() as nursery,
            ):
                self._client = client
                task_status.started()
                while True:
                    await self._start_due(nursery)
                    with trio.move_on_after(POLL_SECONDS):
                        await nudges.take()

    async def _start_due(self, nursery: trio.Nursery) -> None:
        if self._lease_lost:
            return
        try:
            webhooks = await self.db.read(webhooks_store.enabled)
        except StorageUnavailable:  # the store logged it; the next round retries
            return
        now = time.time()
        for webhook in webhooks:
            if webhook.next_attempt_at is not None and webhook.next_attempt_at > now:
                continue
            if webhook.id in self._running:
                self._again.add(webhook.id)
                continue
            self._running.add(webhook.id)
            nursery.start_soon(self._drain, webhook.id)

    async def _drain(self, webhook_id: str) -> None:
        """Deliver this webhook's events in order until none is left or one must wait."""
        try:
            while True:
                webhook = await self.db.read(webhooks_store.get, webhook_id)
                if webhook is None or not webhook.enabled:
                    return
                if webhook.next_attempt_at is not None and webhook.next_attempt_at > time.time():
                    return
                event = await self.db.read(
                    events_store.next_for_webhook,
                    webhook.instance_id,
                    webhook.id,
                    webhook.cursor,
                    webhook.event_types,
                )
                if event is None:
                    if webhook_id in self._again:
                        self._again.discard(webhook_id)
                        continue
                    return
                outcome = await self._attempt(webhook, event)
                if outcome == LEASE_LOST:
                    log.warning("webhook delivery: lease lost, %s stops here", LEASE)
                    self._lease_lost = True
                if outcome in (RETRYING, DISABLED, LEASE_LOST):
                    return  # the main loop starts this webhook again when it is due
        except Exception:
            log.exception("webhook %s: delivery task failed; retried next round", webhook_id)
        finally:
            self._running.discard(webhook_id)

    async def _attempt(self, webhook: Webhook, event: Event) -> str:
        started = time.time()
        status_code: int | None = None
        retry_after: float | None = None
        error: str | None = None
        refused = False
        try:
            address = await resolve_target(webhook.url, self.settings.allow_private_targets)
            status_code, retry_after = await self._post(webhook, event, address, started)
        except UnsafeTarget as problem:
            error, refused = str(problem), True
        except (httpx.HTTPError, OSError, trio.TooSlowError) as problem:
            error = _describe(problem)
        duration_ms = (time.time() - started) * 1000
        if error is None and status_code is not None and 200 <= status_code < 300:
            outcome = DELIVERED
        elif refused:
            outcome = DISABLED
        elif error is not None or status_code == 429 or (status_code or 0) >= 500:
            outcome = RETRYING
        else:
            outcome = FAILED
        return await self.db.write(
            _record,
            webhook,
            event,
            outcome,
            started,
            duration_ms,
            status_code,
            error,
            retry_after,
            self.settings.retry_hours * 3600,
            self.lease_holder,
        )

    async def _post(
        self, webhook: Webhook, event: Event, address: str, sent_at: float
    ) -> tuple[int, float | None]:
        assert self._client is not None
        body = jsoncodec.dumps(envelope(event)).decode()
        url, host, server_name = _pinned(webhook.url, address)
        headers = {**signed_headers(webhook.secret, event.id, sent_at, body), "host": host}
        extensions = {"sni_hostname": server_name} if url.startswith("https:") else {}
        request = self._client.build_request(
            "POST", url, content=body.encode(), headers=headers, extensions=extensions
        )
        with trio.fail_after(self.settings.timeout_seconds):
            response = await self._client.send(request, stream=True)
            try:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= MAX_RESPONSE_BYTES:
                        break
            finally:
                await response.aclose()
        return response.status_code, parse_retry_after(
            response.headers.get("retry-after"), time.time()
        )


def _describe(problem: BaseException) -> str:
    if isinstance(problem, trio.TooSlowError | httpx.TimeoutException):
        return "timed out"
    text = f"{type(problem).__name__}: {problem}".strip().rstrip(":")
    return text[:MAX_ERROR_CHARS]


def _record(
    conn,
    webhook: Webhook,
    event: Event,
    outcome: str,
    started: float,
    duration_ms: float,
    status_code: int | None,
    error: str | None,
    retry_after: float | None,
    retry_window_seconds: float,
    lease_holder: str | None = None,
) -> str:
    """Log the attempt and move the webhook on: next event, retry later, or disabled."""
    if lease_holder is not None and not leases_store.held_by(conn, LEASE, lease_holder):
        return LEASE_LOST
    if webhooks_store.get(conn, webhook.id) is None:
        return DISABLED  # deleted during the attempt: nothing to log it in
    attempt = webhooks_store.attempts_at(conn, webhook.id, event.id) + 1
    if outcome == RETRYING:
        failing_since = webhook.failing_since or started
        retry_at = started + backoff_seconds(attempt, retry_after)
        if retry_at - failing_since > retry_window_seconds:
            outcome = DISABLED
            error = (
                f"{error or f'HTTP {status_code}'} (failing for {retry_window_seconds / 3600:g} h)"
            )
        else:
            webhooks_store.retry_later(conn, webhook.id, failing_since, retry_at)
    if outcome == DISABLED:
        webhooks_store.disable(conn, webhook.id, error or "disabled")
    elif outcome in (DELIVERED, FAILED):
        webhooks_store.advance(conn, webhook.id, event.seq)
    webhooks_store.log_delivery(
        conn,
        Delivery(
            id=0,
            webhook_id=webhook.id,
            event_id=event.id,
            event_type=event.type,
            attempt=attempt,
            attempted_at=started,
            duration_ms=round(duration_ms, 1),
            status_code=status_code,
            error=error,
            outcome=outcome,
        ),
    )
    return outcome
