"""The dispatcher console: `GET /`, the page a fleet's dispatcher signs in to, and its assets.

Like the share page, it is plain HTML, CSS and JS from static/ with no build
step, served by tracker/api/pages.py's rules: Leaflet from XStatic, no inline
script or style, a strict Content-Security-Policy, the page's settings in a
JSON data block. It is a client of the public API only:
it signs in with `POST {api_prefix}/auth/login`, keeps the JWT in the tab's
sessionStorage (never in a URL, so never in a log or a Referer), and reads
`/devices`, `/tracks`, `/stats`, `/sharing/sessions` and `/ws/realtime` with
it like any other client.

`/` is also where the OsmAnd listener (`ingest.osmand_port`) takes Traccar
Client's reports: a GET to that port is handed to the ingest route, so the
console never hides it.
"""

from __future__ import annotations

from quart import Blueprint, Response, request
from quart_schema import hide

from tracker.api import pages
from tracker.config import Settings
from tracker.context import current
from tracker.fleet import MOVING_SPEED_MPS

blueprint = Blueprint("console_page", __name__)

POLL_INTERVAL_SECONDS = 5  # the device list, while the WebSocket is down
PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}


def console_config(settings: Settings) -> dict[str, object]:
    """What console.js needs to know, as the page's JSON data block."""
    return {
        "api_prefix": settings.server.api_prefix,
        "tile_url": settings.sharing.tile_url,
        "tile_attribution": settings.sharing.tile_attribution,
        "offline_after_seconds": settings.console.offline_after_seconds,
        "moving_speed_mps": MOVING_SPEED_MPS,
        "poll_interval_seconds": POLL_INTERVAL_SECONDS,
        "ping_interval_seconds": settings.realtime.ping_interval_seconds,
        "max_expires_in_hours": settings.sharing.max_expires_in_hours,
    }


@blueprint.get("/")
@hide  # a page for people, not part of the API document
async def console_page() -> Response:
    settings = current().settings
    port = settings.ingest.osmand_port
    if port and request.server is not None and request.server[1] == port:
        from tracker.api.ingest import osmand_port_root

        return await osmand_port_root()
    response = await pages.render("console", console_config(settings), settings)
    response.headers.update(PAGE_HEADERS)
    return response


@blueprint.get("/static/console.css")
@hide
async def console_css() -> Response:
    return await pages.asset("console.css")


@blueprint.get("/static/console.js")
@hide
async def console_js() -> Response:
    return await pages.asset("console.js")
