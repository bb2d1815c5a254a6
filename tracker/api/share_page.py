"""The share page: `GET /share/{token}`, the page a recipient opens, and its static assets.

The page (static/share.html, share.css, share.js) is plain HTML and JS with no
build step. It is served for any token: the page reads the token from its own
URL and asks the public API (`{api_prefix}/share/{token}`), whose 404 / 410 /
429 it turns into the unknown-link, ended and rate-limited states. So this
module never looks at the token, and never logs it (Hypercorn's access log is
off for the same reason, tracker/server.py).

The page's settings (API prefix, tile URL and attribution, polling and ping
intervals) go into the HTML as a `<script type="application/json">` data
block, escaped so that no value can close the element. The page carries the
public API's headers (no referrer, no caching, no indexing) and a strict
Content-Security-Policy: scripts and styles from this server only (no inline
code at all), images from this server, `data:` and the tile host, connections
to this server (HTTP and its ws/wss form), no framing.

The files are found through `importlib.resources` as the package
`tracker.static`: static/ at the repository's top level, mapped into the
package by pyproject.toml, so a checkout and an installed wheel read the same
files.

Leaflet comes from the XStatic-Leaflet package and is served here under
`/static/leaflet/`: the page loads no third-party script. Its files are
versioned by a `?v=` query, so they may be cached for long; share.js and
share.css are revalidated (ETag) on every load.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import trio
import xstatic.pkg.leaflet as xstatic_leaflet
from quart import Blueprint, Response, send_from_directory
from quart_schema import hide

from tracker import jsoncodec
from tracker.api.share import PUBLIC_HEADERS
from tracker.config import Settings
from tracker.context import current

blueprint = Blueprint("share_page", __name__)

# pip unpacks a wheel, so the package is a real directory, which send_from_directory needs.
STATIC_DIR = Path(files("tracker.static"))
LEAFLET_DIR = Path(xstatic_leaflet.BASE_DIR)
LEAFLET_VERSION = xstatic_leaflet.VERSION
CONFIG_PLACEHOLDER = "{{share_config}}"
ASSET_VERSION_PLACEHOLDER = "{{asset_version}}"
LEAFLET_VERSION_PLACEHOLDER = "{{leaflet_version}}"
LEAFLET_CACHE_SECONDS = 7 * 24 * 3600
# Polling is the fallback when WebSockets fail: keep it to at most half of a
# visitor's rate-limit budget, so a polling page is never refused for polling.
POLL_SHARE_OF_RATE_LIMIT = 0.5


def tile_source(tile_url: str) -> str | None:
    """The CSP source that allows a tile URL template, or None when 'self' covers it.

    A `{s}` (or any template) in the leftmost label of the host becomes `*`,
    the only wildcard CSP allows. A template elsewhere in the host cannot be
    expressed, so the scheme alone is allowed then (documented in decisions.md).
    """
    parts = urlsplit(tile_url)
    if not parts.scheme or not parts.netloc:
        return None  # a relative URL: tiles from this server (or its reverse proxy)
    labels = parts.netloc.split(".")
    if "{" in labels[0]:
        labels[0] = "*"
    if any("{" in label for label in labels):
        return f"{parts.scheme}:"
    return f"{parts.scheme}://{'.'.join(labels)}"


def websocket_origin(public_url: str) -> str:
    """The ws/wss origin of the public URL (older browsers do not let 'self' cover ws)."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}"


def content_security_policy(settings: Settings) -> str:
    images = ["'self'", "data:"]
    tiles = tile_source(settings.sharing.tile_url)
    if tiles:
        images.append(tiles)
    directives = {
        "default-src": ["'none'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": images,
        "connect-src": ["'self'", websocket_origin(settings.server.public_url)],
        "base-uri": ["'none'"],
        "form-action": ["'none'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


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


def json_for_html(value: object) -> str:
    """JSON that is safe inside a <script> data block: no '<', '>' or '&' can end it."""
    text = jsoncodec.dumps(value).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset_version(*texts: str) -> str:
    return hashlib.sha256("".join(texts).encode()).hexdigest()[:12]


@blueprint.get("/share/<share_token>")
@hide  # a page for people, not part of the API document
async def share_page(share_token: str) -> Response:
    settings = current().settings
    template = await trio.Path(STATIC_DIR / "share.html").read_text(encoding="utf-8")
    script = await trio.Path(STATIC_DIR / "share.js").read_text(encoding="utf-8")
    styles = await trio.Path(STATIC_DIR / "share.css").read_text(encoding="utf-8")
    html = (
        template.replace(CONFIG_PLACEHOLDER, json_for_html(page_config(settings)))
        .replace(ASSET_VERSION_PLACEHOLDER, _asset_version(script, styles))
        .replace(LEAFLET_VERSION_PLACEHOLDER, LEAFLET_VERSION)
    )
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers.update(PUBLIC_HEADERS)
    response.headers["Content-Security-Policy"] = content_security_policy(settings)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    return response


async def _asset(directory: Path, file_name: str, cache_control: str) -> Response:
    # send_from_directory joins safely: '..', absolute paths and missing files are a 404.
    response = await send_from_directory(directory, file_name)
    response.headers["Cache-Control"] = cache_control
    response.headers.pop("Expires", None)  # Cache-Control says it all
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("/static/share.css")
@hide
async def share_css() -> Response:
    return await _asset(STATIC_DIR, "share.css", "no-cache")


@blueprint.get("/static/share.js")
@hide
async def share_js() -> Response:
    return await _asset(STATIC_DIR, "share.js", "no-cache")


@blueprint.get("/static/leaflet/<path:filename>")
@hide
async def leaflet_asset(filename: str) -> Response:
    return await _asset(
        LEAFLET_DIR, filename, f"public, max-age={LEAFLET_CACHE_SECONDS}, immutable"
    )
