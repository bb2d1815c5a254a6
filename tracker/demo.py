"""`tracker demo`: the server with a demo fleet driving through London.

Three vans drive believable routes (cruising speed with some variation,
stops at junctions, heading from the road's bearing) and report every
`REPORT_EVERY_SECONDS` through the real ingest path, over HTTP with their
ingest keys, exactly as a phone would. The demo prints an admin token, a
`/ws/realtime` example, a share link for a van heading to its destination,
and the console's URL with a demo user (`demo`, admin of the demo instance)
and its password, then runs until Ctrl-C.

Running it again reuses the demo instance and devices (their ingest keys
are rotated, since only hashes are stored) and gives the demo user a new
random password, printed like the first.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
from dataclasses import dataclass, field
from functools import partial

import httpx
import trio

from tracker.accounts import hash_password
from tracker.app import create_app
from tracker.config import Settings
from tracker.context import Tracker
from tracker.geo import haversine_m, initial_bearing_deg
from tracker.server import log_serving, serve
from tracker.store import devices, instances, users

DEMO_INSTANCE_NAME = "Demo fleet"
DEMO_USERNAME = "demo"
REPORT_EVERY_SECONDS = 2.0
TOKEN_TTL_SECONDS = 7 * 86400

# (token, driver name, cruising speed m/s, route through central London)
VANS = [
    (
        "demo-van-1",
        "Alice Martin",
        9.5,
        [
            (51.50136, -0.14189),
            (51.50247, -0.13945),
            (51.50488, -0.13462),
            (51.50738, -0.12776),
            (51.50853, -0.12574),
            (51.51149, -0.12303),
            (51.51306, -0.12197),
            (51.51496, -0.11795),
            (51.51561, -0.10831),
            (51.51632, -0.09889),
            (51.51798, -0.08867),
            (51.51978, -0.08203),
        ],
    ),
    (
        "demo-van-2",
        "Bilal Khan",
        11.0,
        [
            (51.49470, -0.10060),
            (51.49813, -0.10412),
            (51.50139, -0.10574),
            (51.50435, -0.10890),
            (51.50719, -0.10936),
            (51.51047, -0.10444),
            (51.51293, -0.10406),
            (51.51545, -0.10398),
            (51.51806, -0.10542),
            (51.52192, -0.10684),
            (51.52622, -0.10734),
        ],
    ),
    (
        "demo-van-3",
        "Chen Wei",
        8.0,
        [
            (51.52997, -0.12410),
            (51.52691, -0.12860),
            (51.52350, -0.13185),
            (51.52075, -0.13455),
            (51.51763, -0.13741),
            (51.51459, -0.14210),
            (51.51241, -0.14571),
            (51.50970, -0.15025),
            (51.50732, -0.15364),
            (51.50372, -0.15240),
        ],
    ),
]


@dataclass
class Van:
    """A simulated vehicle moving along a route, back and forth."""

    token: str
    name: str
    cruise_mps: float
    route: list[tuple[float, float]]
    ingest_key: str = ""
    leg: int = 0
    along_m: float = 0.0
    stopped_for: float = 0.0
    speed: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def step(self, dt: float) -> dict[str, float]:
        """Advance dt seconds; the position a phone in the van would report now."""
        start, end = self.route[self.leg], self.route[self.leg + 1]
        length = haversine_m(*start, *end)
        if self.stopped_for > 0:
            self.stopped_for -= dt
            self.speed = 0.0
        else:
            target = self.cruise_mps * self.rng.uniform(0.8, 1.15)
            self.speed = self.speed + (target - self.speed) * 0.5
            self.along_m += self.speed * dt
        if self.along_m >= length:
            self.along_m = 0.0
            self.leg += 1
            if self.leg == len(self.route) - 1:
                self.route.reverse()
                self.leg = 0
                self.stopped_for = 30.0  # a delivery
            elif self.rng.random() < 0.35:
                self.stopped_for = self.rng.uniform(5, 25)  # lights, traffic
            start, end = self.route[self.leg], self.route[self.leg + 1]
            length = haversine_m(*start, *end)
        fraction = min(1.0, self.along_m / length) if length else 1.0
        lat = start[0] + (end[0] - start[0]) * fraction
        lon = start[1] + (end[1] - start[1]) * fraction
        return {
            "latitude": round(lat, 6),
            "longitude": round(lon, 6),
            "speed": round(self.speed, 2),
            "heading": round(initial_bearing_deg(*start, *end), 1),
            "accuracy": round(self.rng.uniform(3, 9), 1),
        }


def prepare_user(tracker: Tracker, instance_id: str) -> str:
    """The demo user (admin of the demo instance) with a new random password, returned."""
    password = secrets.token_urlsafe(12)
    password_hash = hash_password(password)
    db = tracker.db
    existing = db.read_sync(users.by_username, DEMO_USERNAME)
    if existing is not None and existing.instance_id != instance_id:
        db.write_sync(users.delete, DEMO_USERNAME)
        existing = None
    if existing is None:
        db.write_sync(users.create, DEMO_USERNAME, instance_id, "admin", password_hash)
    else:
        db.write_sync(users.set_password_hash, DEMO_USERNAME, password_hash)
    return password


def prepare_fleet(tracker: Tracker) -> tuple[str, list[Van], str]:
    """The demo instance, its vans (with fresh ingest keys) and an admin token."""
    db = tracker.db
    instance = db.read_sync(instances.by_name, DEMO_INSTANCE_NAME)
    if instance is None:
        instance = db.write_sync(instances.create, DEMO_INSTANCE_NAME)
    vans = []
    for token, name, cruise, route in VANS:
        first, _, last = name.partition(" ")
        profile = {"full_name": name, "first_name": first, "last_name": last}
        existing = db.read_sync(devices.get, token)
        if existing is None:
            _, key = db.write_sync(devices.create, instance.id, token, profile)
        else:
            key = db.write_sync(devices.rotate_ingest_key, token)
        vans.append(Van(token, name, cruise, list(route), ingest_key=key))
    admin_token = tracker.verifier.mint(
        subject="demo", instances=[instance.id], scope="admin", ttl_seconds=TOKEN_TTL_SECONDS
    )
    return instance.id, vans, admin_token


async def drive(client: httpx.AsyncClient, api: str, van: Van) -> None:
    while True:
        position = van.step(REPORT_EVERY_SECONDS)
        with contextlib.suppress(httpx.TransportError):  # the server is stopping
            await client.post(
                f"{api}/devices/{van.token}/positions",
                json=position,
                headers={"X-Ingest-Key": van.ingest_key},
            )
        await trio.sleep(REPORT_EVERY_SECONDS)


def _announce(info: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info), flush=True)
        return
    print(
        f"""
tracker demo is running at {info["server"]}   (Ctrl-C stops it)

Console (the fleet on a map): {info["console_url"]}
  sign in as {info["username"]} with password {info["password"]}

Share link (van 1 heading to {info["destination"]["label"]}):
  {info["share_url"]}

Admin token for instance {info["instance_id"]}:
  {info["admin_token"]}

Try it (the /ws/realtime stream, then a van's last position):
  tracker watch --url {info["ws_url"]} --instance {info["instance_id"]} --token {info["admin_token"]}
  curl -H "Authorization: Bearer {info["admin_token"]}" {info["api"]}/devices/demo-van-1/position
""",
        flush=True,
    )


async def demo(settings: Settings, as_json: bool = False) -> None:
    """Serve with the demo fleet driving until Ctrl-C or SIGTERM."""
    app = create_app(settings)
    tracker: Tracker = app.extensions["tracker"]
    instance_id, vans, admin_token = prepare_fleet(tracker)
    password = prepare_user(tracker, instance_id)
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:

        async def serve_then_stop(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(app, settings, task_status=task_status)
            nursery.cancel_scope.cancel()  # Ctrl-C: the vans stop with the server

        binds = await nursery.start(serve_then_stop)
        log_serving(binds, settings)
        url = binds[0]
        api = f"{url}{settings.server.api_prefix}"
        destination = {
            "latitude": vans[0].route[-1][0],
            "longitude": vans[0].route[-1][1],
            "label": "Finsbury Square, London",
        }
        response = await client.post(
            f"{api}/sharing/sessions",
            json={
                "device_token": vans[0].token,
                "expires_in_hours": 24,
                "recipient_name": "Demo Customer",
                "order_id": "DEMO-0001",
                "notes": "Your parcel is on its way.",
                "destination": destination,
            },
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        response.raise_for_status()
        _announce(
            {
                "server": url,
                "api": api,
                "ws_url": api.replace("http", "ws", 1) + "/ws/realtime",
                "instance_id": instance_id,
                "admin_token": admin_token,
                "share_url": response.json()["share_url"],
                "destination": destination,
                "devices": [van.token for van in vans],
                "console_url": f"{url}/",
                "username": DEMO_USERNAME,
                "password": password,
            },
            as_json,
        )
        for van in vans:
            nursery.start_soon(partial(drive, client, api, van))
