"""Share links, public side: `GET /share/{token}`, its QR code and the live stream `/share/{token}/live`.

No JWT: the share token is the credential. Both are rate limited per client
address (failed lookups much harder), answer 404 / close 4001 for an unknown
or expired token and 410 / `session_ended` for a completed or cancelled one,
and show only what the session's `share_config` allows (tracker/sharing.py).
Responses carry `Referrer-Policy: no-referrer`, `Cache-Control: no-store`
and `X-Robots-Tag: noindex`; tokens never reach a log.

The live stream sends the current position on connect, then at most one
position per `sharing.push_interval_seconds` when a newer one exists, and
`session_ended` (then close 1000) the moment the session completes, is
cancelled, or expires.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import Any

import segno
import trio
from quart import Blueprint, Response, request
from quart_schema import document_response, operation_id, security_scheme_blueprint, tag_blueprint

from tracker import jsoncodec
from tracker.api.schemas import PublicShare, QrCode, document_errors
from tracker.broker import RESYNC_TOPIC, Resync
from tracker.context import Tracker, current
from tracker.domain import ACTIVE, EXPIRED, ShareSession
from tracker.errors import Gone, NotFound, RateLimited
from tracker.hub import LiveFix, device_topic, session_topic
from tracker.models import Position
from tracker.profiles import display_value
from tracker.ratelimit import FAILED_LOOKUP_COST
from tracker.sharing import (
    SPEED_SAMPLES,
    SPEED_WINDOW_SECONDS,
    TRAIL_MAX_POINTS,
    SessionChanged,
    SessionEnded,
    effective_status,
    end_reason,
    eta_for,
    hash_share_token,
    links,
    live_message,
    looks_like_share_token,
    moving_speed,
    public_view,
)
from tracker.store import devices
from tracker.store import positions as positions_store
from tracker.store import sessions as sessions_store
from tracker.websocket import BAD_TOKEN, NORMAL, Connection, Frame, run_connection

blueprint = Blueprint("share", __name__)
tag_blueprint(blueprint, ["share"])
security_scheme_blueprint(blueprint, [])  # public: the share token is the credential

PUBLIC_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}


@blueprint.after_request
async def _public_headers(response: Response) -> Response:
    response.headers.update(PUBLIC_HEADERS)
    return response


class ShareLookupFailed(Exception):
    """Unknown or expired (404 / 4001), or ended (410 / session_ended)."""

    def __init__(self, session: ShareSession | None):
        self.session = session


async def find_session(tracker: Tracker, token: str, address: str) -> ShareSession:
    """The active session of a share token, charging the caller's rate limit."""
    wait = tracker.share_limiter.take(address)
    if wait:
        tracker.metrics.refused_by_rate_limit.inc()
        raise RateLimited(wait)
    session = None
    if looks_like_share_token(token):
        session = await tracker.db.read(sessions_store.by_token_hash, hash_share_token(token))
    if session is None or effective_status(session) != ACTIVE:
        if session is None or effective_status(session) == EXPIRED:
            tracker.share_limiter.charge(address, FAILED_LOOKUP_COST - 1)
        raise ShareLookupFailed(session)
    return session


@dataclass
class DeviceState:
    """What a public view needs from the store: position, moving speed, name, trail."""

    position: Position | None
    speed: float | None
    display_name: str
    trail: list[Position]


def device_state(conn, session: ShareSession, with_trail: bool) -> DeviceState:
    device = devices.get(conn, session.device_token)
    name = display_value(device.profile, device.display_field, device.token) if device else ""
    position = positions_store.latest(conn, session.device_token)
    if position is None:
        return DeviceState(None, None, name, [])
    speed_since = position.timestamp - SPEED_WINDOW_SECONDS
    since = min(speed_since, session.created_at) if with_trail else speed_since
    recent = positions_store.last_since(conn, session.device_token, since, TRAIL_MAX_POINTS)
    speed = moving_speed([p for p in recent if p.timestamp >= speed_since])
    trail = (
        [p for p in recent if p.timestamp >= session.created_at and p.valid] if with_trail else []
    )
    return DeviceState(position, speed, name, trail)


@blueprint.get("/share/<share_token>")
@document_response(PublicShare)
@document_errors(404, 410, 429)
@operation_id("share")
async def get_share(share_token: str) -> dict:
    tracker = current()
    try:
        session = await find_session(tracker, share_token, request.remote_addr or "?")
    except ShareLookupFailed as failed:
        raise _http_error(failed.session) from None
    state = await tracker.db.read(device_state, session, True)
    eta = eta_for(session, state.position, state.speed, tracker.settings)
    return public_view(session, state.position, eta, state.display_name, state.trail)


QR_SCALE = 6  # pixels per module at the SVG's natural size


@blueprint.get("/share/<share_token>/qr.svg")
@document_response(QrCode)
@document_errors(404, 410, 429)
@operation_id("share_qr")
async def get_share_qr(share_token: str) -> Response:
    """The share link (map_url) as a QR code, drawn by the server as SVG."""
    tracker = current()
    try:
        await find_session(tracker, share_token, request.remote_addr or "?")
    except ShareLookupFailed as failed:
        raise _http_error(failed.session) from None
    svg = io.BytesIO()
    map_url = links(tracker.settings, share_token)["map_url"]
    segno.make(map_url, error="m").save(svg, kind="svg", scale=QR_SCALE, border=2, xmldecl=False)
    response = Response(svg.getvalue(), content_type="image/svg+xml")
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _http_error(session: ShareSession | None) -> Exception:
    if session is None or effective_status(session) == EXPIRED:
        return NotFound("this share link is invalid or has expired")
    status = effective_status(session)
    return Gone(
        f"this share session is {status}",
        details={"status": status, "reason": end_reason(session)},
    )


# -- the live stream ------------------------------------------------------------


async def share_stream(tracker: Tracker, connection: Connection, share_token: str) -> None:
    await connection.accept()
    try:
        session = await find_session(tracker, share_token, connection.client_address)
    except RateLimited as limited:
        await _say_and_close(
            connection, {"type": "error", "code": 4029, "message": limited.message}, 4029
        )
        return
    except ShareLookupFailed as failed:
        if failed.session is None or effective_status(failed.session) == EXPIRED:
            error = {
                "type": "error",
                "code": BAD_TOKEN,
                "message": "invalid or expired share token",
            }
            await _say_and_close(connection, error, BAD_TOKEN)
        else:
            ended = {"type": "session_ended", "reason": end_reason(failed.session)}
            await _say_and_close(connection, ended, NORMAL)
        return

    mailbox = connection.mailbox
    with (
        tracker.hub.subscribe(device_topic(session.device_token), mailbox),
        tracker.hub.subscribe(session_topic(session.id), mailbox),
        tracker.hub.subscribe(RESYNC_TOPIC, mailbox),
    ):
        viewer = ShareViewer(tracker, connection, session)

        async def no_commands(message: dict[str, Any]) -> None:
            connection.post("error", {"type": "error", "code": 4002, "message": "unknown message"})

        await run_connection(
            connection,
            sender=viewer.run,
            on_message=no_commands,
            keepalive=tracker.keepalive,
        )


async def _say_and_close(connection: Connection, message: dict, code: int) -> None:
    await connection.send_json(message)
    await connection.close(code)


@dataclass(eq=False)
class _Rendering:
    """One session's message for one fix, rendered by the first viewer, awaited by the rest."""

    frame: Frame | None = None
    done: trio.Event = field(default_factory=trio.Event)


class ShareViewer:
    """One live viewer: rate-limited position pushes, and session_ended when it ends."""

    def __init__(self, tracker: Tracker, connection: Connection, session: ShareSession):
        self.tracker = tracker
        self.connection = connection
        self.session = session
        self.interval = tracker.settings.sharing.push_interval_seconds
        self.last_sent: float | None = None  # timestamp of the last position sent
        self.next_allowed = 0.0
        self.pending: LiveFix | None = None

    def _deadline(self) -> float:
        return trio.current_time() + max(0.0, self.session.expires_at - time.time())

    async def _render(self, position: Position, display_name: str) -> Frame:
        recent = await self.tracker.db.read(
            positions_store.last_since,
            self.session.device_token,
            position.timestamp - SPEED_WINDOW_SECONDS,
            SPEED_SAMPLES,
        )
        eta = eta_for(self.session, position, moving_speed(recent), self.tracker.settings)
        return Frame.text(jsoncodec.dumps(live_message(self.session, position, eta, display_name)))

    async def _render_fix(self, fix: LiveFix) -> Frame:
        # Every viewer of this session shares one rendering of each fix.
        key = (
            "share",
            self.session.id,
            repr(self.session.share_config),
            repr(self.session.destination),
        )
        rendering = fix.cached(key)
        if rendering is None:
            rendering = fix.cache(key, _Rendering())
            try:
                rendering.frame = await self._render(fix.position, fix.display_name)
            finally:
                rendering.done.set()  # a cancelled renderer leaves frame None: others render
        else:
            await rendering.done.wait()
        if rendering.frame is None:
            return await self._render(fix.position, fix.display_name)
        return rendering.frame

    async def _send_current(self) -> None:
        state = await self.tracker.db.read(device_state, self.session, False)
        if state.position is None:
            return
        frame = await self._render(state.position, state.display_name)
        self.last_sent = state.position.timestamp
        self.next_allowed = trio.current_time() + self.interval
        await self.connection.send_frame(frame)

    async def _send_pending(self) -> None:
        fix = self.pending
        self.pending = None
        if fix is None:
            return
        if self.last_sent is not None and fix.position.timestamp <= self.last_sent:
            return
        self.last_sent = fix.position.timestamp
        self.next_allowed = trio.current_time() + self.interval
        await self.connection.send_frame(await self._render_fix(fix))

    async def _finish(self, reason: str) -> None:
        await self._send_pending()
        await self.connection.send_json({"type": "session_ended", "reason": reason})
        await self.connection.close(NORMAL, reason)

    async def run(self) -> None:
        await self._send_current()
        deadline = self._deadline()
        while True:
            wake_at = min(deadline, self.next_allowed if self.pending else math.inf)
            with trio.move_on_at(wake_at):
                for item in await self.connection.mailbox.take():
                    if isinstance(item, Frame):
                        await self.connection.send_frame(item)
                    elif isinstance(item, SessionEnded):
                        await self._finish(item.reason)
                        return
                    elif isinstance(item, SessionChanged | Resync):
                        # Resync: this process may have missed the session's end or
                        # change, or fixes, while the broker was away: read both again.
                        reloaded = await self.tracker.db.read(sessions_store.get, self.session.id)
                        if reloaded is None:
                            await self._finish("cancelled")
                            return
                        if effective_status(reloaded) != ACTIVE:
                            await self._finish(end_reason(reloaded) or "expired")
                            return
                        self.session = reloaded
                        self.pending = None
                        await self._send_current()
                    elif isinstance(item, LiveFix):
                        self.pending = item
            if trio.current_time() >= deadline:
                await self._finish("expired")
                return
            due = self.pending is not None and trio.current_time() >= self.next_allowed
            if due:
                await self._send_pending()
            await trio.lowlevel.checkpoint()
