"""Recipients open a share link on their phone and watch their driver come, until it ends.

Browser tests: Playwright drives headless Chromium (Debian's `chromium`
package; `playwright install` is not used) against the real server, started
with `tracker serve` in a subprocess. Map tiles come from a tiny tile server
on 127.0.0.1, so no test needs the network; one test keeps the default
OpenStreetMap tile URL and blocks it, to show the page without tiles.

Console errors: the page itself logs nothing. Chromium does log one line of
its own, "Failed to load resource: ... status of 404", whenever a fetch gets
an error status, so the tests of links that are dead when opened allow
exactly that line for the public API's documented 404 / 410 / 429, and
nothing else.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Route,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from tests.conftest import ServerProcess, bearer
from tracker.api.pages import json_for_html, tile_source

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PHONE = {"width": 360, "height": 740}
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DESTINATION = {"latitude": 51.52, "longitude": -0.08, "label": "123 Main Street, London"}
FAR = (51.50, -0.12)  # about 3.4 km from the destination
NEARER = (51.51, -0.10)  # about 1.7 km
WAIT_MS = 8000


# -- the world the page lives in: a tile server, tracker, a browser ----------------------


def grid_tile_png(size: int = 256) -> bytes:
    """A light map-like tile (a grid on pale ground), as a valid PNG."""
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter: none
        for x in range(size):
            line = x % 64 == 0 or y % 64 == 0
            row += bytes((214, 222, 230) if line else (236, 240, 236))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def tile_server() -> Iterator[str]:
    tile = grid_tile_png()

    class TileHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(tile)))
            self.send_header("Cache-Control", "max-age=3600")
            self.end_headers()
            self.wfile.write(tile)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), TileHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@dataclass
class Tracker:
    """A running `tracker serve`, an instance in it and an admin token for it."""

    process: ServerProcess
    instance_id: str
    admin_token: str
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.process.url

    def add_device(self, name: str) -> tuple[str, str]:
        response = self.http.post(
            "/api/v1/devices",
            json={"instance_id": self.instance_id, "profile": {"full_name": name}},
            headers=bearer(self.admin_token),
        )
        assert response.status_code == 201, response.text
        return response.json()["device_token"], response.json()["ingest_key"]

    def share(self, device_token: str, **fields) -> dict:
        body = {"device_token": device_token, "instance_id": self.instance_id, **fields}
        response = self.http.post(
            "/api/v1/sharing/sessions", json=body, headers=bearer(self.admin_token)
        )
        assert response.status_code == 201, response.text
        return response.json()

    def drive(
        self, device: tuple[str, str], at: tuple[float, float], heading: float | None = 90.0
    ) -> None:
        device_token, ingest_key = device
        position = {"latitude": at[0], "longitude": at[1], "timestamp": time.time(), "speed": 10.0}
        if heading is not None:
            position["heading"] = heading
        response = self.http.post(
            f"/api/v1/devices/{device_token}/positions",
            json=position,
            headers={"X-Ingest-Key": ingest_key},
        )
        assert response.status_code == 201, response.text

    def end(self, session: dict, how: str) -> None:
        url = f"/api/v1/sharing/sessions/{session['id']}"
        headers = bearer(self.admin_token)
        if how == "complete":
            response = self.http.post(url + "/complete", headers=headers)
        else:
            response = self.http.delete(url, headers=headers)
        assert response.status_code == 200, response.text

    def expire_now(self, session: dict) -> None:
        with sqlite3.connect(self.process.workdir / "tracker.db") as db:
            db.execute(
                "UPDATE share_sessions SET expires_at = ? WHERE id = ?",
                (time.time() - 1, session["id"]),
            )


@contextmanager
def running_tracker(workdir: Path, env: dict[str, str]) -> Iterator[Tracker]:
    """`tracker serve` with these settings, an instance and an admin token; stopped after."""
    process = ServerProcess(workdir, env={"TRACKER_SHARING_PUSH_INTERVAL_SECONDS": "0.5", **env})
    process.env["TRACKER_SERVER_PUBLIC_URL"] = process.url
    process.start()
    try:
        created = json.loads(process.cli("instance", "create", "Share page", "--json"))
        instance_id = created["instance_id"]
        token = process.cli("token", "create", "--instance", instance_id, "--scope", "admin")
        with httpx.Client(base_url=process.url, timeout=10) as http:
            yield Tracker(process, instance_id, token.strip(), http)
    finally:
        if process.process.poll() is None:
            process.process.send_signal(signal.SIGTERM)
            try:
                process.process.wait(timeout=10)
            except Exception:
                process.process.kill()
                process.process.wait()


@pytest.fixture(scope="module")
def tracker(tmp_path_factory, tile_server) -> Iterator[Tracker]:
    # Every test here comes from 127.0.0.1: lift the per-address rate limit,
    # except in the test about it, which runs its own server.
    env = {
        "TRACKER_SHARING_TILE_URL": tile_server + "/{z}/{x}/{y}.png",
        "TRACKER_SHARING_RATE_LIMIT_PER_MINUTE": "1000",
    }
    with running_tracker(tmp_path_factory.mktemp("share-page"), env) as tracker:
        yield tracker


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = "needs Debian's chromium package (apt-get install chromium; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the browser tests, never skip them silently
        pytest.skip(message)
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Phone:
    """One recipient's phone: a page, and what its console said."""

    context: BrowserContext
    page: Page
    console_errors: list[tuple[str, str]] = field(default_factory=list)

    def close(self) -> None:
        """Close the browser context, and with it its keep-alive and WebSocket connections."""
        self.context.close()

    def record(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append((message.text, message.location.get("url", "")))

    def assert_no_console_errors(self, *, allowed_status: int | None = None, api_url: str = ""):
        """No console error, except Chromium's own network line for an expected API status."""
        unexpected = [
            (text, url)
            for text, url in self.console_errors
            if not (
                allowed_status is not None
                and url == api_url
                and f"status of {allowed_status}" in text
            )
        ]
        assert unexpected == []


@pytest.fixture
def phone(browser) -> Iterator[Phone]:
    context = browser.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="en-GB",
    )
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    phone = Phone(context, page)
    page.on("console", phone.record)
    page.on("pageerror", lambda error: phone.console_errors.append((f"pageerror: {error}", "")))
    yield phone
    phone.close()


def api_url(tracker: Tracker, session_or_token: dict | str) -> str:
    token = (
        session_or_token if isinstance(session_or_token, str) else session_or_token["share_token"]
    )
    return f"{tracker.url}/api/v1/share/{token}"


def save_screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def open_live(tracker: Tracker, phone: Phone, session: dict) -> Page:
    page = phone.page
    page.goto(session["links"]["map_url"])
    expect(page.locator("body")).to_have_attribute("data-connection", "live")
    return page


# -- following the driver ------------------------------------------------------------------


@pytest.mark.browser
def test_recipient_follows_the_driver_on_a_phone(tracker, phone):
    device = tracker.add_device("Sam Carter")
    session = tracker.share(
        device[0],
        destination=DESTINATION,
        recipient_name="Jane Doe",
        order_id="ORD-2024-1234",
        notes="Please leave the parcel with the concierge.",
    )
    tracker.drive(device, FAR, heading=45.0)
    page = open_live(tracker, phone, session)

    expect(page.locator("#recipient-name")).to_have_text("Jane Doe")
    expect(page.locator("#order-id")).to_have_text("ORD-2024-1234")
    expect(page.locator("#notes")).to_have_text("Please leave the parcel with the concierge.")
    expect(page.locator("#destination-label")).to_have_text(DESTINATION["label"])
    expect(page.locator(".destination-label")).to_have_text(DESTINATION["label"])  # on the map
    expect(page.locator("#status-line")).to_have_text("Sam Carter is on the way")
    expect(page.locator("#eta")).to_have_text(re.compile(r"^about \d+ min$"))
    expect(page.locator("#arrival")).to_have_text(re.compile(r"^Arriving around \d\d:\d\d$"))
    marker = page.locator("#driver-marker")
    expect(marker).to_be_visible()
    expect(marker).to_have_attribute("data-lat", str(FAR[0]))
    expect(marker).to_have_attribute("data-lng", str(FAR[1]))
    expect(marker).to_have_attribute("data-heading", "45")
    expect(marker).to_have_css("transform", re.compile(r"^matrix\(0\.707"))  # rotate(45deg)
    expect(page.locator("#destination-marker")).to_be_visible()

    # "last updated" keeps counting without any new position.
    expect(page.locator("#last-updated")).to_have_text(
        re.compile(r"^last updated (just now|\d+ s ago)$")
    )
    counted_from = page.locator("#last-updated").text_content()
    expect(page.locator("#last-updated")).not_to_have_text(counted_from, timeout=4000)

    eta_far = page.locator("#eta").text_content()
    tracker.drive(device, NEARER, heading=90.0)
    expect(marker).to_have_attribute("data-lat", str(NEARER[0]))
    expect(marker).to_have_attribute("data-lng", str(NEARER[1]))
    expect(marker).to_have_attribute("data-heading", "90")
    expect(page.locator("#eta")).not_to_have_text(eta_far)
    expect(page.locator("#eta")).to_have_text(re.compile(r"^about \d+ min$"))
    expect(page.locator("#map")).to_have_attribute("data-trail-points", "2")
    expect(page.locator("#recenter")).to_be_hidden()  # the map still follows the driver
    expect(page.locator("#last-updated")).to_have_text(
        re.compile(r"^last updated (just now|\d s ago)$")
    )

    # Everything fits a 360 px wide screen: nothing scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.wait_for_function(
        "[...document.querySelectorAll('.leaflet-tile')].some(t => t.complete && t.naturalWidth)"
    )
    save_screenshot(page, "share-page-phone.png")
    phone.assert_no_console_errors()


@pytest.mark.browser
def test_page_waits_for_the_first_position_then_shows_the_map(tracker, phone):
    device = tracker.add_device("Early Bird")
    session = tracker.share(device[0], order_id="ORD-0")
    page = open_live(tracker, phone, session)
    expect(page.locator("#status-line")).to_have_text("Waiting for the driver's location…")
    expect(page.locator("#order-id")).to_have_text("ORD-0")
    expect(page.locator("#map-area")).to_be_hidden()  # no empty map
    expect(page.locator("#eta-block")).to_be_hidden()  # no destination, no ETA
    tracker.drive(device, FAR)
    expect(page.locator("#driver-marker")).to_have_attribute("data-lat", str(FAR[0]))
    expect(page.locator("#status-line")).to_have_text("Early Bird is on the way")
    phone.assert_no_console_errors()


@pytest.mark.browser
def test_updates_keep_arriving_by_polling_when_websockets_fail(tracker, phone):
    device = tracker.add_device("Polly Poller")
    session = tracker.share(device[0], destination=DESTINATION)
    tracker.drive(device, FAR)
    attempts: list[float] = []
    blocked = True

    def live_stream(ws: WebSocketRoute) -> None:
        attempts.append(time.monotonic())
        if blocked:
            ws.close(code=1011, reason="blocked by the test")
        else:
            ws.connect_to_server()

    page = phone.page
    page.route_web_socket(re.compile(r"/live$"), live_stream)
    page.goto(session["links"]["map_url"])
    expect(page.locator("body")).to_have_attribute("data-connection", "polling")
    expect(page.locator("#connection")).to_have_text(re.compile(r"^Updating every \d+ s$"))
    tracker.drive(device, NEARER)
    expect(page.locator("#driver-marker")).to_have_attribute("data-lat", str(NEARER[0]))

    # Meanwhile the page retries the WebSocket, waiting longer each time...
    deadline = time.monotonic() + 10
    while len(attempts) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert len(attempts) >= 3, "the page kept retrying"
    first_gap, second_gap = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert 0.4 <= first_gap < second_gap, (first_gap, second_gap)

    # ...and goes live once it gets through.
    blocked = False
    expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=10000)
    tracker.drive(device, (51.515, -0.09))
    expect(page.locator("#driver-marker")).to_have_attribute("data-lat", "51.515")
    phone.assert_no_console_errors()


@pytest.mark.browser
def test_markers_and_text_show_when_map_tiles_cannot_load(tmp_path, phone):
    # The default tile URL (OpenStreetMap), with the tile host unreachable.
    with running_tracker(tmp_path, {"TRACKER_SHARING_RATE_LIMIT_PER_MINUTE": "1000"}) as tracker:
        csp = tracker.http.get("/share/anything").headers["Content-Security-Policy"]
        assert "img-src 'self' data: https://tile.openstreetmap.org;" in csp
        device = tracker.add_device("Offline Olly")
        session = tracker.share(device[0], destination=DESTINATION, order_id="ORD-9")
        tracker.drive(device, FAR, heading=None)
        blocked: list[str] = []

        def no_network(route: Route) -> None:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

        page = phone.page
        page.route(re.compile(r"^https://tile\.openstreetmap\.org/"), no_network)
        page.goto(session["links"]["map_url"])
        expect(page.locator("#driver-marker")).to_be_visible()
        expect(page.locator("#driver-marker")).not_to_have_attribute(
            "data-heading", re.compile(".")
        )
        expect(page.locator("#destination-marker")).to_be_visible()
        expect(page.locator(".destination-label")).to_have_text(DESTINATION["label"])
        expect(page.locator("#map-note")).to_be_visible()
        expect(page.locator("#order-id")).to_have_text("ORD-9")
        expect(page.locator("#status-line")).to_have_text("Offline Olly is on the way")
        expect(page.locator("#eta")).to_have_text(re.compile(r"^about \d+ min$"))
        expect(page.locator(".leaflet-control-attribution")).to_contain_text(
            "© OpenStreetMap contributors"
        )
        assert blocked, "the page asked for tiles"
        save_screenshot(page, "share-page-no-tiles.png")
        others = [
            (text, url)
            for text, url in phone.console_errors
            if not url.startswith("https://tile.openstreetmap.org/")
        ]
        assert others == []
        phone.close()  # its open connections would hold up the server's shutdown


# -- how it ends ------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.parametrize(
    ("ending", "title", "message"),
    [
        ("complete", "Delivered", "Your delivery is complete"),
        ("arrive", "Delivered", "Your driver has arrived"),
        ("cancel", "Delivery cancelled", "This delivery was cancelled"),
        ("expire", "Tracking link expired", "This tracking link has expired"),
    ],
)
def test_recipient_watching_live_sees_how_the_session_ends(tracker, phone, ending, title, message):
    device = tracker.add_device(f"Driver {ending}")
    options: dict = {"destination": DESTINATION, "order_id": "ORD-77"}
    if ending == "arrive":
        options["share_config"] = {"auto_complete_on_arrival": True}
    if ending == "expire":
        options["expires_in_hours"] = 0.0015  # 5.4 s: time to open the page first
    session = tracker.share(device[0], **options)
    tracker.drive(device, FAR)
    page = open_live(tracker, phone, session)
    expect(page.locator("#driver-marker")).to_be_visible()

    if ending == "arrive":
        tracker.drive(device, (DESTINATION["latitude"], DESTINATION["longitude"]))
    elif ending in ("complete", "cancel"):
        tracker.end(session, ending)

    expect(page.locator("#state-title")).to_have_text(title, timeout=10000)
    expect(page.locator("#state-message")).to_contain_text(message)
    expect(page.locator("#state-order")).to_have_text("Order ORD-77")
    expect(page.locator("#map-area")).to_be_hidden()  # no map left blank or frozen
    save_screenshot(page, f"share-page-{ending}.png")
    phone.assert_no_console_errors()


@pytest.mark.browser
@pytest.mark.parametrize(
    ("link", "status", "title", "message"),
    [
        ("unknown", 404, "Link not found", "invalid or has expired"),
        ("expired", 404, "Link not found", "invalid or has expired"),
        ("completed", 410, "Delivered", "Your delivery is complete"),
        ("cancelled", 410, "Delivery cancelled", "This delivery was cancelled"),
    ],
)
def test_links_that_no_longer_work_say_why(tracker, phone, link, status, title, message):
    if link == "unknown":
        token = "AAAAAAAAAAAAAAAAAAAAAA"
    else:
        session = tracker.share(tracker.add_device(f"Driver {link}")[0], order_id="ORD-5")
        token = session["share_token"]
        if link == "expired":
            tracker.expire_now(session)
        else:
            tracker.end(session, "complete" if link == "completed" else "cancel")
    page = phone.page
    page.goto(f"{tracker.url}/share/{token}")
    expect(page.locator("#state-title")).to_have_text(title)
    expect(page.locator("#state-message")).to_contain_text(message)
    expect(page.locator("#map-area")).to_be_hidden()
    expect(page).to_have_title(title)
    phone.assert_no_console_errors(allowed_status=status, api_url=api_url(tracker, token))


@pytest.mark.browser
def test_too_many_requests_says_so_and_when_it_retries(tmp_path, tile_server, phone):
    env = {
        "TRACKER_SHARING_RATE_LIMIT_PER_MINUTE": "2",
        "TRACKER_SHARING_TILE_URL": tile_server + "/{z}/{x}/{y}.png",
    }
    with running_tracker(tmp_path, env) as tracker:
        device = tracker.add_device("Busy Bee")
        session = tracker.share(device[0])
        tracker.drive(device, FAR)
        page = open_live(tracker, phone, session)  # the GET and the WebSocket use the budget
        expect(page.locator("#driver-marker")).to_be_visible()
        page.reload()
        expect(page.locator("#state-title")).to_have_text("Too many requests")
        expect(page.locator("#state-message")).to_have_text(
            re.compile(r"This page will try again in \d+ s\.$")
        )
        expect(page.locator("body")).to_have_attribute("data-state", "rate-limited")
        save_screenshot(page, "share-page-rate-limited.png")
        phone.assert_no_console_errors(allowed_status=429, api_url=api_url(tracker, session))
        phone.close()  # its open connections would hold up the server's shutdown


# -- what the server sends ------------------------------------------------------------------


def test_page_is_served_with_the_public_headers_and_a_strict_csp(tracker):
    response = tracker.http.get("/share/Ef0XtIPPXpAAAAAAAAAAAA")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Robots-Tag"] == "noindex"
    tiles = tracker.process.env["TRACKER_SHARING_TILE_URL"].split("/{z}")[0]
    websocket = tracker.url.replace("http://", "ws://")
    assert response.headers["Content-Security-Policy"] == (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data: {tiles}; connect-src 'self' {websocket}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    html = response.text
    assert "Ef0XtIPPXpAAAAAAAAAAAA" not in html  # the page reads the token from its URL
    assert not re.search(r"<[^>]*\s(style|on[a-z]+)=", html)  # no inline style or handler
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    for attributes, body in scripts:
        assert body.strip() == "" or 'type="application/json"' in attributes
    assert all(src.startswith("/static/") for src in re.findall(r'src="([^"]+)"', html))
    config = json.loads(re.search(r'id="share-config">(.*?)</script>', html, re.S).group(1))
    assert config["api_prefix"] == "/api/v1"
    assert config["tile_attribution"] == "© OpenStreetMap contributors"


def test_leaflet_and_page_assets_are_served_safely(tracker):
    leaflet = tracker.http.get("/static/leaflet/leaflet.js?v=1.9.3")
    assert leaflet.status_code == 200
    assert "immutable" in leaflet.headers["Cache-Control"]
    assert tracker.http.get("/static/leaflet/leaflet.css").status_code == 200
    assert tracker.http.get("/static/leaflet/images/layers.png").status_code == 200
    for asset in ("/static/share.js", "/static/share.css"):
        served = tracker.http.get(asset)
        assert served.status_code == 200
        assert served.headers["Cache-Control"] == "no-cache" and served.headers["ETag"]
    for traversal in (
        "/static/leaflet/..%2f..%2f..%2fxstatic%2f__init__.py",
        "/static/leaflet/%2e%2e/%2e%2e/__init__.py",
        "/static/leaflet//etc/passwd",
        "/static/leaflet/no-such-file.js",
    ):
        refused = tracker.http.get(traversal, follow_redirects=True)
        assert refused.status_code == 404, traversal
        assert refused.json()["error"]["code"] == "not_found"


def test_config_block_cannot_be_closed_by_a_value():
    text = json_for_html({"tile_attribution": "</script><script>alert(1)</script> & <!--"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text)["tile_attribution"].startswith("</script>")


@pytest.mark.parametrize(
    ("tile_url", "source"),
    [
        ("https://tile.openstreetmap.org/{z}/{x}/{y}.png", "https://tile.openstreetmap.org"),
        ("https://{s}.tile.example.com/{z}/{x}/{y}.png", "https://*.tile.example.com"),
        ("http://127.0.0.1:8123/{z}/{x}/{y}.png", "http://127.0.0.1:8123"),
        ("https://tiles.{s}.example.com/{z}/{x}/{y}.png", "https:"),
        ("/tiles/{z}/{x}/{y}.png", None),
    ],
)
def test_csp_allows_exactly_the_tile_host(tile_url, source):
    assert tile_source(tile_url) == source
