"""Backlog benchmark: one device's huge trip must not stall the others, nor its reads the server.

    python bench/backlog.py            # 200,000-fix trip, 10 s phases (about 60 s)
    python bench/backlog.py --quick    # 20,000-fix trip, 3 s phases

The server (`python -m tracker serve`, pinned to one core) gets one device
(`big`) whose latest trip holds `--fixes` fixes, 0.25 s apart, seeded before
it starts through tracker's own writer (`commit_batch`, in order, in chunks).
A `probe` device posts one position at a time, paced at `--probe-rate`/s;
its request latency is what the ingest phases report:

  in order   one client appends fixes to the big trip (after its end) at
             2 x `--rate`/s: the reference.
  backlog    two clients post single fixes for the big device at `--rate`/s
             each, every one inside the trip (between two stored fixes):
             a backlog, as a phone that was offline uploads it.

Then the read phases: one `GET /tracks` of the big device (bytes, seconds);
following `next_since` through every page, if the server pages; and
`--readers` clients fetching `/tracks` in a loop while a client polls
`/health` at 20/s (its p50/p99) and the server's RSS is sampled (peak).

Clients are forked processes on the other cores, each on one keep-alive
connection (`http.client`), paced closed-loop (a late answer delays the next
request, never queues more). The figures to compare are the probe's p99 in
the backlog phase against the in-order phase (the aim: within 2x) and the
/tracks answer size.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import (  # noqa: E402
    Children,
    Device,
    TrackerServer,
    fmt,
    in_workdir,
    machine_line,
    percentile,
    render_table,
    revision,
    rss_kib,
    split_cpus,
    step,
)

API_PREFIX = "/api/v1"
SPACING_SECONDS = 0.25
SEED_CHUNK = 20_000
HEALTH_RATE = 20.0
MAX_PAGE = 10_000  # /tracks' largest page


# -- clients (forked processes) --------------------------------------------------


def _post(conn: http.client.HTTPConnection, device: Device, body: dict) -> int:
    conn.request(
        "POST",
        f"{API_PREFIX}/devices/{device.token}/positions",
        json.dumps(body),
        {"X-Ingest-Key": device.key, "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    response.read()
    return response.status


def _paced(rate: float, start_at: float, stop_at: float):
    """Send times, closed loop: the n-th request at start + n / rate, or at once when late."""
    interval = 1.0 / rate
    n = 0
    while True:
        due = start_at + n * interval
        now = time.time()
        if now >= stop_at:
            return
        if due > now:
            time.sleep(due - now)
        yield n
        n += 1


def ingest_client(
    port: int,
    device: Device,
    kind: str,
    rate: float,
    start_at: float,
    stop_at: float,
    trip: tuple[float, int],
    seed: int,
    out: str,
) -> None:
    """Post single fixes; write [(sent, seconds, status)] to `out` as JSON.

    kind: `now` (the wall clock, in order), `append` (after the big trip's end),
    `backlog` (between two stored fixes of the big trip, each at most once)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    base, fixes = trip
    order = random.Random(seed).sample(range(fixes - 1), fixes - 1) if kind == "backlog" else []
    samples = []
    for n in _paced(rate, start_at, stop_at):
        if kind == "now":
            timestamp = round(time.time(), 3)
        elif kind == "append":
            timestamp = base + (fixes + n) * SPACING_SECONDS
        else:
            timestamp = base + (order[n % len(order)] + 0.2 + 0.1 * seed) * SPACING_SECONDS
        index = (timestamp - base) / SPACING_SECONDS
        body = {"latitude": 51.0 + index * 1e-4, "longitude": -0.12, "timestamp": timestamp}
        body.update(speed=10.0, accuracy=5.0)
        sent = time.time()
        try:
            status = _post(conn, device, body)
        except (OSError, http.client.HTTPException):
            conn.close()
            status = 0
        samples.append((sent, time.time() - sent, status))
    Path(out).write_text(json.dumps(samples))


def get_client(
    port: int, path: str, token: str, rate: float | None, start_at: float, stop_at: float, out: str
) -> None:
    """GET `path` in a loop (paced at `rate`, or back to back); samples to `out` as JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    samples = []
    for _ in _paced(rate or 1e9, start_at, stop_at):
        sent = time.time()
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            size = len(response.read())
            status = response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            status, size = 0, 0
        samples.append((sent, time.time() - sent, status, size))
    Path(out).write_text(json.dumps(samples))


# -- the bench ----------------------------------------------------------------------


class BacklogBench:
    def __init__(self, args: argparse.Namespace, workdir: Path, children: Children):
        self.args = args
        self.workdir = workdir
        self.children = children
        self.server_cpus, self.client_cpus = split_cpus()
        self.server = TrackerServer(workdir, children, self.server_cpus)
        self.trip_base = 0.0

    def seed(self, device: Device) -> float:
        """The big trip, written through tracker's writer in order; returns the seconds taken."""
        from tracker.config import Settings
        from tracker.models import Position
        from tracker.store import Database
        from tracker.writer import commit_batch

        settings = Settings()
        fixes = self.args.fixes
        self.trip_base = time.time() - 600 - fixes * SPACING_SECONDS
        db = Database(self.server.db_path)
        started = time.perf_counter()
        try:
            for low in range(0, fixes, SEED_CHUNK):
                positions = [
                    Position(
                        latitude=51.0 + i * 1e-4,
                        longitude=-0.12,
                        timestamp=self.trip_base + i * SPACING_SECONDS,
                        speed=10.0,
                        accuracy=5.0,
                    )
                    for i in range(low, min(fixes, low + SEED_CHUNK))
                ]
                db.write_sync(
                    commit_batch,
                    [(device.token, positions)],
                    settings.trips.split_gap_seconds,
                    settings.sharing.arrival_radius_m,
                    time.time(),
                )
        finally:
            db.close()
        return time.perf_counter() - started

    def _files(self, name: str, count: int) -> list[str]:
        return [str(self.workdir / f"{name}-{i}.json") for i in range(count)]

    def _wait(self, processes: list, timeout: float) -> None:
        for process in processes:
            process.join(timeout)
            self.children.stop(process)

    def ingest_phase(self, name: str, backlog: bool) -> list[str]:
        args = self.args
        start_at = time.time() + 0.5
        stop_at = start_at + args.warmup + args.seconds
        trip = (self.trip_base, args.fixes)
        big_files = self._files(f"{name}-big", 2 if backlog else 1)
        (probe_file,) = self._files(f"{name}-probe", 1)
        processes = [
            self.children.spawn(
                ingest_client,
                (
                    self.server.port,
                    self.probe,
                    "now",
                    args.probe_rate,
                    start_at,
                    stop_at,
                    trip,
                    0,
                    probe_file,
                ),
            )
        ]
        for index, out in enumerate(big_files):
            kind, rate = ("backlog", args.rate) if backlog else ("append", 2 * args.rate)
            processes.append(
                self.children.spawn(
                    ingest_client,
                    (self.server.port, self.big, kind, rate, start_at, stop_at, trip, index, out),
                )
            )
        self._wait(processes, args.warmup + args.seconds + 300)
        measured_from = start_at + args.warmup

        def window(path: str) -> list:
            return [s for s in json.loads(Path(path).read_text()) if s[0] >= measured_from]

        big = [s for path in big_files for s in window(path)]
        probe = window(probe_file)
        latencies = sorted(s[1] * 1000 for s in probe)
        big_latencies = sorted(s[1] * 1000 for s in big)
        errors = sum(1 for s in probe + big if s[2] != 201)
        return [
            name,
            fmt(len(big) / args.seconds, ".1f"),
            fmt(percentile(big_latencies, 50), ".1f"),
            fmt(percentile(big_latencies, 99), ".1f"),
            fmt(len(probe) / args.seconds, ".1f"),
            fmt(percentile(latencies, 50), ".1f"),
            fmt(percentile(latencies, 99), ".1f"),
            fmt(latencies[-1] if latencies else None, ".1f"),
            str(errors),
        ]

    def tracks_once(self, query: str = "") -> tuple[int, int, float, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
        started = time.perf_counter()
        conn.request(
            "GET",
            f"{API_PREFIX}/devices/{self.big.token}/tracks{query}",
            headers={"Authorization": f"Bearer {self.read_token}"},
        )
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        conn.close()
        return response.status, len(body), elapsed, json.loads(body)

    def read_phases(self) -> list[str]:
        lines = []
        status, size, elapsed, body = self.tracks_once()
        lines.append(
            f"GET /tracks (no parameters): {status}, {size / 1e6:.2f} MB,"
            f" {len(body.get('waypoints', []))} waypoints, {elapsed * 1000:.0f} ms"
        )
        pages, total, biggest, waypoints = 1, size, size, len(body.get("waypoints", []))
        started = time.perf_counter()
        while body.get("next_since") is not None:
            status, size, _, body = self.tracks_once(
                f"?since={body['next_since']!r}&limit={MAX_PAGE}"
            )
            if status != 200:
                raise RuntimeError(f"/tracks page answered {status}")
            pages, total, biggest = pages + 1, total + size, max(biggest, size)
            waypoints += len(body["waypoints"])
        lines.append(
            f"following next_since (limit={MAX_PAGE}): {pages} pages, {waypoints} waypoints, {total / 1e6:.2f} MB"
            f" in all, largest page {biggest / 1e6:.2f} MB,"
            f" {(time.perf_counter() - started + elapsed) * 1000:.0f} ms"
        )

        args = self.args
        rss_before = rss_kib(self.server.pid)
        start_at = time.time() + 0.5
        stop_at = start_at + args.seconds
        tracks_path = f"{API_PREFIX}/devices/{self.big.token}/tracks"
        reader_files = self._files("reader", args.readers)
        (health_file,) = self._files("health", 1)
        processes = [
            self.children.spawn(
                get_client,
                (self.server.port, tracks_path, self.read_token, None, start_at, stop_at, out),
            )
            for out in reader_files
        ]
        processes.append(
            self.children.spawn(
                get_client,
                (
                    self.server.port,
                    f"{API_PREFIX}/health",
                    self.read_token,
                    HEALTH_RATE,
                    start_at,
                    stop_at,
                    health_file,
                ),
            )
        )
        peak = rss_before
        while time.time() < stop_at:
            peak = max(peak, rss_kib(self.server.pid))
            time.sleep(0.05)
        self._wait(processes, 300)
        reads = [s for path in reader_files for s in json.loads(Path(path).read_text())]
        health = sorted(s[1] * 1000 for s in json.loads(Path(health_file).read_text()))
        lines.append(
            f"{args.readers} readers looping GET /tracks for {args.seconds:g} s:"
            f" {len(reads)} answers, {sum(s[3] for s in reads) / 1e6:.1f} MB;"
            f" /health p50 {fmt(percentile(health, 50), '.1f')} ms,"
            f" p99 {fmt(percentile(health, 99), '.1f')} ms;"
            f" server RSS {rss_before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB"
        )
        return lines

    def run(self) -> None:
        args = self.args
        instance = self.server.create_instance("Backlog bench")
        self.big, self.probe = self.server.add_devices(instance, 2)
        self.read_token = self.server.token(instance, "read")
        step(f"seeding a {args.fixes:,}-fix trip")
        seeded = self.seed(self.big)
        step(f"seeded in {seeded:.1f} s; starting the server")
        self.server.start()
        rows = []
        for name, backlog in (("in order", False), ("backlog", True)):
            step(f"phase {name}")
            rows.append(self.ingest_phase(name, backlog))
        step("read phases")
        reads = self.read_phases()
        print()
        print(f"# bench/backlog.py, {revision()}")
        print(machine_line(self.server_cpus, self.client_cpus))
        print(
            f"big trip: {args.fixes:,} fixes; big device {args.rate:g}/s per client;"
            f" probe {args.probe_rate:g}/s; {args.seconds:g} s windows after {args.warmup:g} s"
        )
        print()
        header = [
            "phase",
            "big req/s",
            "big p50 ms",
            "big p99 ms",
            "probe req/s",
            "probe p50 ms",
            "probe p99 ms",
            "probe max ms",
            "errors",
        ]
        print(render_table(header, rows))
        print()
        for line in reads:
            print(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixes", type=int, default=200_000, help="fixes in the big trip")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per phase")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=10.0, help="backlog fixes/s per client")
    parser.add_argument("--probe-rate", type=float, default=20.0)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20,000 fixes, 3 s windows")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.fixes, args.seconds = 20_000, 3.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_workdir("tracker-backlog-", args.keep, lambda w, c: BacklogBench(args, w, c).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
