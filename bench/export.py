"""Export benchmark: positions/s of each export format, and the server's memory while it streams.

    python bench/export.py             # 1,000,000 positions (about 3 min on 2 busy cores)
    python bench/export.py --quick     # 100,000 positions

Before the server starts, one device (`van-3`) gets `--positions` fixes in 10
trips, written straight into SQLite through tracker's own store functions
(`positions.insert_many`, `trips.save`), in the last two weeks so retention
keeps them. Then `python -m tracker serve` (pinned to one core) streams the
whole range as each format, one after the other, to a client (httpx, on the
other cores) that reads and discards it while a thread samples the server's
VmRSS every 20 ms:

  ref: sqlite SELECT   the same rows read by a bare `sqlite3` SELECT in time
                       order, in this process: the floor any export stands on
  gpx, geojson,        GET /devices/van-3/positions/export?format=...
  geojson points, csv
  cli gpx              `tracker export --format gpx > /dev/null` (no server)

Columns: positions/s, MB/s of the body, seconds, server CPU (share of one
core), server RSS before the phase and its peak during it. A warm-up export of
the first 20,000 fixes runs first, so the "before" RSS already holds the code
paths; the issue's bound is a growth under 50 MB for a million positions.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fanout import (  # noqa: E402
    Children,
    TrackerServer,
    fmt,
    in_workdir,
    machine_line,
    process_cpu_seconds,
    render_table,
    revision,
    rss_kib,
    split_cpus,
    step,
)

from tracker.models import Position  # noqa: E402
from tracker.store import Database  # noqa: E402
from tracker.store import positions as positions_store  # noqa: E402
from tracker.store import trips as trips_store  # noqa: E402
from tracker.trips import recount  # noqa: E402

API_PREFIX = "/api/v1"
DEVICE = "van-3"
TRIPS = 10


def seed(db_path: Path, positions: int) -> tuple[float, float]:
    db = Database(db_path, "off")
    start = float(int(time.time()) - 14 * 24 * 3600)
    per_trip = positions // TRIPS
    for number in range(TRIPS):
        base = start + number * (per_trip + 1000)
        fixes = [
            Position(
                latitude=45 + (i % 1000) * 1e-4,
                longitude=7 + number * 1e-3,
                timestamp=base + i,
                speed=10.0,
                heading=90.0,
                accuracy=5.0,
                altitude=300.0,
            )
            for i in range(per_trip)
        ]
        trip = recount(DEVICE, f"trip-{number}", fixes)
        db.write_sync(
            positions_store.insert_many, [(DEVICE, trip.track_token, f) for f in fixes], 0
        )
        db.write_sync(trips_store.save, [trip])
    db.close()
    return start, start + TRIPS * (per_trip + 1000)


def reference_select(db_path: Path) -> tuple[int, float]:
    with sqlite3.connect(db_path) as conn:
        began = time.perf_counter()
        rows = 0
        cursor = conn.execute(
            "SELECT ts, lat, lon, speed, heading, accuracy, altitude, track_token FROM positions"
            " WHERE device_token = ? ORDER BY ts",
            (DEVICE,),
        )
        while batch := cursor.fetchmany(5000):
            rows += len(batch)
        return rows, time.perf_counter() - began


class Sampler:
    """The server's peak VmRSS, sampled every 20 ms in a thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = rss_kib(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def stream(url: str, params: dict, token: str) -> tuple[int, float]:
    began = time.perf_counter()
    size = 0
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", url, params=params, headers=headers, timeout=600) as response:
        if response.status_code != 200:
            raise RuntimeError(f"export answered {response.status_code}: {response.read()[:200]}")
        for chunk in response.iter_bytes():
            size += len(chunk)
    return size, time.perf_counter() - began


def run(workdir: Path, children: Children, args: argparse.Namespace) -> None:
    server_cpus, client_cpus = split_cpus()
    server = TrackerServer(workdir, children, server_cpus)
    instance = server.create_instance("Export Bench")
    server.cli("device", "add", "--instance", instance, "--token", DEVICE)
    token = server.token(instance, "read")
    step(f"seeding {args.positions:,} positions")
    low, high = seed(server.db_path, args.positions)
    rows, seconds = reference_select(server.db_path)
    table = [["ref: sqlite SELECT", fmt(rows / seconds, ",.0f"), "-", fmt(seconds, ".1f")]]
    table[0] += ["-", "-", "-"]
    server.start()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # this process is the client
    url = f"http://127.0.0.1:{server.port}{API_PREFIX}/devices/{DEVICE}/positions/export"
    stream(url, {"from": low, "to": low + 20_000}, token)  # warm-up
    for name, params in (
        ("gpx", {"format": "gpx"}),
        ("geojson", {"format": "geojson"}),
        ("geojson points", {"format": "geojson", "points": "true"}),
        ("csv", {"format": "csv"}),
    ):
        step(f"export {name}")
        before = rss_kib(server.pid)
        cpu = process_cpu_seconds(server.pid)
        with Sampler(server.pid) as sampler:
            size, seconds = stream(url, {"from": low, "to": high, **params}, token)
        cpu = (process_cpu_seconds(server.pid) - cpu) / seconds
        table.append(
            [
                name,
                fmt(rows / seconds, ",.0f"),
                fmt(size / seconds / 1e6, ".1f"),
                fmt(seconds, ".1f"),
                f"{cpu * 100:.0f}%",
                f"{before / 1024:.1f} MiB",
                f"{sampler.peak / 1024:.1f} MiB (+{(sampler.peak - before) / 1024:.1f})",
            ]
        )
    server.stop()
    step("tracker export (command line)")
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tracker", "export", "--device", DEVICE]
        + ["--from", str(low), "--to", str(high), "--format", "gpx"],
        cwd=workdir,
        env=server.env,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=600,
    )
    seconds = time.perf_counter() - began
    table.append(["cli gpx", fmt(rows / seconds, ",.0f"), "-", fmt(seconds, ".1f"), "-", "-", "-"])
    print(f"\nexport of {rows:,} positions in {TRIPS} trips; {revision()}")
    print(machine_line(server_cpus, client_cpus))
    header = ["phase", "positions/s", "MB/s", "seconds", "server CPU", "RSS before", "RSS peak"]
    print(render_table(header, table))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 positions")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    if args.quick:
        args.positions = 100_000
    in_workdir("tracker-export-", args.keep, lambda workdir, children: run(workdir, children, args))


if __name__ == "__main__":
    main()
