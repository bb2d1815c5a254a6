"""The share page: `GET /share/{token}`, the page a recipient opens, and its assets.

The page (static/share.html, share.css, share.js, with the pages' common
static/pages.js) is served by tracker/api/pages.py's rules for every bundled
page: settings in a JSON data block, versioned assets, a strict CSP. It is
served for any token: the page reads the token from its own URL and asks the
public API (`{api_prefix}/share/{token}`), whose 404 / 410 / 429 it turns into
the unknown-link, ended and rate-limited states. So this module never looks
at the token, and never logs it (Hypercorn's access log is off for the same
reason, tracker/server.py). The page carries the public API's headers (no
referrer, no caching, no indexing).
"""

from __future__ import annotations

from quart import Blueprint, Response
from quart_schema import hide

from tracker.api import pages
from tracker.api.share import PUBLIC_HEADERS
from tracker.config import Settings
from tracker.context import current

blueprint = Blueprint("share_page", __name__)

# Polling is the fallback when WebSockets fail: keep it to at most half of a
# visitor's rate-limit budget, so a polling page is never refused for polling.
POLL_SHARE_OF_RATE_LIMIT = 0.5


def page_config(settings: Settings) -> dict[str, object]:
    """What share.js needs to know, as the page's JSON data block."""
    sharing = settings.sharing
    budget_interval = 60.0 / sharing.rate_limit_per_minute / POLL_SHARE_OF_RATE_LIMIT
    return {
        "api_prefix": settings.server.api_prefix,
        "tile_url": sharing.tile_url,
        "tile_attribution": sharing.tile_attribution,
        "poll_interval_seconds": max(sharing.push_interval_seconds, budget_interval, 1.0),
        "ping_interval_seconds": settings.realtime.ping_interval_seconds,
    }


@blueprint.get("/share/<share_token>")
@hide  # a page for people, not part of the API document
async def share_page(share_token: str) -> Response:
    settings = current().settings
    response = await pages.render("share", page_config(settings), settings)
    response.headers.update(PUBLIC_HEADERS)
    return response


@blueprint.get("/static/share.css")
@hide
async def share_css() -> Response:
    return await pages.asset("share.css")


@blueprint.get("/static/share.js")
@hide
async def share_js() -> Response:
    return await pages.asset("share.js")
