"""Events benchmark: webhook delivery throughput, and what geofence checks cost ingest.

    python bench/events.py            # 2,000 events, 20,000 positions per phase
    python bench/events.py --quick    # smoke run

Phases, each on a fresh database in a temp directory, loopback only:

  deliveries   The webhook dispatcher (tracker/webhooks.py, as the server runs
               it) delivers N committed events from the outbox to 1 and to 4
               webhooks whose receiver (http.server, threaded, in its own
               process, answering 204) counts them: events/s from start to
               the last one received, signed and pinned exactly as in
               production (allow_private_targets on for the loopback target).
  ingest       The writer's transaction (`commit_batch`, as the server runs
               it, 50 requests of one live fix per commit, 200 devices moving
               through a city-sized area) with 0 and with 100 geofences in the
               instance (half circles, half 12-sided polygons, all over that
               area, some of them crossed): positions/s, and the events made.

HTTP and the event loop are left out of the ingest figure on purpose: it is
the added cost per position that matters, and bench/ingest.py measures the
whole path.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from tracker import events  # noqa: E402
from tracker.config import WebhookSettings  # noqa: E402
from tracker.geofences import GeofenceIndex  # noqa: E402
from tracker.hub import Hub  # noqa: E402
from tracker.models import Position  # noqa: E402
from tracker.store import Database, devices, instances  # noqa: E402
from tracker.store import geofences as geofences_store  # noqa: E402
from tracker.store import webhooks as webhooks_store  # noqa: E402
from tracker.store.geofences import StoredGeofence  # noqa: E402
from tracker.store.webhooks import Webhook  # noqa: E402
from tracker.webhooks import Dispatcher, new_secret  # noqa: E402
from tracker.writer import commit_batch  # noqa: E402

CENTRE = (51.5, -0.1)
AREA_DEG = 0.05  # about 5.5 km north-south


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def receiver_main(port: int) -> None:
    """A receiver counting POSTs; GET answers the count."""
    count = 0

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            nonlocal count
            self.rfile.read(int(self.headers["Content-Length"]))
            count += 1
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            body = str(count).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def received(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return int(answer.rsplit(b"\r\n\r\n", 1)[1])


def deliveries(workdir: Path, count: int, webhooks: int) -> float:
    port = free_port()
    receiver = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                received(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        db = Database(workdir / f"deliveries-{webhooks}.db")
        instance = db.write_sync(instances.create, "Bench")
        for number in range(webhooks):
            db.write_sync(
                webhooks_store.create,
                Webhook(
                    id=f"hook{number}",
                    instance_id=instance.id,
                    url=f"http://127.0.0.1:{port}/hook/{number}",
                    event_types=["share.created"],
                    enabled=True,
                    disabled_reason=None,
                    secret=new_secret(),
                    description=None,
                    created_at=time.time(),
                    cursor=0,
                    failing_since=None,
                    next_attempt_at=None,
                ),
            )

        def emit_all(conn) -> None:
            for number in range(count):
                events.emit(conn, instance.id, "share.created", {"id": f"s{number}"}, time.time())

        db.write_sync(emit_all)
        settings = WebhookSettings(allow_private_targets=True)

        async def run() -> float:
            dispatcher = Dispatcher(db, Hub(), settings)
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                await nursery.start(dispatcher.run)
                while await trio.to_thread.run_sync(received, port) < count * webhooks:
                    await trio.sleep(0.05)
                elapsed = time.perf_counter() - started
                nursery.cancel_scope.cancel()
            return elapsed

        elapsed = trio.run(run)
        db.close()
        return count * webhooks / elapsed
    finally:
        receiver.kill()
        receiver.wait()


def polygon(lat: float, lon: float, radius_m: float, sides: int = 12) -> dict:
    ring = []
    for side in range(sides):
        angle = 2 * math.pi * side / sides
        ring.append(
            [
                lon + radius_m * math.cos(angle) / (111_320 * math.cos(math.radians(lat))),
                lat + radius_m * math.sin(angle) / 111_320,
            ]
        )
    ring.append(ring[0])
    return {"type": "Polygon", "coordinates": [ring]}


def ingest(workdir: Path, positions: int, fences: int) -> tuple[float, int]:
    db = Database(workdir / f"ingest-{fences}.db")
    instance = db.write_sync(instances.create, "Bench")
    tokens = [
        db.write_sync(devices.create, instance.id, f"van{n}", {})[0].token for n in range(200)
    ]
    rng = random.Random(7)
    for number in range(fences):
        lat = CENTRE[0] + rng.uniform(-AREA_DEG, AREA_DEG) / 2
        lon = CENTRE[1] + rng.uniform(-AREA_DEG, AREA_DEG) / 2
        radius = rng.uniform(100, 600)
        shape = (
            {"circle": {"latitude": lat, "longitude": lon, "radius_m": radius}}
            if number % 2
            else {"polygon": polygon(lat, lon, radius)}
        )
        db.write_sync(
            geofences_store.create,
            StoredGeofence(f"fence{number}", instance.id, f"Fence {number}", shape, None, 0),
        )
    index = GeofenceIndex()
    where = {
        token: [CENTRE[0] + rng.uniform(-0.02, 0.02), CENTRE[1] + rng.uniform(-0.02, 0.02)]
        for token in tokens
    }
    base = time.time() - positions  # one fix per device per "second", in the past day
    made = 0
    started = time.perf_counter()
    for batch_start in range(0, positions, 50):
        requests = []
        for n in range(batch_start, min(batch_start + 50, positions)):
            token = tokens[n % len(tokens)]
            spot = where[token]
            spot[0] += 0.0002  # about 22 m north per fix: devices cross fences
            requests.append(
                (
                    token,
                    [
                        Position.build(
                            latitude=spot[0], longitude=spot[1], timestamp=base + n, accuracy=8
                        )
                    ],
                )
            )
        _, _, emitted = db.write_sync(commit_batch, requests, 300, 75, time.time(), 600, index)
        made += sum(event.type.startswith("geofence.") for event in emitted)
    elapsed = time.perf_counter() - started
    db.close()
    return positions / elapsed, made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--positions", type=int, default=20_000)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver:
        receiver_main(args.receiver)
        return 0
    count = 200 if args.quick else args.events
    positions = 2000 if args.quick else args.positions
    print(f"tracker events benchmark, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="tracker-bench-events-") as tmp:
        workdir = Path(tmp)
        for webhooks in (1, 4):
            rate = deliveries(workdir, count, webhooks)
            print(
                f"deliveries  {webhooks} webhook(s), {count} events each: {rate:8.0f} deliveries/s"
            )
        rates = {}
        for fences in (0, 100):
            rates[fences], made = ingest(workdir, positions, fences)
            print(
                f"ingest      {fences:3d} geofences: {rates[fences]:8.0f} positions/s"
                f" (commit_batch, 50 per commit; {made} geofence events)"
            )
        print(f"geofence cost: {(1 - rates[100] / rates[0]) * 100:.0f}% fewer positions/s with 100")
    return 0


if __name__ == "__main__":
    sys.exit(main())
