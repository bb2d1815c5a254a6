"""The hot HTTP routes on raw ASGI: single-position ingest and the last position, past the framework.

Quart's request path alone costs about a quarter of what a bare ASGI app
serves on the same Hypercorn worker, and each ingest used to wait for a
worker thread to look its key up (docs/benchmarks.md). `HotRoutes` wraps
Quart's `asgi_app` (as `WebSocketRouter` does for the WebSockets) and answers
the ordinary, successful requests of the busiest routes itself:

- `POST {api_prefix}/devices/{token}/positions` with `X-Ingest-Key` or a Bearer JWT;
- `GET|POST /ingest/osmand` and `/ingest/gpslogger` with the fix in the query string;
- `POST /ingest/owntracks` (HTTP Basic: device token and ingest key);
- `GET {api_prefix}/devices/{token}/position`.

Devices and live positions come from `HotReads` (tracker/store/hotreads.py),
in memory while no other connection changed them, with no worker-thread hop
before the commit; the commit is the writer's, as on every path, so a 2xx
still means committed.

The rule that keeps the answers identical: this path answers only what it
is sure of. Anything else (a wrong key, a bad token, invalid JSON, a refused
fix, an odd content type, a body without Content-Length or over the limit,
a query parameter that needs a 4xx, a device not found) goes to the Quart
handler with the body it has read so far replayed, and is answered, logged
and counted there exactly as before. Only what can fail after the commit
has begun (the device deleted meanwhile, storage unavailable, a bug) is
answered here, through the same error model (tracker/errors.py). The Quart
routes stay registered: they are the OpenAPI documentation and the fallback.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

import trio
import werkzeug.urls  # noqa: F401  registers the "werkzeug.url_quote" error handler

from tracker import jsoncodec
from tracker.api.positions import position_body
from tracker.auth import Principal
from tracker.context import Tracker
from tracker.domain import Device
from tracker.errors import TrackerError, error_body
from tracker.ingest.native import IngestError, parse_native
from tracker.ingest.osmand import parse_osmand_params
from tracker.ingest.owntracks import parse_owntracks
from tracker.models import Position
from tracker.store.hotreads import HotReads
from tracker.timefmt import TimeFormatError, TimeStyle
from tracker.writer import DeviceGone

log = logging.getLogger("tracker")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]
# What Quart answers for an empty Response (the OsmAnd acknowledgement).
EMPTY_HEADERS = [(b"content-type", b"text/html; charset=utf-8")]


class FallThrough(Exception):
    """This request is not one the fast path is sure of: the framework answers it."""


class ClientGone(Exception):
    """The client left before its body arrived: nobody to answer."""


class Request:
    """One HTTP request as the fast path sees it: scope, headers by lower-case name, the body."""

    __slots__ = ("scope", "headers", "body", "read_started", "_receive")

    def __init__(self, scope: dict, receive: Callable):
        self.scope = scope
        self._receive = receive
        self.headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            self.headers.setdefault(name.lower(), value)
        self.body = b""
        self.read_started = False  # once true, the framework gets the body from replay()

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def query(self) -> dict[str, str]:
        """The query string's first value of each name, decoded as Werkzeug's `args` does
        (invalid percent-escapes stay encoded: the error handler Werkzeug registers)."""
        args: dict[str, str] = {}
        try:
            text = self.scope.get("query_string", b"").decode()
        except UnicodeDecodeError:
            raise FallThrough from None
        for name, value in parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote"):
            args.setdefault(name, value)
        return args

    def json_body(self) -> bool:
        """Whether the content type is the one the API takes (else Quart answers 415)."""
        content_type = self.header(b"content-type")
        return content_type is not None and (
            content_type.partition(";")[0].strip().lower() == "application/json"
        )

    async def read_body(self, limit: int, timeout: float) -> None:
        """The whole body, when Content-Length announces one within the limit; else FallThrough."""
        length = self.header(b"content-length")
        if length is None:
            if b"transfer-encoding" in self.headers:
                raise FallThrough
            return
        if not length.isdigit() or int(length) > limit:
            raise FallThrough
        expected = int(length)
        self.read_started = True
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(timeout):
            while True:
                message = await self._receive()
                if message["type"] != "http.request":
                    raise ClientGone
                chunk = message.get("body", b"")
                chunks.append(chunk)
                size += len(chunk)
                if not message.get("more_body", False) or size > expected:
                    self.body = b"".join(chunks)
                    if size > expected:
                        raise FallThrough
                    return
        self.body = b"".join(chunks)
        raise FallThrough  # timed out, or the client left: the framework says so

    def replay(self) -> Callable[[], Awaitable[dict]]:
        """A receive that gives the body read so far, then the client's own messages."""
        receive = self._receive
        if not self.read_started:
            return receive
        more = len(self.body) < int(self.header(b"content-length") or 0)
        pending = [{"type": "http.request", "body": self.body, "more_body": more}]

        async def replayed() -> dict:
            if pending:
                return pending.pop()
            return await receive()

        return replayed


class HotRoutes:
    """ASGI middleware: the hot HTTP routes answered here, everything else by Quart (`inner`)."""

    def __init__(self, inner: ASGIApp, tracker: Tracker, max_body_bytes: int, body_timeout: float):
        self.inner = inner
        self.tracker = tracker
        self.reads = HotReads(tracker.db.path)
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        prefix = re.escape(tracker.settings.server.api_prefix)
        self._device_route = re.compile(f"{prefix}/devices/([^/]+)/(positions|position)")

    def close(self) -> None:
        self.reads.close()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.inner(scope, receive, send)
            return
        route = self._route(scope["method"], scope["path"])
        if route is None:
            await self.inner(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            await route(request, send)
        except FallThrough:
            await self.inner(scope, request.replay(), send)
        except ClientGone:
            return

    def _route(self, method: str, path: str) -> Callable | None:
        if path.startswith("/ingest/"):
            if path in ("/ingest/osmand", "/ingest/gpslogger") and method in ("GET", "POST"):
                return self._osmand if path == "/ingest/osmand" else self._gpslogger
            if path == "/ingest/owntracks" and method == "POST":
                return self._owntracks
            return None
        match = self._device_route.fullmatch(path)
        if match is None:
            return None
        token, resource = match.groups()
        if resource == "positions" and method == "POST":
            return lambda request, send: self._native(request, send, token)
        if resource == "position" and method == "GET":
            return lambda request, send: self._position(request, send, token)
        return None

    # -- ingest -----------------------------------------------------------------

    async def _native(self, request: Request, send: Callable, device_token: str) -> None:
        if not request.json_body():
            raise FallThrough
        await request.read_body(self.max_body_bytes, self.body_timeout)
        key = request.header(b"x-ingest-key")
        if key is not None:
            device = self.reads.device_by_ingest_key(key) if key.isascii() else None
            if device is None or device.token != device_token:
                raise FallThrough
        else:
            principal = self._principal(request, "ingest", "admin")
            if principal.device_token is not None and principal.device_token != device_token:
                raise FallThrough
            device = self._visible_device(principal, device_token, None)
        try:
            positions = parse_native(jsoncodec.loads(request.body))
        except (IngestError, jsoncodec.JSONDecodeError):
            raise FallThrough from None
        await self._store(request, send, "native", device, positions, _accepted_answer)

    async def _osmand(self, request: Request, send: Callable) -> None:
        await self._osmand_query(request, send, "osmand", speed_in_knots=True)

    async def _gpslogger(self, request: Request, send: Callable) -> None:
        await self._osmand_query(request, send, "gpslogger", speed_in_knots=False)

    async def _osmand_query(
        self, request: Request, send: Callable, wire_format: str, *, speed_in_knots: bool
    ) -> None:
        """The OsmAnd form with its fix in the query string (the other forms go to Quart)."""
        if not request.scope.get("query_string"):
            raise FallThrough
        await request.read_body(self.max_body_bytes, self.body_timeout)
        try:
            fix = parse_osmand_params(request.query(), speed_in_knots=speed_in_knots)
        except IngestError:
            raise FallThrough from None
        if fix is None or fix.position is None or not fix.identifier.isascii():
            raise FallThrough
        device = self.reads.device_by_ingest_key(fix.identifier)
        if device is None:
            raise FallThrough
        await self._store(request, send, wire_format, device, [fix.position], _empty_answer)

    async def _owntracks(self, request: Request, send: Callable) -> None:
        await request.read_body(self.max_body_bytes, self.body_timeout)
        user, key = _basic_credentials(request.header(b"authorization"))
        device = self.reads.device_by_ingest_key(key) if key.isascii() else None
        if device is None or device.token != user or not request.body.strip():
            raise FallThrough
        try:
            result = parse_owntracks(jsoncodec.loads(request.body))
        except (IngestError, jsoncodec.JSONDecodeError):
            raise FallThrough from None
        if result.encrypted or result.position is None:
            raise FallThrough
        await self._store(request, send, "owntracks", device, [result.position], _owntracks_answer)

    async def _store(
        self,
        request: Request,
        send: Callable,
        wire_format: str,
        device: Device,
        positions: list[Position],
        answer: Callable[[object], tuple[int, list, bytes]],
    ) -> None:
        """Commit, then answer; what fails once the commit has begun is answered here."""
        try:
            result = await self.tracker.writer.submit(device.token, positions)
            status, headers, body = answer(result)
        except DeviceGone:
            status, headers = 404, JSON_HEADERS
            body = error_body("not_found", "no such device")
        except TrackerError as error:  # storage unavailable: 503 with Retry-After
            status, body = error.status, error_body(error.code, error.message, error.details)
            headers = JSON_HEADERS + [
                (name.lower().encode(), str(value).encode())
                for name, value in error.headers.items()
            ]
        except Exception as error:
            log.exception("unexpected error", exc_info=error)
            status, headers = 500, JSON_HEADERS
            body = error_body("internal", "internal server error")
        self.tracker.metrics.ingest_answered(wire_format, status)
        await _respond(send, status, headers, body)

    # -- reads ------------------------------------------------------------------

    async def _position(self, request: Request, send: Callable, device_token: str) -> None:
        args = request.query()
        instance_id = args.get("instance_id")
        principal = self._principal(request, "read", "admin")
        device = self._visible_device(principal, device_token, instance_id)
        try:
            style = TimeStyle.parse(args.get("timezone"), args.get("date_format"))
        except TimeFormatError:
            raise FallThrough from None
        position = self.reads.latest(device_token)
        if position is None:
            raise FallThrough
        body = position_body(device, position, style, with_profile=instance_id is not None)
        await _respond(send, 200, JSON_HEADERS, jsoncodec.dumps(body))

    # -- who is calling ---------------------------------------------------------

    def _principal(self, request: Request, *scopes: str) -> Principal:
        authorization = request.header(b"authorization") or ""
        kind, _, token = authorization.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise FallThrough
        try:
            principal = self.tracker.verifier.verify(token.strip())
            principal.require_scope(*scopes)
        except TrackerError:
            raise FallThrough from None
        return principal

    def _visible_device(
        self, principal: Principal, device_token: str, instance_id: str | None
    ) -> Device:
        device = self.reads.device(device_token)
        if device is None:
            raise FallThrough
        try:
            principal.require_owner_visible(device.instance_id, instance_id, "no such device")
        except TrackerError:
            raise FallThrough from None
        return device


def _basic_credentials(authorization: str | None) -> tuple[str, str]:
    kind, _, encoded = (authorization or "").partition(" ")
    if kind.lower() != "basic":
        raise FallThrough
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise FallThrough from None
    if not sep:
        raise FallThrough
    return user, password


def _accepted_answer(result) -> tuple[int, list, bytes]:
    body = {"accepted": result.accepted, "duplicates": result.duplicates}
    return 201, JSON_HEADERS, jsoncodec.dumps(body)


def _empty_answer(result) -> tuple[int, list, bytes]:
    return 200, EMPTY_HEADERS, b""


def _owntracks_answer(result) -> tuple[int, list, bytes]:
    return 200, JSON_HEADERS, b"[]"


async def _respond(send: Callable, status: int, headers: list, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
