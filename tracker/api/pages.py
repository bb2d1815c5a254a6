"""Serving the bundled pages (the console, the share page) and their static files.

The pages are plain HTML, CSS and JS from static/ with no build step. This
module owns what they share: where the files are, the HTML template's
placeholders, the page's settings as a JSON data block that no value can
close, the asset version that busts caches when a file changes, the strict
Content-Security-Policy (scripts and styles from this server only, no inline
code at all; images from this server, `data:` and the tile host; connections
to this server in its HTTP and ws/wss forms; no framing), and the routes of
the files both pages load: static/pages.js (their common helpers) and Leaflet.

The files are found through `importlib.resources` as the package
`tracker.static`: static/ at the repository's top level, mapped into the
package by pyproject.toml, so a checkout and an installed wheel read the same
files.

Leaflet comes from the XStatic-Leaflet package and is served under
`/static/leaflet/`: no page loads a third-party script. Its files are
versioned by a `?v=` query, so they may be cached for long; the pages' own
scripts and styles are revalidated (ETag) on every load.
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
from tracker.config import Settings

blueprint = Blueprint("pages", __name__)

# pip unpacks a wheel, so the package is a real directory, which send_from_directory needs.
STATIC_DIR = Path(files("tracker.static"))
LEAFLET_DIR = Path(xstatic_leaflet.BASE_DIR)
LEAFLET_VERSION = xstatic_leaflet.VERSION
LEAFLET_CACHE_SECONDS = 7 * 24 * 3600
COMMON_SCRIPT = "pages.js"  # loaded by every page before its own script


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


def json_for_html(value: object) -> str:
    """JSON that is safe inside a <script> data block: no '<', '>' or '&' can end it."""
    text = jsoncodec.dumps(value).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


async def render(name: str, config: dict[str, object], settings: Settings) -> Response:
    """static/{name}.html with its settings and asset versions filled in, and the CSP.

    The template's placeholders: `{{config}}` (the JSON data block),
    `{{asset_version}}` (changes with {name}.js, {name}.css or pages.js) and
    `{{leaflet_version}}`.
    """
    texts = [
        await trio.Path(STATIC_DIR / file_name).read_text(encoding="utf-8")
        for file_name in (f"{name}.html", f"{name}.js", f"{name}.css", COMMON_SCRIPT)
    ]
    version = hashlib.sha256("".join(texts[1:]).encode()).hexdigest()[:12]
    html = (
        texts[0]
        .replace("{{config}}", json_for_html(config))
        .replace("{{asset_version}}", version)
        .replace("{{leaflet_version}}", LEAFLET_VERSION)
    )
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = content_security_policy(settings)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    return response


async def asset(file_name: str, *, directory: Path = STATIC_DIR) -> Response:
    """One static file: revalidated on every load, or cached for long when versioned (Leaflet)."""
    # send_from_directory joins safely: '..', absolute paths and missing files are a 404.
    response = await send_from_directory(directory, file_name)
    if directory == LEAFLET_DIR:
        response.headers["Cache-Control"] = f"public, max-age={LEAFLET_CACHE_SECONDS}, immutable"
    else:
        response.headers["Cache-Control"] = "no-cache"
    response.headers.pop("Expires", None)  # Cache-Control says it all
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("/static/pages.js")
@hide  # for the pages, not part of the API document
async def common_script() -> Response:
    return await asset(COMMON_SCRIPT)


@blueprint.get("/static/leaflet/<path:filename>")
@hide
async def leaflet_asset(filename: str) -> Response:
    return await asset(filename, directory=LEAFLET_DIR)
