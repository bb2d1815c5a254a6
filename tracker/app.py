"""The app factory: wires settings, store, auth, hub and routes into one Quart-Trio app.

`create_app(settings)` opens the database (applying migrations) and returns a
fresh app; nothing lives at module level, so every test gets its own. The
long-lived tasks (the writer, the sweepers) start in the app's nursery when
its lifespan starts and stop with it.
"""

from __future__ import annotations

import logging
import re
import secrets

import trio
from quart import Quart, Response, request
from quart_schema import QuartSchema
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest

from tracker import __version__, expiry, jsoncodec, retention, webhooks
from tracker.api.schemas import TrackerOpenAPIProvider
from tracker.auth import GENERATED_SECRET_NAME, TokenVerifier
from tracker.broker import open_broker
from tracker.clientaddr import ClientAddress
from tracker.config import Settings
from tracker.connlimit import PerAddressLimit
from tracker.context import Tracker
from tracker.errors import BadRequest, UnsupportedMediaType, register_error_handlers
from tracker.hotroutes import HotRoutes
from tracker.hub import Hub
from tracker.ingest.mqtt import MqttIngest
from tracker.leases import LeaseHolder, new_holder
from tracker.metrics import Metrics
from tracker.ratelimit import RateLimiter
from tracker.sendguard import GuardedResponses
from tracker.store import Database, open_database, server_keys
from tracker.websocket import Connection, Handler, WebSocketRouter
from tracker.writer import Writer

log = logging.getLogger("tracker")

MAX_BODY_BYTES = 1024 * 1024
COOKIE_KEY_NAME = "cookie_key"  # in server_keys: signs session cookies of phone apps
BODY_TIMEOUT_SECONDS = 10


def open_verifier(settings: Settings, db: Database) -> TokenVerifier:
    """The token verifier, with the configured secret or the one kept in the database."""
    auth = settings.auth
    if auth.jwt_public_key_file or auth.jwt_secret:
        return TokenVerifier(auth, auth.jwt_secret or None)
    secret, created = db.write_sync(
        server_keys.get_or_create, GENERATED_SECRET_NAME, lambda: secrets.token_urlsafe(48)
    )
    if created:
        log.warning(
            "auth.jwt_secret is empty: generated one and kept it in %s, so tokens "
            "minted by `tracker token create` work; set TRACKER_AUTH_JWT_SECRET in production",
            db.name,
        )
    return TokenVerifier(auth, secret)


def create_app(settings: Settings, db: Database | None = None) -> Quart:
    app = QuartTrio("tracker", static_folder=None)
    app.request_class = StrictJSONRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_SECONDS
    prefix = settings.server.api_prefix
    QuartSchema(
        app,
        openapi_path=f"{prefix}/openapi.json",
        redoc_ui_path=None,
        scalar_ui_path=None,
        swagger_ui_path=None,
        info={
            "title": "tracker",
            "version": __version__,
            "description": (
                "Self-hosted GPS tracking: devices post positions, dispatchers follow them, and"
                " a share link shows a customer their driver coming. Every error is JSON,"
                ' `{"error": {"code", "message", "details"?}}`.\n\n'
                "Two WebSockets complete the API; OpenAPI cannot describe them, so"
                " docs/websockets.md does (messages and close codes):\n\n"
                f"- `{prefix}/ws/realtime`: every device of an instance, live, for dispatchers."
                ' The first message is `{"type": "authenticate", "jwt", "instance_id", ...}`.\n'
                f"- `{prefix}/share/{{share_token}}/live`: one share session, live, for its"
                " recipient; the share token is the credential.\n\n"
                "Credentials: `bearer` is a JWT with scope read (GET routes), admin (everything)"
                " or ingest (positions only), for the instances of its `instances` claim"
                " (console users get one from `POST /auth/login`);"
                " `ingestKey` is a device's ingest key, which is also the OsmAnd identifier"
                " (`osmandId`) and the OwnTracks password (`owntracksBasic`, user: the device token)."
            ),
        },
        tags=[
            {"name": "health", "description": "Is the service up (public)"},
            {"name": "auth", "description": "Signing in to get a token (console users)"},
            {"name": "instances", "description": "Instances (fleets) a token may see"},
            {"name": "devices", "description": "Registering devices and their ingest keys"},
            {"name": "metadata", "description": "Devices' display names and profiles"},
            {"name": "positions", "description": "Last position, current trip, trip stats"},
            {"name": "history", "description": "Trips over time; GPX, GeoJSON, CSV export; import"},
            {"name": "ingest", "description": "Positions from a device's own code"},
            {"name": "sharing", "description": "Share sessions, admin side"},
            {"name": "share", "description": "A share link, public side"},
            {"name": "webhooks", "description": "Signed event deliveries to other systems"},
            {"name": "geofences", "description": "Circles and polygons devices enter and leave"},
            {
                "name": "phone apps",
                "description": "Unchanged Traccar Client / OsmAnd, GPSLogger, OwnTracks,"
                " Overland and μlogger (docs/apps.md)",
            },
        ],
        security_schemes={
            "bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"},
            "ingestKey": {"type": "apiKey", "in_": "header", "name": "X-Ingest-Key"},
            "osmandId": {"type": "apiKey", "in_": "query", "name": "id"},
            "owntracksBasic": {"type": "http", "scheme": "basic"},
            "overlandKey": {"type": "http", "scheme": "bearer"},  # the ingest key, not a JWT
            "overlandToken": {"type": "apiKey", "in_": "query", "name": "token"},
            "uloggerSession": {"type": "apiKey", "in_": "cookie", "name": "ulogger"},
        },
        openapi_provider_class=TrackerOpenAPIProvider,
    )
    app.json = jsoncodec.OrjsonProvider(app)  # after QuartSchema, which sets its own
    # QuartSchema also wraps make_response to dump pydantic models through a new
    # TypeAdapter per response (~30 us each); every handler here returns JSON-ready
    # dicts, so the app's own make_response serves.
    del app.make_response
    db = db or open_database(settings.storage)
    hub = Hub()
    broker = open_broker(settings.broker.url, hub)
    metrics = Metrics()
    tracker = Tracker(
        settings=settings,
        db=db,
        verifier=open_verifier(settings, db),
        cookie_key=db.write_sync(
            server_keys.get_or_create, COOKIE_KEY_NAME, lambda: secrets.token_urlsafe(32)
        )[0].encode(),
        hub=hub,
        broker=broker,
        writer=Writer(
            db,
            broker,
            settings.trips.split_gap_seconds,
            settings.sharing.arrival_radius_m,
            metrics,
            settings.console.offline_after_seconds,
        ),
        share_limiter=RateLimiter(settings.sharing.rate_limit_per_minute),
        metrics=metrics,
    )
    app.extensions["tracker"] = tracker
    register_error_handlers(app)

    from tracker.api import (
        auth,
        console_page,
        devices,
        geofences,
        health,
        history,
        ingest,
        instances,
        metadata,
        pages,
        positions,
        share,
        share_page,
        sharing,
        webhooks,
    )

    for blueprint in (
        health.blueprint,
        auth.blueprint,
        instances.blueprint,
        devices.blueprint,
        metadata.blueprint,
        positions.blueprint,
        history.blueprint,
        ingest.api_blueprint,
        sharing.blueprint,
        share.blueprint,
        webhooks.blueprint,
        geofences.blueprint,
    ):
        app.register_blueprint(blueprint, url_prefix=prefix)
    app.register_blueprint(console_page.blueprint)  # `/`: before the OsmAnd listener's root
    app.register_blueprint(ingest.apps_blueprint)
    app.register_blueprint(health.metrics_blueprint)  # GET /metrics: no API prefix
    app.register_blueprint(share_page.blueprint)  # the recipient's page: no API prefix
    app.register_blueprint(pages.blueprint)  # the pages' common script and Leaflet
    hot_routes = HotRoutes(app.asgi_app, tracker, MAX_BODY_BYTES, BODY_TIMEOUT_SECONDS)
    tracker.websockets = WebSocketRouter(hot_routes, websocket_routes(tracker))
    app.asgi_app = ClientAddress(
        GuardedResponses(
            PerAddressLimit(
                tracker.websockets,
                settings.server.max_connections_per_address,
                metrics.refused_by_connection_cap,
            )
        ),
        settings.server.trusted_proxies,
    )

    @app.before_request
    async def _read_body_first() -> None:
        # Reading the (bounded) body before any early answer keeps keep-alive
        # connections clean: an unread body left behind would stall the next request.
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            await request.get_data()
            if request.content_length and not _body_type_allowed():
                raise UnsupportedMediaType(
                    "send the body as application/gpx+xml"
                    if _is_gpx_import(request.path)
                    else "send the body as application/json"
                )

    @app.after_request
    async def _close_after_oversize(response: Response) -> Response:
        if response.status_code == 413:
            response.headers["Connection"] = "close"
        return response

    @app.before_serving
    async def _start_background() -> None:
        tracker.background = await app.nursery.start(run_background, tracker)

    @app.after_serving
    async def _stop_background() -> None:
        if tracker.background is not None:
            tracker.background.cancel()
            await tracker.background_done.wait()
        hot_routes.close()
        db.close()

    return app


def websocket_routes(tracker: Tracker) -> list[tuple[str, Handler]]:
    """The WebSocket endpoints, served on raw ASGI (tracker/websocket.py says why)."""
    from tracker.api.realtime import realtime_stream
    from tracker.api.share import share_stream

    prefix = re.escape(tracker.settings.server.api_prefix)
    meters = tracker.metrics.websockets

    async def realtime(connection: Connection, params: dict[str, str]) -> None:
        with connection.metered(meters["realtime"]):
            await realtime_stream(tracker, connection)

    async def share_live(connection: Connection, params: dict[str, str]) -> None:
        with connection.metered(meters["share"]):
            await share_stream(tracker, connection, params["token"])

    return [
        (f"{prefix}/ws/realtime", realtime),
        (f"{prefix}/share/(?P<token>[^/]+)/live", share_live),
    ]


MQTT_LEASE = "mqtt"


async def run_background(
    tracker: Tracker, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
) -> None:
    """The long-lived tasks (hub pump, broker, resyncs, writer, keepalive, webhook dispatcher,
    pruner, sweepers, MQTT); cancelled together. The dispatcher, the pruner, the sweeper and
    the MQTT client run only while this process holds their lease (tracker/leases.py); one
    process alone takes them all at start."""
    from tracker.api.realtime import run_resyncs

    settings = tracker.settings
    leases = LeaseHolder(tracker.db, new_holder(), take_over_at_start=not settings.broker.url)
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    tracker.hub.run_pump, tracker.settings.realtime.fanout_interval_seconds
                )
                await nursery.start(tracker.broker.run)
                await nursery.start(run_resyncs, tracker)
                await nursery.start(tracker.writer.run)
                await nursery.start(
                    tracker.keepalive.run, tracker.settings.realtime.ping_interval_seconds
                )
                nursery.start_soon(
                    leases.run,
                    webhooks.LEASE,
                    lambda: webhooks.Dispatcher(
                        tracker.db, tracker.hub, settings.webhooks, leases.holder
                    ).run(),
                )
                if settings.storage.retention_days > 0:
                    nursery.start_soon(
                        leases.run,
                        retention.LEASE,
                        lambda: retention.run_pruner(tracker.db, settings.storage.retention_days),
                    )
                nursery.start_soon(
                    leases.run,
                    expiry.LEASE,
                    lambda: expiry.run_sweeper(
                        tracker.db,
                        tracker.broker,
                        settings.trips.split_gap_seconds,
                        settings.console.offline_after_seconds,
                        settings.sharing.expiry_sweep_seconds,
                    ),
                )
                ingest = tracker.settings.ingest
                if ingest.mqtt_broker is not None:
                    mqtt = MqttIngest(
                        ingest.mqtt_broker,
                        ingest.mqtt_topic_prefix,
                        ingest.mqtt_client_id,
                        tracker.db,
                        tracker.writer,
                        tracker.metrics,
                        ingest.mqtt_ca_file,
                    )
                    # One MQTT client per tracker (one client id, a persistent session):
                    # among several processes, whichever holds the lease subscribes.
                    nursery.start_soon(leases.run, MQTT_LEASE, mqtt.run)
                task_status.started(scope)
    finally:
        tracker.background_done.set()


class StrictJSONRequest(TrioRequest):
    """A request whose JSON errors say what is wrong (Quart's say only "Bad Request").

    A GPX import may be larger than other bodies (tracker/api/history.py); the
    body's limit is fixed when the request is made, so it is chosen here.
    """

    def __init__(self, method: str, scheme: str, path: str, *args, **kwargs):
        if _is_gpx_import(path):
            from tracker.api.history import IMPORT_MAX_BODY_BYTES

            kwargs["max_content_length"] = IMPORT_MAX_BODY_BYTES
        super().__init__(method, scheme, path, *args, **kwargs)

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True):
        if not (force or self.is_json):
            return None
        try:
            return jsoncodec.loads(await self.get_data(cache=cache))
        except jsoncodec.JSONDecodeError as error:
            if silent:
                return None
            raise BadRequest(str(error)) from None


def _is_gpx_import(path: str) -> bool:
    return path.endswith("/positions/import")


def _body_type_allowed() -> bool:
    if request.path.startswith("/ingest/") or request.path == "/":
        return True  # phone apps: forms, JSON with or without a content type
    if _is_gpx_import(request.path):
        return request.mimetype in ("application/gpx+xml", "application/xml", "text/xml")
    return request.mimetype in ("application/json", "")
