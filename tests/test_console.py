"""A dispatcher signs in to the console, watches the fleet move, and shares a vehicle.

Browser tests, as in tests/test_share_page.py (whose tile server and
`running_tracker` they reuse): Playwright drives Debian's Chromium against
`tracker serve` in a subprocess; users are made with the `tracker user`
command. Without Chromium the tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import free_port
from tests.test_share_page import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    FAR,
    NEARER,
    WAIT_MS,
    Tracker,
    running_tracker,
    tile_server,  # noqa: F401  (a fixture)
)

DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
PASSWORD = "correct horse battery"


def add_user(tracker: Tracker, username: str, role: str, instance: str | None = None) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "user",
            "add",
            "--instance",
            instance or tracker.instance_id,
            "--username",
            username,
            "--role",
            role,
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
        cwd=tracker.process.workdir,
        env=tracker.process.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def tracker(tmp_path_factory, tile_server) -> Iterator[Tracker]:  # noqa: F811
    env = {
        "TRACKER_SHARING_TILE_URL": tile_server + "/{z}/{x}/{y}.png",
        "TRACKER_SHARING_RATE_LIMIT_PER_MINUTE": "1000",
    }
    with running_tracker(tmp_path_factory.mktemp("console"), env) as tracker:
        add_user(tracker, "dispatch", "admin")
        add_user(tracker, "watcher", "viewer")
        tracker.vans = [
            tracker.add_device(name) for name in ("Ada Lovelace", "Ben Okri", "Cy Twombly")
        ]
        for index, van in enumerate(tracker.vans):
            tracker.drive(van, (FAR[0] + index * 0.01, FAR[1] + index * 0.01), heading=90.0)
        tracker.parked = tracker.add_device("Dee Parked")  # last heard of an hour ago
        response = tracker.http.post(
            f"/api/v1/devices/{tracker.parked[0]}/positions",
            json={"latitude": FAR[0] - 0.01, "longitude": FAR[1], "timestamp": time.time() - 3600},
            headers={"X-Ingest-Key": tracker.parked[1]},
        )
        assert response.status_code == 201, response.text
        yield tracker


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium package (apt-get install chromium)")
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Screen:
    """One browser window, and what its console said."""

    def __init__(self, browser: Browser, viewport: dict, mobile: bool = False):
        self.context = browser.new_context(
            viewport=viewport, is_mobile=mobile, has_touch=mobile, locale="en-GB"
        )
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda message: message.type == "error" and self.errors.append(message.text),
        )
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))

    def sign_in(self, tracker: Tracker, username: str, password: str = PASSWORD) -> Page:
        page = self.page
        page.goto(tracker.url + "/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        return page

    def assert_no_console_errors(self, allowed: str | None = None) -> None:
        assert [e for e in self.errors if not (allowed and allowed in e)] == []


@pytest.fixture
def desktop(browser) -> Iterator[Screen]:
    screen = Screen(browser, DESKTOP)
    yield screen
    screen.context.close()


@pytest.fixture
def phone(browser) -> Iterator[Screen]:
    screen = Screen(browser, PHONE, mobile=True)
    yield screen
    screen.context.close()


def wait_until(page: Page, script: str, arg: object = None, timeout_ms: int = WAIT_MS) -> None:
    """Poll a script from outside the page: Playwright's wait_for_function would
    evaluate it inside, where the page's CSP (no eval) refuses it."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(script, arg):
        assert time.monotonic() < deadline, f"never true: {script}"
        page.wait_for_timeout(100)


TILES_LOADED = (
    "() => [...document.querySelectorAll('.leaflet-tile')].some(t => t.complete && t.naturalWidth)"
)


def save_screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def marker(page: Page, device_token: str):
    return page.locator(f'.vehicle[data-token="{device_token}"]')


def list_item(page: Page, device_token: str):
    return page.locator(f'.device[data-token="{device_token}"]')


@pytest.mark.browser
def test_dispatcher_signs_in_and_watches_every_vehicle_move(tracker, desktop):
    page = desktop.sign_in(tracker, "dispatch")
    expect(page.locator("body")).to_have_attribute("data-connection", "live")
    for token, _ in tracker.vans:
        expect(marker(page, token)).to_be_visible()
        expect(list_item(page, token)).to_contain_text("Moving")
    for name in ("Ada Lovelace", "Ben Okri", "Cy Twombly"):
        expect(page.locator(".device-name", has_text=name)).to_be_visible()
        expect(page.locator(".vehicle-label", has_text=name)).to_be_visible()
    expect(page.locator("#device-count")).to_have_text("4 vehicles")
    expect(page.locator("#instance-name")).to_have_text("Share page")
    parked = tracker.parked[0]
    expect(list_item(page, parked)).to_contain_text("Offline")
    expect(list_item(page, parked)).to_contain_text("last seen 1 h 0 min ago")
    expect(marker(page, parked)).to_have_class(re.compile(r"\boffline\b"))  # greyed

    van = tracker.vans[0]
    seen = list_item(page, van[0]).locator(".device-seen")
    expect(seen).to_have_text(re.compile(r"^last seen (just now|\d+ s ago)$"))
    tracker.drive(van, NEARER, heading=180.0)
    expect(marker(page, van[0])).to_have_attribute("data-lat", str(NEARER[0]))
    expect(marker(page, van[0])).to_have_attribute("data-heading", "180")
    expect(seen).to_have_text(re.compile(r"^last seen (just now|\d s ago)$"))
    before = seen.text_content()
    expect(seen).not_to_have_text(before, timeout=6000)  # it keeps counting

    # Selecting a vehicle shows its trip: the trail and the stats.
    list_item(page, van[0]).locator("button").click()
    expect(page.locator("#detail-name")).to_have_text("Ada Lovelace")
    expect(page.locator("#map")).to_have_attribute("data-trail-points", "2")
    expect(page.locator("#stat-distance")).to_have_text(re.compile(r"km$"))
    expect(page.locator("#stat-max")).to_have_text("36 km/h")

    # Following it keeps it on screen, wherever it goes.
    page.get_by_role("button", name="Follow").click()
    expect(page.get_by_role("button", name="Following")).to_have_attribute("aria-pressed", "true")
    tracker.drive(van, (NEARER[0] + 0.2, NEARER[1] + 0.3), heading=45.0)
    expect(marker(page, van[0])).to_have_attribute("data-lat", str(NEARER[0] + 0.2))
    wait_until(
        page,
        """token => {
            const map = document.getElementById('map').getBoundingClientRect();
            const box = document.querySelector(`.vehicle[data-token="${token}"]`)
                .getBoundingClientRect();
            return box.left >= map.left && box.right <= map.right
                && box.top >= map.top && box.bottom <= map.bottom;
        }""",
        van[0],
    )
    page.get_by_role("button", name="Following").click()

    page.get_by_label("Filter vehicles").fill("okri")
    expect(list_item(page, tracker.vans[1][0])).to_be_visible()
    expect(list_item(page, tracker.vans[0][0])).to_be_hidden()
    page.get_by_label("Filter vehicles").fill("")
    wait_until(page, TILES_LOADED)
    save_screenshot(page, "console-desktop.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    desktop.assert_no_console_errors()


@pytest.mark.browser
def test_dispatcher_shares_a_vehicle_then_completes_and_cancels(tracker, desktop, browser):
    page = desktop.sign_in(tracker, "dispatch")
    van = tracker.vans[1]
    list_item(page, van[0]).locator("button").click()
    page.get_by_role("button", name="Share").click()

    # Bad input gets a message, not a blank screen.
    page.get_by_label("Expires in (hours)").fill("0")
    page.get_by_role("button", name="Create link").click()
    expect(page.locator("#share-error")).to_contain_text("Expires in (hours)")
    page.get_by_label("Expires in (hours)").fill("2")
    page.get_by_label("Destination", exact=True).fill("north of here")
    page.get_by_role("button", name="Create link").click()
    expect(page.locator("#share-error")).to_contain_text("Destination")
    page.get_by_label("Expires in (hours)").fill("100000")
    page.get_by_label("Destination", exact=True).fill("")
    page.get_by_role("button", name="Create link").click()
    expect(page.locator("#share-error")).to_contain_text("at most")

    page.get_by_label("Expires in (hours)").fill("2")
    page.get_by_label("Recipient").fill("Jane Doe")
    page.get_by_label("Order").fill("ORD-42")
    page.get_by_label("Notes").fill("Ring twice")
    page.locator("#map").click(position={"x": 300, "y": 300})  # the destination, from the map
    expect(page.get_by_label("Destination", exact=True)).to_have_value(
        re.compile(r"^-?\d+\.\d+, -?\d+\.\d+$")
    )
    page.get_by_label("Destination label").fill("Back door")
    page.get_by_role("button", name="Create link").click()
    link = page.locator("#share-link")
    expect(link).to_have_text(re.compile(re.escape(tracker.url) + r"/share/\w{22}$"))
    wait_until(page, "() => document.getElementById('share-qr').naturalWidth > 0")
    shares = page.locator(".share")
    expect(shares.filter(has_text="Jane Doe")).to_contain_text("Ben Okri")
    expect(shares.filter(has_text="Jane Doe")).to_contain_text(re.compile(r"ETA \d+"))

    first_link = link.text_content()
    recipient = browser.new_page()
    recipient.goto(first_link)
    expect(recipient.locator("#recipient-name")).to_have_text("Jane Doe")
    expect(recipient.locator("#order-id")).to_have_text("ORD-42")
    shares.filter(has_text="Jane Doe").get_by_role("button", name="Complete").click()
    expect(recipient.locator("#state-title")).to_have_text("Delivered", timeout=10000)
    expect(shares.filter(has_text="Jane Doe")).to_have_count(0)

    # A second link, cancelled from the list.
    page.get_by_role("button", name="Share").click()
    page.get_by_label("Recipient").fill("John Roe")
    page.get_by_role("button", name="Create link").click()
    expect(link).not_to_have_text(first_link)  # the new link, not the completed one still shown
    expect(link).to_have_text(re.compile(r"/share/\w{22}$"))
    recipient.goto(link.text_content())
    expect(recipient.locator("#recipient-name")).to_have_text("John Roe")
    shares.filter(has_text="John Roe").get_by_role("button", name="Cancel").click()
    expect(recipient.locator("#state-title")).to_have_text("Delivery cancelled", timeout=10000)
    save_screenshot(page, "console-desktop-share.png")
    recipient.context.close()
    desktop.assert_no_console_errors()


@pytest.mark.browser
def test_viewer_sees_the_fleet_but_cannot_share(tracker, desktop):
    session = tracker.share(tracker.vans[2][0], recipient_name="Vee Viewer")
    page = desktop.sign_in(tracker, "watcher")
    expect(page.locator("#who")).to_have_text("watcher (viewer)")
    for token, _ in tracker.vans:
        expect(marker(page, token)).to_be_visible()
    expect(page.locator(".share", has_text="Vee Viewer")).to_be_visible()
    expect(page.locator(".share", has_text="Vee Viewer").get_by_role("button")).to_have_count(0)
    list_item(page, tracker.vans[2][0]).locator("button").click()
    expect(page.locator("#detail-name")).to_have_text("Cy Twombly")
    expect(page.get_by_role("button", name="Share")).to_have_count(0)
    expect(page.get_by_role("button", name="Create link")).to_have_count(0)
    # And the API refuses anyway, with the viewer's own token.
    token = page.evaluate("JSON.parse(sessionStorage.getItem('tracker.console')).token")
    refused = tracker.http.post(
        f"/api/v1/sharing/sessions/{session['id']}/complete",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert refused.status_code == 403
    desktop.assert_no_console_errors()


@pytest.mark.browser
def test_wrong_password_is_refused_then_throttled(tracker, desktop):
    add_user(tracker, "forgetful", "admin")
    page = desktop.page
    page.goto(tracker.url + "/")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_have_text("Enter your username and password.")
    page = desktop.sign_in(tracker, "forgetful", "not the password")
    expect(page.locator("#sign-in-error")).to_have_text("Wrong username or password.")
    for _ in range(4):
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_timeout(300)
    page.get_by_label("Password").fill(PASSWORD)  # right, but too late
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_have_text(
        re.compile(r"^Too many failed attempts\. Try again in \d+ (s|min)\.$")
    )
    expect(page.locator("#console-view")).to_be_hidden()
    save_screenshot(page, "console-throttled.png")
    # Chromium logs each refused fetch (401, 429) itself; the page logs nothing.
    assert all("401" in e or "429" in e for e in desktop.errors), desktop.errors


@pytest.mark.browser
def test_positions_keep_arriving_by_polling_when_the_websocket_fails(tracker, desktop):
    attempts: list[float] = []
    blocked = True

    def realtime(ws) -> None:
        attempts.append(time.monotonic())
        if blocked:
            ws.close(code=1011, reason="blocked by the test")
        else:
            ws.connect_to_server()

    page = desktop.page
    page.route_web_socket(re.compile(r"/ws/realtime$"), realtime)
    desktop.sign_in(tracker, "dispatch")
    expect(page.locator("body")).to_have_attribute("data-connection", "polling")
    expect(page.locator("#connection")).to_have_text("Updating every 5 s")
    van = tracker.vans[2]
    tracker.drive(van, (51.53, -0.05), heading=270.0)
    expect(marker(page, van[0])).to_have_attribute("data-lat", "51.53", timeout=12000)
    expect(marker(page, van[0])).to_have_attribute("data-heading", "270")
    assert len(attempts) >= 2, "the page retried the WebSocket"
    blocked = False
    expect(page.locator("body")).to_have_attribute("data-connection", "live", timeout=15000)
    tracker.drive(van, (51.535, -0.05), heading=0.0)
    expect(marker(page, van[0])).to_have_attribute("data-lat", "51.535")
    desktop.assert_no_console_errors()


@pytest.mark.browser
def test_super_admin_chooses_the_fleet(tracker, desktop):
    add_user(tracker, "root", "admin", instance="*")
    page = desktop.sign_in(tracker, "root")
    page.get_by_label("Instance id").fill("not-an-instance")
    page.get_by_role("button", name="Open").click()
    expect(page.locator("#instance-error")).to_have_text("There is no instance with this id.")
    page.get_by_label("Instance id").fill(tracker.instance_id)
    page.get_by_role("button", name="Open").click()
    expect(page.locator("#device-count")).to_have_text("4 vehicles")
    desktop.assert_no_console_errors(allowed="404")


@pytest.mark.browser
def test_dispatcher_on_a_phone(tracker, phone):
    page = phone.sign_in(tracker, "dispatch")
    expect(page.locator("body")).to_have_attribute("data-connection", "live")
    for token, _ in tracker.vans:
        expect(marker(page, token)).to_be_visible()
    wait_until(page, TILES_LOADED)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    save_screenshot(page, "console-phone.png")
    list_item(page, tracker.vans[0][0]).locator("button").click()
    page.get_by_role("button", name="Share").click()
    expect(page.get_by_label("Recipient")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    save_screenshot(page, "console-phone-share.png")
    phone.assert_no_console_errors()


@pytest.mark.browser
def test_console_shows_vehicles_when_tiles_cannot_load(tmp_path, desktop):
    with running_tracker(tmp_path, {}) as tracker:
        add_user(tracker, "dispatch", "admin")
        van = tracker.add_device("Tile Less")
        tracker.drive(van, FAR)
        desktop.page.route(re.compile(r"^https://tile\.openstreetmap\.org/"), lambda r: r.abort())
        page = desktop.sign_in(tracker, "dispatch")
        expect(marker(page, van[0])).to_be_visible()
        expect(page.locator("#map-note")).to_be_visible()
        expect(list_item(page, van[0])).to_contain_text("Tile Less")
        desktop.context.close()  # its open connections would hold up the server's shutdown


@pytest.mark.browser
def test_newcomer_runs_the_demo_and_sees_the_fleet_moving(tmp_path, tile_server, desktop):  # noqa: F811
    port = free_port()
    env = {
        **os.environ,
        "TRACKER_SERVER_PORT": str(port),
        "TRACKER_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TRACKER_STORAGE_PATH": str(tmp_path / "demo.db"),
        "TRACKER_SHARING_TILE_URL": tile_server + "/{z}/{x}/{y}.png",
    }
    demo = subprocess.Popen(
        [sys.executable, "-m", "tracker", "demo", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        info = json.loads(demo.stdout.readline())
        page = desktop.page
        page.goto(info["console_url"])
        page.get_by_label("Username").fill(info["username"])
        page.get_by_label("Password").fill(info["password"])
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#instance-name")).to_have_text("Demo fleet")
        for token, name in zip(
            info["devices"], ("Alice Martin", "Bilal Khan", "Chen Wei"), strict=True
        ):
            expect(marker(page, token)).to_be_visible()
            expect(list_item(page, token)).to_contain_text(name)
        first = marker(page, "demo-van-1")
        expect(first).to_have_attribute("data-lat", re.compile("."))
        where = first.get_attribute("data-lat"), first.get_attribute("data-lng")
        wait_until(
            page,
            "([lat, lng]) => { const m = document.querySelector('.vehicle[data-token=\"demo-van-1\"]');"
            " return m.dataset.lat !== lat || m.dataset.lng !== lng; }",
            list(where),
            20000,
        )
        expect(page.locator(".share", has_text="Demo Customer")).to_be_visible()
        wait_until(page, TILES_LOADED)
        save_screenshot(page, "console-demo.png")
        desktop.assert_no_console_errors()
        desktop.context.close()
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=15) == 0


def test_server_log_names_failed_sign_ins_but_no_password_or_token(tracker):
    add_user(tracker, "logged", "admin")
    assert (
        tracker.http.post(
            "/api/v1/auth/login", json={"username": "logged", "password": "Secret-Guess-99"}
        ).status_code
        == 401
    )
    token = tracker.http.post(
        "/api/v1/auth/login", json={"username": "logged", "password": PASSWORD}
    ).json()["token"]
    log = (tracker.process.workdir / "server.log").read_text()
    assert "failed sign-in for username 'logged' from 127.0.0.1" in log
    assert "Secret-Guess-99" not in log and PASSWORD not in log
    assert token not in log and "eyJ" not in log


def test_console_page_is_served_with_a_strict_csp(tracker):
    response = tracker.http.get("/")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "default-src 'none'" in csp
    assert response.headers["Cache-Control"] == "no-store"
    html = response.text
    assert not re.search(r"<[^>]*\s(style|on[a-z]+)=", html)
    for attributes, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
        assert body.strip() == "" or 'type="application/json"' in attributes
    assert all(src.startswith("/static/") for src in re.findall(r'src="([^"]+)"', html))
    for asset in ("/static/console.js", "/static/console.css"):
        assert tracker.http.get(asset).status_code == 200


@pytest.mark.browser
def test_dispatcher_sees_geofences_and_events_as_they_happen(tracker, desktop):
    depot = (51.40, -0.30)
    van = tracker.vans[2]  # Cy Twombly
    created = tracker.http.post(
        f"/api/v1/geofences?instance_id={tracker.instance_id}",
        json={
            "name": "Depot",
            "circle": {"latitude": depot[0], "longitude": depot[1], "radius_m": 300.0},
            "device_tokens": [van[0]],
        },
        headers={"Authorization": f"Bearer {tracker.admin_token}"},
    )
    assert created.status_code == 201, created.text
    page = desktop.sign_in(tracker, "dispatch")
    expect(page.locator("body")).to_have_attribute("data-connection", "live")
    expect(page.locator(".fence-label", has_text="Depot")).to_be_visible()
    expect(page.locator("#events-empty")).to_be_visible()

    tracker.drive(van, depot)
    events = page.locator("#event-list li")
    expect(events.filter(has_text="Cy Twombly entered Depot")).to_have_count(1)
    tracker.drive(van, (depot[0] + 0.05, depot[1]))
    expect(events.first).to_contain_text("Cy Twombly left Depot")  # newest first
    expect(page.locator("#events-empty")).to_be_hidden()
    save_screenshot(page, "console-events.png")
    desktop.assert_no_console_errors()
