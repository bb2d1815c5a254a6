"""The HTTP ingest paths: native JSON and the phone apps' own protocols (MQTT: tracker/ingest/mqtt.py).

Native JSON, OsmAnd / Traccar Client, GPSLogger (the OsmAnd form with speed
in m/s), OwnTracks HTTP, Overland and μlogger. Each authenticates its own
way (a JWT or `X-Ingest-Key`; the OsmAnd `id`; OwnTracks' Basic auth; an
Overland access token; a μlogger session cookie), parses its wire format (tracker/ingest/) into
validated positions, and hands them to the writer, answering only once they
are committed. A wrong or unknown key is refused and logged, without the key.
Every answer, errors included, is counted by wire format and status
(tracker/metrics.py).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from urllib.parse import parse_qsl

from quart import Blueprint, Response, request
from quart_schema import (
    DataSource,
    document_querystring,
    document_request,
    document_response,
    hide,
    operation_id,
    security_scheme,
    security_scheme_blueprint,
    tag_blueprint,
)

from tracker import jsoncodec
from tracker.api import authenticate, visible_device
from tracker.api.schemas import (
    GpsLoggerQuery,
    NativeIngest,
    OsmandQuery,
    OverlandAck,
    OverlandBody,
    OwnTracksAck,
    OwnTracksMessage,
    PhoneAppAck,
    PositionsAccepted,
    UloggerAnswer,
    UloggerForm,
    document_errors,
)
from tracker.auth import bearer_token
from tracker.context import current
from tracker.domain import Device
from tracker.errors import BadRequest, NotFound, Unauthorized, Unprocessable
from tracker.ingest import ulogger
from tracker.ingest.native import IngestError, parse_native
from tracker.ingest.osmand import OsmandFix, parse_osmand_json, parse_osmand_params
from tracker.ingest.overland import parse_overland
from tracker.ingest.owntracks import parse_owntracks
from tracker.models import Position
from tracker.store import devices
from tracker.writer import DeviceGone, IngestResult

log = logging.getLogger("tracker.ingest")

api_blueprint = Blueprint("ingest_api", __name__)  # under the API prefix
apps_blueprint = Blueprint("ingest_apps", __name__)  # phone apps, at fixed paths
tag_blueprint(api_blueprint, ["ingest"])
security_scheme_blueprint(api_blueprint, [{"bearer": []}, {"ingestKey": []}])
tag_blueprint(apps_blueprint, ["phone apps"])


# The wire format of each ingest route, for the metrics.
_FORMATS = {
    "ingest_api.post_positions": "native",
    "ingest_apps.osmand": "osmand",
    "ingest_apps.osmand_port_root": "osmand",
    "ingest_apps.owntracks": "owntracks",
    "ingest_apps.gpslogger": "gpslogger",
    "ingest_apps.overland": "overland",
    "ingest_apps.ulogger_client": "ulogger",
}


@api_blueprint.after_request
@apps_blueprint.after_request
async def _count_answer(response: Response) -> Response:
    wire_format = _FORMATS.get(request.endpoint or "")
    if wire_format is not None and (
        request.endpoint != "ingest_apps.osmand_port_root" or _on_osmand_listener()
    ):
        current().metrics.ingest_answered(wire_format, response.status_code)
    return response


def _client() -> str:
    return request.remote_addr or "?"


async def _store(device: Device, positions: list[Position]) -> IngestResult:
    try:
        return await current().writer.submit(device.token, positions)
    except DeviceGone:
        raise NotFound("no such device") from None


# -- native JSON -------------------------------------------------------------


async def _native_device(device_token: str) -> Device:
    key = request.headers.get("X-Ingest-Key")
    if key is not None:
        device = await current().db.read(devices.by_ingest_key, key)
        if device is None or device.token != device_token:
            log.warning("refused native ingest from %s: wrong ingest key", _client())
            raise Unauthorized("wrong ingest key for this device")
        return device
    principal = await authenticate("ingest", "admin")
    if principal.device_token is not None and principal.device_token != device_token:
        raise NotFound("no such device")
    return await visible_device(principal, device_token)


@api_blueprint.post("/devices/<device_token>/positions")
@document_request(NativeIngest)
@document_response(PositionsAccepted, 201)
@document_errors(400, 401, 403, 404, 413, 415, 422)
@operation_id("device_positions")
async def post_positions(device_token: str) -> tuple[dict, int]:
    device = await _native_device(device_token)
    body = await request.get_json(force=True)
    try:
        positions = parse_native(body)
    except IngestError as error:
        details = [{"field": error.path, "message": error.message}]
        raise Unprocessable(str(error), details=details) from None
    result = await _store(device, positions)
    return {"accepted": result.accepted, "duplicates": result.duplicates}, 201


# -- OsmAnd / Traccar Client -------------------------------------------------


def _osmand_fixes(body: bytes, speed_in_knots: bool) -> list[OsmandFix]:
    if request.query_string:
        params = request.args.to_dict(flat=True)
        fix = parse_osmand_params(params, speed_in_knots=speed_in_knots)
        return [fix] if fix else []
    stripped = body.lstrip()
    if request.mimetype == "application/json" or stripped[:1] in (b"{", b"["):
        return parse_osmand_json(jsoncodec.loads(body), speed_in_knots=speed_in_knots)
    form = dict(_parse_form(body))
    fix = parse_osmand_params(form, speed_in_knots=speed_in_knots)
    return [fix] if fix else []


def _parse_form(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise IngestError(None, "body", "form body is not valid UTF-8") from None


async def _osmand_device(identifier: str) -> Device:
    tracker = current()
    device = await tracker.db.read(devices.by_ingest_key, identifier)
    if device is not None:
        return device
    instance_id = tracker.settings.ingest.auto_register_instance
    if instance_id:
        device = await tracker.db.write(devices.register_with_key, instance_id, identifier)
        if device is not None:
            log.warning(
                "auto-registered OsmAnd device %s in instance %s", device.token, instance_id
            )
            return device
    log.warning("refused OsmAnd ingest from %s: unknown identifier", _client())
    raise NotFound("unknown device identifier")


async def _osmand(*, speed_in_knots: bool = True) -> Response:
    body = await request.get_data()
    try:
        fixes = _osmand_fixes(body, speed_in_knots)
    except (IngestError, jsoncodec.JSONDecodeError) as error:
        raise BadRequest(str(error)) from None
    by_device: dict[str, tuple[Device, list[Position]]] = {}
    for fix in fixes:
        if fix.identifier not in by_device:
            by_device[fix.identifier] = (await _osmand_device(fix.identifier), [])
        if fix.position is None:
            log.info("OsmAnd request from %s without coordinates: nothing stored", _client())
        else:
            by_device[fix.identifier][1].append(fix.position)
    for device, positions in by_device.values():
        await _store(device, positions)
    return Response(b"", status=200)


@apps_blueprint.route("/ingest/osmand", methods=["GET", "POST"])
@document_querystring(OsmandQuery)
@document_response(PhoneAppAck)
@document_errors(400, 404, 413)
@security_scheme([{"osmandId": []}])
@operation_id("ingest_osmand")
async def osmand() -> Response:
    return await _osmand()


@apps_blueprint.route("/", methods=["GET", "POST"])
@hide  # the same as /ingest/osmand, on the OsmAnd listener only
async def osmand_port_root() -> Response:
    """`/` of the OsmAnd listener (ingest.osmand_port), where Traccar Client posts by default."""
    if not _on_osmand_listener():
        raise NotFound("nothing here; the API is under the configured prefix")
    return await _osmand()


@apps_blueprint.route("/ingest/gpslogger", methods=["GET", "POST"])
@document_querystring(GpsLoggerQuery)
@document_response(PhoneAppAck)
@document_errors(400, 404, 413)
@security_scheme([{"osmandId": []}])
@operation_id("ingest_gpslogger")
async def gpslogger() -> Response:
    """GPSLogger's "Log to custom URL": the OsmAnd parameters, with `speed` (`%SPD`) in m/s."""
    return await _osmand(speed_in_knots=False)


def _on_osmand_listener() -> bool:
    port = current().settings.ingest.osmand_port
    return bool(port) and request.server is not None and request.server[1] == port


# -- OwnTracks ---------------------------------------------------------------


def _basic_credentials() -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    kind, _, encoded = header.partition(" ")
    if kind.lower() != "basic":
        raise Unauthorized("OwnTracks needs HTTP Basic auth: device token and ingest key")
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed Basic credentials") from None
    if not sep:
        raise Unauthorized("malformed Basic credentials")
    return user, password


@apps_blueprint.post("/ingest/owntracks")
@document_request(OwnTracksMessage)
@document_response(OwnTracksAck)
@document_errors(400, 401, 404, 413, 422)
@security_scheme([{"owntracksBasic": []}])
@operation_id("ingest_owntracks")
async def owntracks() -> Response:
    user, key = _basic_credentials()
    device = await current().db.read(devices.by_ingest_key, key)
    if device is None or device.token != user:
        log.warning("refused OwnTracks ingest from %s: wrong credentials", _client())
        response_headers = {"WWW-Authenticate": 'Basic realm="tracker"'}
        raise Unauthorized("wrong device token or ingest key", headers=response_headers)
    body = await request.get_data()
    try:
        result = parse_owntracks(jsoncodec.loads(body) if body.strip() else None)
    except jsoncodec.JSONDecodeError as error:
        raise BadRequest(str(error)) from None
    except IngestError as error:
        raise Unprocessable(str(error)) from None
    if result.encrypted:
        raise Unprocessable(
            "encrypted OwnTracks payloads cannot be read: turn encryption off in the app"
        )
    if result.position is not None:
        await _store(device, [result.position])
    elif result.message_type == "location":
        log.info("OwnTracks location without coordinates from %s: nothing stored", _client())
    return Response(b"[]", status=200, content_type="application/json")


# -- Overland ----------------------------------------------------------------


@apps_blueprint.post("/ingest/overland")
@document_request(OverlandBody)
@document_response(OverlandAck)
@document_errors(400, 401, 413)
@security_scheme([{"overlandKey": []}, {"overlandToken": []}])
@operation_id("ingest_overland")
async def overland() -> dict:
    key = request.args.get("token") or _bearer_or_none()
    device = await current().db.read(devices.by_ingest_key, key) if key else None
    if device is None:
        log.warning("refused Overland ingest from %s: wrong access token", _client())
        raise Unauthorized("set the device's ingest key as Overland's access token")
    body = await request.get_data()
    try:
        batch = parse_overland(jsoncodec.loads(body))
    except jsoncodec.JSONDecodeError as error:
        raise BadRequest(str(error)) from None
    except IngestError as error:
        raise BadRequest(str(error)) from None
    for skipped in batch.skipped:
        # The app would resend a refused batch forever: skip the bad point, keep the rest.
        log.info("Overland location from %s skipped: %s", _client(), skipped)
    await _store(device, batch.positions)
    return {"result": "ok"}


def _bearer_or_none() -> str | None:
    """Overland's access token from `Authorization: Bearer`, read by the API's own rule."""
    try:
        return bearer_token(request.headers.get("Authorization"))
    except Unauthorized:
        return None


# -- μlogger -----------------------------------------------------------------


@apps_blueprint.post("/ingest/ulogger/client/index.php")
@document_request(UloggerForm, source=DataSource.FORM)
@document_response(UloggerAnswer)
@document_errors(400, 401, 413)
@security_scheme([{}, {"uloggerSession": []}])
@operation_id("ingest_ulogger")
async def ulogger_client() -> Response:
    """μlogger's client protocol (tracker/ingest/ulogger.py): the app's server URL is
    `https://HOST/ingest/ulogger`, its user the device token, its password the ingest key."""
    tracker = current()
    form = (await request.form).to_dict(flat=True)
    action = form.get("action")
    if action == "auth":
        device = await tracker.db.read(devices.by_ingest_key, form.get("pass") or "")
        if device is None or device.token != form.get("user"):
            log.warning("refused μlogger sign-in from %s: wrong credentials", _client())
            raise Unauthorized("wrong device token or ingest key")
        key_hash = await tracker.db.read(devices.ingest_key_hash, device.token)
        answer = _ulogger_answer({"error": False})
        cookie = ulogger.session_cookie(tracker.cookie_key, device.token, key_hash, time.time())
        answer.set_cookie(
            ulogger.SESSION_COOKIE,
            cookie,
            max_age=ulogger.SESSION_SECONDS,
            httponly=True,
            secure=request.scheme == "https",
            samesite="Strict",
        )
        return answer
    device = await _ulogger_device(request.cookies.get(ulogger.SESSION_COOKIE, ""))
    if device is None:  # the app signs in again on a 401, whatever its body
        raise Unauthorized("sign in first (action=auth), or again: the session has ended")
    if action == "addtrack":
        if not form.get("track"):
            return _ulogger_answer({"error": True, "message": "Missing required parameter"})
        return _ulogger_answer({"error": False, "trackid": ulogger.new_track_id()})
    if action == "addpos":
        try:
            position = ulogger.parse_position(form)
        except IngestError as error:
            return _ulogger_answer({"error": True, "message": str(error)})
        await _store(device, [position])
        return _ulogger_answer({"error": False})
    return _ulogger_answer({"error": True, "message": "Unknown command"})


async def _ulogger_device(cookie: str) -> Device | None:
    tracker = current()
    session = ulogger.session_device(cookie, time.time())
    if session is None:
        return None
    key_hash = await tracker.db.read(devices.ingest_key_hash, session[0])
    if key_hash is None or not ulogger.is_valid(tracker.cookie_key, session, key_hash):
        return None
    return await tracker.db.read(devices.get, session[0])


def _ulogger_answer(body: dict) -> Response:
    return Response(jsoncodec.dumps(body), status=200, content_type="application/json")
