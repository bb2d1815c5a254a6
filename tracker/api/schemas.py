"""The response shapes of the API, for the OpenAPI document.

Request bodies are described by the models that validate them (in each api
module, via quart-schema's `validate_request`). What the handlers answer is
plain JSON built from the domain modules, so its shape is written down here,
once, and attached to each route with `document_response`; the fuzz test
(tests/test_openapi.py) checks every answer of the running server against it.
The query-string models mirror what `tracker.api` parses by hand (pagination,
time style, `instance_id`); the native ingest body, parsed by
tracker/ingest/native.py, is described the same way.

A field that some answers leave out is `omitted()`: not required, and not
null when present. A field that is always there but may be null is typed
`X | None`. Every error is one `ErrorResponse` (tracker/errors.py), whatever
its status; `document_errors(401, 404, ...)` attaches it to a route.

`TrackerOpenAPIProvider` builds the document: quart-schema's provider, plus
answers without a body (`NoContent`), response headers in their proper place,
each error status described by its HTTP name, the 429 every route may
answer (the per-address connection cap, tracker/connlimit.py) and the 503
(the database cannot store now: `StorageUnavailable`, tracker/errors.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel
from quart_schema import OpenAPIProvider, document_response
from werkzeug.routing.rules import Rule

from tracker.api import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_WAYPOINT_PAGE,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    MAX_WAYPOINT_PAGE,
)
from tracker.domain import STATUSES
from tracker.ingest.native import MAX_BATCH_POSITIONS
from tracker.models import MAX_TRACK_TOKEN_LENGTH, DisplayField

T = TypeVar("T", bound=Callable)

ShareStatus = Literal[STATUSES]  # type: ignore[valid-type]
EndReason = Literal["completed", "arrived", "cancelled", "expired"]
Timestamp = int | str  # unix seconds, or a string in the `date_format` asked for


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def omitted(**constraints: Any) -> Any:
    """A field some answers leave out: not required, never null when present."""
    return Field(None, json_schema_extra=_no_default, **constraints)


def query(description: str, *, required: bool = False, **constraints: Any) -> Any:
    """A query parameter (quart-schema reads `required` from the parameter's own schema)."""
    if required:
        return Field(description=description, json_schema_extra={"required": True}, **constraints)
    return Field(None, description=description, json_schema_extra=_no_default, **constraints)


class Shape(BaseModel):
    """Answers are exactly these fields: anything else is a mismatch."""

    model_config = ConfigDict(extra="forbid")


# -- errors and bodiless answers ---------------------------------------------------


class FieldProblem(Shape):
    field: str = Field(description="where, as the client spelled it, e.g. `positions[3].latitude`")
    message: str


class EndedSession(Shape):
    status: ShareStatus
    reason: EndReason | None = omitted()


ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "request_timeout",
    "conflict",
    "gone",
    "payload_too_large",
    "unsupported_media_type",
    "invalid",
    "rate_limited",
    "storage_unavailable",
    "internal",
    "error",
]


class ErrorBody(Shape):
    code: ErrorCode = Field(description="stable and machine-readable; the status says the same")
    message: str = Field(description="for people: what went wrong, and often what to do")
    details: list[FieldProblem] | EndedSession = omitted(
        description="each bad field (400, 422), or the state of an ended share session (409, 410)"
    )


class ErrorResponse(Shape):
    """Every error, whatever its status: `{"error": {"code", "message", "details"?}}`."""

    error: ErrorBody


class RetryAfter(BaseModel):
    retry_after: int = Field(alias="Retry-After", description="seconds to wait before retrying")


class NoContent(BaseModel):
    """No body."""


def document_errors(*statuses: int) -> Callable[[T], T]:
    """Route decorator: each status answers an `ErrorResponse` (429 with `Retry-After`)."""

    def decorator(func: T) -> T:
        for status in statuses:
            headers = RetryAfter if status in (429, 503) else None
            func = document_response(ErrorResponse, status, headers)(func)
        return func

    return decorator


# -- query strings -----------------------------------------------------------------


class TimeStyleQuery(BaseModel):
    timezone: str = query("IANA zone the timestamps are written in (default UTC)", max_length=64)
    date_format: Literal["unix", "iso", "human", "localized"] = query(
        "`unix` (default): integer seconds; `iso`: ISO 8601 with offset; `human` (or"
        " `localized`): local time with the zone's abbreviation"
    )


class PositionQuery(TimeStyleQuery):
    instance_id: str = query(
        "the device's instance; with it the answer adds the display name and driver profile"
    )


class DeviceReadQuery(TimeStyleQuery):
    instance_id: str = query("the device's instance (checked against the token)")


class DeviceTrackQuery(DeviceReadQuery):
    limit: int = query(
        f"waypoints per page, 1-{MAX_WAYPOINT_PAGE:,} (default {DEFAULT_WAYPOINT_PAGE:,})",
        ge=1,
        le=MAX_WAYPOINT_PAGE,
    )
    since: float = query(
        "only waypoints after this time (unix seconds, exclusive): the `next_since` of the"
        " previous page"
    )


class WindowQuery(BaseModel):
    from_: str = query(
        "start of the window: unix seconds or ISO 8601 (default: 7 days before `to`)",
        alias="from",
        max_length=64,
    )
    to: str = query("end of the window: unix seconds or ISO 8601 (default: now)", max_length=64)


class TripListQuery(DeviceReadQuery, WindowQuery):
    limit: int = query(
        f"page size, 1-{MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})", ge=1, le=MAX_PAGE_SIZE
    )
    offset: int = query("items to skip (default 0)", ge=0, le=MAX_OFFSET)


class TripExportQuery(BaseModel):
    instance_id: str = query("the device's instance (checked against the token)")
    format: Literal["gpx", "geojson", "csv"] = query(
        "`gpx` (default): GPX 1.1; `geojson`: RFC 7946; `csv`: a header row, times in UTC"
    )
    points: bool = query(
        "GeoJSON only: one Point per fix instead of one LineString per trip (default false)"
    )


class RangeExportQuery(TripExportQuery, WindowQuery):
    pass


class InstanceQuery(BaseModel):
    instance_id: str = query("the device's instance (checked against the token)")


class RequiredInstanceQuery(BaseModel):
    instance_id: str = query("the instance", required=True)


class PageQuery(BaseModel):
    limit: int = query(
        f"page size, 1-{MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})", ge=1, le=MAX_PAGE_SIZE
    )
    offset: int = query("items to skip (default 0)", ge=0, le=MAX_OFFSET)


class MetadataListQuery(RequiredInstanceQuery, PageQuery):
    pass


class SessionListQuery(RequiredInstanceQuery, PageQuery):
    status: ShareStatus = query("only sessions with this status")
    device_token: str = query("only sessions of this device")
    order_id: str = query("only sessions with this order id")


class DeviceListQuery(RequiredInstanceQuery, PageQuery):
    q: str = query("only devices whose token or display name contains this (any case)")


class SessionQuery(BaseModel):
    instance_id: str = query("the session's instance (checked against the token)")


class OsmandQuery(BaseModel):
    lat: float = query("latitude", ge=-90, le=90)
    lon: float = query("longitude", ge=-180, le=180)
    timestamp: str = query("unix seconds or milliseconds, or ISO 8601 (default: now)")
    speed: float = query("knots; -1 means unknown", ge=0, le=19_000)
    bearing: float = query("degrees; -1 means unknown", ge=0, le=360)
    altitude: float = query("metres", ge=-100_000, le=1_000_000)
    accuracy: float = query("metres; 0 and -1 mean unknown", ge=0, le=10_000_000)
    batt: float = query("battery percent; -1 means unknown", ge=0, le=100)


class GpsLoggerQuery(OsmandQuery):
    speed: float = query("m/s (GPSLogger's %SPD)", ge=0, le=10_000)


# -- request bodies parsed by hand -------------------------------------------------


class NativePosition(Shape):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    timestamp: float | str | None = omitted(
        description="unix seconds (>= 1e11: milliseconds) or ISO 8601; default: time of receipt"
    )
    speed: float | None = omitted(ge=0, le=10_000, description="m/s")
    heading: float | None = omitted(ge=0, le=360, description="degrees; 360 is read as 0")
    accuracy: float | None = omitted(ge=0, le=10_000_000, description="metres")
    altitude: float | None = omitted(ge=-100_000, le=1_000_000, description="metres")
    battery: float | None = omitted(ge=0, le=100, description="percent")
    track_token: str | None = omitted(
        max_length=MAX_TRACK_TOKEN_LENGTH, description="the client's own trip id"
    )


class NativeBatch(Shape):
    positions: list[NativePosition] = Field(min_length=1, max_length=MAX_BATCH_POSITIONS)


class NativeIngest(RootModel[NativePosition | NativeBatch]):
    """One position, or `{"positions": [...]}`; a batch is stored whole or not at all."""


class OwnTracksMessage(BaseModel):
    """One OwnTracks message as the app sends it; only `_type: location` gives a position."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    message_type: str = Field(None, alias="_type", json_schema_extra=_no_default)
    lat: float = omitted(ge=-90, le=90)
    lon: float = omitted(ge=-180, le=180)
    tst: int = omitted(description="unix seconds of the fix")
    vel: float = omitted(description="km/h")
    cog: float = omitted(description="degrees")
    acc: float = omitted(description="metres")
    alt: float = omitted(description="metres")
    batt: float = omitted(description="percent")


# -- answers -----------------------------------------------------------------------


class Health(Shape):
    """The service and its database: `ok` (200), or `degraded` (503)."""

    status: Literal["ok", "degraded"]
    version: str
    database: Literal["ok", "error"] = Field(description="whether the database answers a read")
    storage: Literal["ok", "unavailable"] = Field(
        description="whether a write commits now (`unavailable`: disk full, I/O error, ...)"
    )
    uptime_seconds: float


class Readiness(Shape):
    """Whether the server can take traffic: `ready` (200) once a write commits, else 503."""

    status: Literal["ready", "unavailable"]
    message: str = omitted(description="why not, when unavailable")


class Instance(Shape):
    """An instance the token may see."""

    instance_id: str
    name: str
    created_at: int
    device_count: int


class StoredProfile(Shape):
    """A driver's profile as stored: only the fields that have a value."""

    full_name: str = omitted()
    first_name: str = omitted()
    last_name: str = omitted()
    nickname: str = omitted()
    email: str = omitted()
    phone: str = omitted()
    client_id: str = omitted()


class DeviceCreated(Shape):
    """The new device, with its ingest key: shown only here and at rotation."""

    device_token: str
    instance_id: str
    ingest_key: str
    profile: StoredProfile
    display_field: DisplayField
    created_at: int
    mqtt_topic: str = omitted()  # when given: where its OwnTracks app publishes over MQTT


class DeviceMqttTopic(Shape):
    """The device's MQTT topic as now stored (null: none)."""

    device_token: str
    mqtt_topic: str | None


class IngestKey(Shape):
    """The device's new ingest key; the old one no longer works."""

    device_token: str
    ingest_key: str


class DeviceProfile(Shape):
    """The device's profile as now stored."""

    device_token: str
    profile: StoredProfile


class DeviceMetadata(Shape):
    """A device's display name, the profile field it comes from, and the profile."""

    device_token: str
    display_field: DisplayField
    display_value: str
    profile: StoredProfile


class DeviceMetadataPage(Shape):
    """One page of the instance's devices, ordered by device token."""

    items: list[DeviceMetadata]
    total: int
    limit: int
    offset: int


class DisplayFieldsUpdated(Shape):
    """Every mapping applied, in the order given."""

    updated: int
    items: list[DeviceMetadata]


class Refreshed(Shape):
    device_token: str
    display_value: str


class RefreshFailed(Shape):
    device_token: str
    reason: str


class RefreshSummary(Shape):
    """What was refreshed, from where, and what could not be (never an error status)."""

    source: Literal["user_service", "stored_profiles"]
    refreshed: list[Refreshed]
    failed: list[RefreshFailed]


class Waypoint(Shape):
    latitude: float
    longitude: float
    speed: float | None = Field(description="m/s")
    heading: float | None = Field(description="degrees")
    accuracy: float | None = Field(description="metres")
    altitude: float | None = Field(description="metres")
    battery: float | None = Field(description="percent")
    timestamp: Timestamp


class DevicePosition(Waypoint):
    """The device's last known position; with `instance_id`, its name and profile too."""

    device_token: str
    track_token: str
    attributes: dict[str, str | float | bool | None] = omitted(
        description="what the device sent beyond the position (e.g. `alarm`), when anything"
    )
    display_identifier: str = omitted(description="with instance_id")
    display_field: DisplayField = omitted(description="with instance_id")
    driver_profile: StoredProfile = omitted(description="with instance_id")


class DeviceTrack(Shape):
    """One page of the waypoints of the device's latest trip, in time order."""

    device_token: str
    track_token: str
    active: bool
    count: int = Field(description="waypoints in this page")
    waypoints: list[Waypoint]
    has_more: bool = Field(description="later waypoints remain: ask again with `since=next_since`")
    next_since: float | None = Field(
        description="exact unix time of this page's last waypoint when more remain, else null"
    )


class LatLon(Shape):
    latitude: float
    longitude: float


class TripStats(Shape):
    """A trip: times, distance, speeds, ends (`/stats`: the device's latest trip)."""

    device_token: str
    track_token: str
    started_at: Timestamp
    ended_at: Timestamp
    duration_seconds: float
    distance_meters: float
    average_speed: float | None = Field(description="m/s; null for a trip of one fix")
    max_speed: float | None = Field(description="m/s")
    waypoint_count: int
    start: LatLon
    end: LatLon
    active: bool


class LastFix(Shape):
    latitude: float
    longitude: float
    speed: float | None = Field(description="m/s")
    heading: float | None = Field(description="degrees")
    accuracy: float | None = Field(description="metres")
    timestamp: int = Field(description="unix seconds of the fix")


class DeviceSummary(Shape):
    """A device at a glance: its name, last fix, trip and status."""

    device_token: str
    display_name: str
    last_position: LastFix | None = Field(description="null until the device reports")
    track_token: str | None = Field(description="the trip of the last position")
    status: Literal["moving", "stopped", "offline"] = Field(
        description="offline: no fix for console.offline_after_seconds; moving: the last"
        " fix's speed is above 0.5 m/s; stopped otherwise"
    )


class DevicePage(Shape):
    """One page of the instance's devices, by display name."""

    items: list[DeviceSummary]
    total: int
    limit: int
    offset: int


class TripPage(Shape):
    """One page of the device's trips that overlap the window, newest first."""

    items: list[TripStats]
    total: int
    limit: int
    offset: int


class SignedIn(Shape):
    """A JWT for the user, accepted wherever a minted token is."""

    token: str
    expires_at: int = Field(description="unix seconds")
    scope: Literal["read", "admin"] = Field(description="admin for role admin, read for viewer")
    instances: list[str] | Literal["*"] = Field(description="the user's instance, or * for all")
    username: str


class TripDetail(TripStats):
    """One trip's stats and a page of its waypoints, in time order."""

    count: int = Field(description="waypoints in this page")
    waypoints: list[Waypoint]
    has_more: bool = Field(description="later waypoints remain: ask again with `since=next_since`")
    next_since: float | None = Field(
        description="exact unix time of this page's last waypoint when more remain, else null"
    )


class MediaBody(BaseModel):
    """A body that is not JSON: `media_types` maps each media type to its schema."""

    media_types: ClassVar[dict[str, dict[str, Any]]] = {}


class ExportFile(MediaBody):
    """The file, streamed (docs/decisions.md, "History and exports")."""

    media_types: ClassVar[dict[str, dict[str, Any]]] = {
        "application/gpx+xml": {"type": "string", "description": "GPX 1.1"},
        "application/geo+json": {
            "type": "object",
            "description": "an RFC 7946 FeatureCollection",
            "required": ["type", "features"],
            "properties": {
                "type": {"const": "FeatureCollection"},
                "features": {"type": "array", "items": {"type": "object"}},
            },
        },
        "text/csv": {"type": "string", "description": "a header row, then one row per fix"},
    }


class GpxUpload(MediaBody):
    """A GPX 1.0 or 1.1 file (at most 20 MiB); its track points are imported."""

    media_types: ClassVar[dict[str, dict[str, Any]]] = {
        media_type: {"type": "string", "description": "GPX"}
        for media_type in ("application/gpx+xml", "application/xml", "text/xml")
    }


class Attachment(BaseModel):
    content_disposition: str = Field(
        alias="Content-Disposition",
        description='`attachment; filename="<device>_<from>_<to>.<format>"`',
    )


class PositionsAccepted(Shape):
    """Committed: new positions, and those already stored (same device and time)."""

    accepted: int
    duplicates: int


class SessionDestination(Shape):
    latitude: float
    longitude: float
    label: str = omitted()


class SessionConfig(Shape):
    show_speed: bool
    show_heading: bool
    show_eta: bool
    show_destination_on_map: bool
    auto_complete_on_arrival: bool


class ShareSession(Shape):
    """A share session as its instance's admins see it."""

    id: str
    device_token: str
    instance_id: str
    status: ShareStatus
    end_reason: EndReason | None
    created_at: int
    expires_at: int
    ended_at: int | None
    recipient_name: str | None
    notes: str | None
    order_id: str | None
    destination: SessionDestination | None
    share_config: SessionConfig
    eta_seconds: int | None = omitted(
        description="in lists, for an active session with a destination: null until the"
        " device reports; 0: arrived"
    )


class ShareLinks(Shape):
    map_url: str = Field(description="the share page to send the recipient")
    api_url: str = Field(description="GET {api_prefix}/share/{share_token}")
    ws_url: str = Field(description="the live stream, {api_prefix}/share/{share_token}/live")


class ShareSessionCreated(ShareSession):
    """The new session, with its share token: shown only here."""

    share_token: str
    share_url: str
    links: ShareLinks


class ShareSessionPage(Shape):
    """One page of the instance's share sessions."""

    items: list[ShareSession]
    total: int
    limit: int
    offset: int


class Driver(Shape):
    latitude: float
    longitude: float
    heading: float | None = omitted(description="unless share_config hides it")
    speed: float | None = omitted(description="m/s; unless share_config hides it")


class PublicShare(Shape):
    """What the recipient of a share link may see, and nothing more."""

    status: ShareStatus
    driver: Driver | None = Field(description="null until the device reports a position")
    order_id: str | None
    recipient_name: str | None
    notes: str | None
    driver_display_name: str
    last_updated: int | None
    expires_at: int
    trail: list[Annotated[list[float], Field(min_length=2, max_length=2)]] = Field(
        description="[latitude, longitude] of the fixes since the session started"
    )
    destination: SessionDestination | None = omitted(description="unless share_config hides it")
    eta_seconds: int | None = omitted(description="unless share_config hides it; 0: arrived")


class QrCode(RootModel[str]):
    """The share link as a QR code (SVG), to show beside the link."""

    media_type: ClassVar[str] = "image/svg+xml"  # not JSON: see TrackerOpenAPIProvider


class OverlandBody(BaseModel):
    """An Overland batch: GeoJSON Point features (`[longitude, latitude]`), newest point aside."""

    model_config = ConfigDict(extra="allow")

    locations: list[dict[str, Any]] = Field(
        max_length=10_000,
        description="GeoJSON Point features; properties.timestamp (ISO 8601), speed (m/s),"
        " course, horizontal_accuracy, altitude, battery_level (0-1); -1 means unknown",
    )
    current: dict[str, Any] = omitted(description="the phone's newest point, also stored")
    trip: dict[str, Any] = omitted(description="the app's current trip (not used)")


class OverlandAck(BaseModel):
    """Received: Overland deletes the batch from the phone only on exactly this answer."""

    result: Literal["ok"]


class UloggerForm(BaseModel):
    """One μlogger client request (form or multipart), chosen by `action`."""

    model_config = ConfigDict(extra="allow")

    action: Literal["auth", "addtrack", "addpos"]
    user: str = omitted(description="auth: the device token")
    # The ingest key travels in this form field as the app sends it.
    pass_: str = Field(
        None, alias="pass", json_schema_extra=_no_default, description="auth: the ingest key"
    )
    track: str = omitted(description="addtrack: the track's name")
    trackid: int = omitted(description="addpos: the id addtrack answered")
    lat: float = omitted(ge=-90, le=90)
    lon: float = omitted(ge=-180, le=180)
    time: int = omitted(description="addpos: unix seconds of the fix")
    speed: float = omitted(description="m/s")
    bearing: float = omitted(description="degrees")
    accuracy: float = omitted(description="metres")
    altitude: float = omitted(description="metres")
    battery: float = omitted(description="percent")


class UloggerAnswer(BaseModel):
    """μlogger's answer: `error` false (with `trackid` after addtrack), or true and why."""

    error: bool
    message: str = omitted()
    trackid: int = omitted()


class OwnTracksAck(RootModel[list[Any]]):
    """Received; OwnTracks expects a list of messages back, and gets none."""

    root: list[Any] = Field(max_length=0)


class PhoneAppAck(NoContent):
    """Received (and stored when it carried a position); an empty body."""


# -- the document ------------------------------------------------------------------


class TrackerOpenAPIProvider(OpenAPIProvider):
    """quart-schema's builder, plus bodiless answers, response headers, and named errors."""

    def build_request_body(self, model: type[BaseModel], source: Any) -> tuple[dict, dict]:
        if issubclass(model, MediaBody):
            content = {name: {"schema": schema} for name, schema in model.media_types.items()}
            return {"content": content, "required": True, "description": model.__doc__}, {}
        return super().build_request_body(model, source)

    def build_response_object(
        self, model: type[BaseModel], headers_model: type[BaseModel] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if issubclass(model, MediaBody):
            content = {name: {"schema": schema} for name, schema in model.media_types.items()}
            response = {"content": content, "description": inspect.getdoc(model)}
            definitions = {}
        elif issubclass(model, NoContent):
            response: dict[str, Any] = {"description": inspect.getdoc(model)}
            definitions: dict[str, Any] = {}
        elif getattr(model, "media_type", None):
            response = {
                "description": inspect.getdoc(model),
                "content": {model.media_type: {"schema": {"type": "string"}}},
            }
            definitions = {}
        else:
            # quart-schema would put the headers inside `content`, where they do not belong.
            response, definitions = super().build_response_object(model, None)
        if headers_model is not None:
            schema = headers_model.model_json_schema(by_alias=True)
            required = set(schema.get("required", ()))
            response["headers"] = {
                name: {
                    "schema": {k: v for k, v in field.items() if k not in ("title", "description")},
                    "description": field.get("description", ""),
                    "required": name in required,
                }
                for name, field in schema["properties"].items()
            }
        return response, definitions

    def build_paths(self, rule: Rule) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        for operations in paths.values():
            for operation in operations.values():
                responses = operation["responses"]
                if 429 not in responses:
                    # Any route, past server.max_connections_per_address (tracker/connlimit.py).
                    responses[429], definitions = self.build_response_object(
                        ErrorResponse, RetryAfter
                    )
                    components.update(definitions)
                if 503 not in responses:
                    # Any route, when the database cannot store or read (disk full, I/O error).
                    responses[503], definitions = self.build_response_object(
                        ErrorResponse, RetryAfter
                    )
                    components.update(definitions)
                for status, response in responses.items():
                    if int(status) >= 400:
                        response["description"] = HTTPStatus(int(status)).phrase
        return paths, components


# -- webhooks (tracker/api/webhooks.py) ----------------------------------------------


class WebhookView(Shape):
    """A webhook as its instance's admins see it (the secret is shown only at creation)."""

    id: str
    instance_id: str
    url: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = Field(description="why the server disabled it, if it did")
    description: str | None
    created_at: int
    failing_since: int | None = Field(description="first failed attempt at the pending event")
    next_attempt_at: int | None


class WebhookCreated(WebhookView):
    """The new webhook, with its Standard Webhooks signing secret: shown only here."""

    secret: str = Field(description="whsec_...: verify deliveries with a standardwebhooks library")


class WebhookList(Shape):
    items: list[WebhookView]


class WebhookDelivery(Shape):
    """One attempt to deliver one event."""

    event_id: str
    event_type: str
    attempt: int
    attempted_at: float
    duration_ms: float
    status_code: int | None
    error: str | None
    outcome: Literal["delivered", "retrying", "failed", "disabled"]


class WebhookDeliveryPage(Shape):
    """A webhook's delivery attempts, newest first."""

    items: list[WebhookDelivery]
    total: int
    limit: int
    offset: int


class WebhookTestQueued(Shape):
    event_id: str = Field(description="the id of the `webhook.test` event, sent next in order")


class WebhookListQuery(RequiredInstanceQuery):
    pass


class WebhookQuery(BaseModel):
    instance_id: str = query("the webhook's instance (checked against the token)")


class WebhookPageQuery(WebhookQuery, PageQuery):
    pass


# -- geofences (tracker/api/geofences.py) --------------------------------------------


class GeofenceCircle(Shape):
    latitude: float
    longitude: float
    radius_m: float


class GeofencePolygon(Shape):
    """A GeoJSON Polygon: rings of [longitude, latitude], the first the outside, then holes."""

    type: Literal["Polygon"]
    coordinates: list[list[list[float]]]


class GeofenceView(Shape):
    id: str
    instance_id: str
    name: str
    circle: GeofenceCircle | None = omitted()
    polygon: GeofencePolygon | None = omitted()
    device_tokens: list[str] | None = Field(description="null: every device of the instance")
    created_at: int


class GeofenceList(Shape):
    items: list[GeofenceView]


class GeofenceQuery(BaseModel):
    instance_id: str = query("the geofence's instance (checked against the token)")
