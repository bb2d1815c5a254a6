"""Ingest benchmark: committed positions/s against the bare stack, measured in the same run.

    python bench/ingest.py                 # full run: 10 s phases, 50 connections
    python bench/ingest.py --quick         # smoke run: short phases, fewer connections
    python bench/ingest.py --client python --seconds 20 --concurrency 100
    python bench/ingest.py --phases sqlite,batch --rounds 2   # only the batched row

Phases, each bounded in time (--seconds) after a short warm-up:

  ref sqlite   SQLite `executemany` into a bare table (no index), 100 rows per
               transaction, WAL + synchronous=NORMAL, on the server's core (rows/s).
  floor        The same executemany with tracker's own INSERT into tracker's own
               schema (migrated database, 50 devices, the duplicate rule's
               UNIQUE(device_token, ts) and the foreign key): what storing costs
               before any HTTP, parsing or trip work; run with the sqlite phase.
  ref raw-asgi A raw ASGI app answering a POST (reads the body, answers 201) on the
               same Hypercorn trio worker and config as `tracker serve` (requests/s).
  single       `python -m tracker serve`, one position per POST
               /api/v1/devices/{token}/positions, authenticated by X-Ingest-Key.
  batch        The same with {"positions": [...100...]} per POST.
  open loop    p99 latency at a fixed arrival rate (--open-rate, default 300 POSTs/s),
               for the raw ASGI app and for tracker (single position, X-Ingest-Key):
               requests are sent on schedule whatever the answers (a new keep-alive
               connection when every open one is busy), and each latency is measured
               from its scheduled send time, so a stall is counted for every request
               it delays (no coordinated omission; wrk2 is not in Debian).

The server (and the SQLite reference) is pinned to one core and the load
clients to the others. Every client connection owns one device and posts its
fixes in time order with unique timestamps (base + n * 1 ms, within the last
day), so nothing is deduplicated or refused, and no fix is a backlog.
Committed positions are counted in the database after each phase; positions/s
= committed rows / elapsed seconds. Server and client CPU use are measured over
each phase (from /proc and the children's rusage) to show which side saturates.

The load client is Debian's `wrk` with a generated Lua script (default when
/usr/bin/wrk exists), or Python client processes (`--client python`: trio,
raw keep-alive sockets, one process per client core).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The harness pieces every benchmark shares live in fanout.py.
from fanout import (  # noqa: E402
    WRK_REPORT_LUA,
    Children,
    Device,
    KeepAliveClient,
    TrackerServer,
    _raise_on_sigterm,
    children_cpu_seconds,
    fmt,
    free_port,
    machine_busy_seconds,
    machine_line,
    process_cpu_seconds,
    raw_http_app,
    revision,
    run_bench,
    run_wrk_process,
    serve_raw_app,
    step,
    thread_cpu_seconds,
    versions,
    wait_http_ok,
    wrk_version,
)

API_PREFIX = "/api/v1"
BATCH_SIZE = 100
SQLITE_ROWS_PER_TRANSACTION = 100
FLOOR_PHASE = "floor: tracker's positions table"
FLOOR_BATCHES = 20_000  # 2 M distinct rows made beforehand: more than 12 s of the floor
RAW_ASGI_PATH = "/raw"
RAW_ASGI_RESPONSE = b'{"accepted":1,"duplicates":0}'
THIS_FILE = Path(__file__).resolve()
PHASES = ("sqlite", "raw-asgi", "single", "open", "batch")


# -- CPU readings (the rest is in fanout.py) ----------------------------------


def thread_split(
    before: dict[int, float], after: dict[int, float], pid: int, elapsed: float
) -> str:
    """'event-loop thread 84%, worker threads 16%': the server's CPU by thread over a phase."""
    loop = workers = 0.0
    for tid, seconds in after.items():
        used = seconds - before.get(tid, 0.0)
        if tid == pid:
            loop += used
        else:
            workers += used
    return (
        f"event-loop thread {loop / elapsed * 100:.0f}%,"
        f" worker threads (SQLite) {workers / elapsed * 100:.0f}% of one core"
    )


# -- the tracker server and its devices --------------------------------------


class Tracker(TrackerServer):
    """The server under test, with what the ingest phases read from its database."""

    def make_devices(self, count: int) -> list[Device]:
        return self.add_devices(self.create_instance("Bench fleet"), count)

    def count_rows(self) -> int:
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            return conn.execute("SELECT count(*) FROM positions").fetchone()[0]

    def settled_count(self, timeout: float = 10) -> int:
        """The row count once in-flight requests have committed (two equal reads)."""
        previous = self.count_rows()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.25)
            current = self.count_rows()
            if current == previous:
                return current
            previous = current
        return previous

    def out_of_order_inserts(self) -> int:
        """Fixes stored after a later fix of the same device (backlog inserts into their trip)."""
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            return conn.execute(
                "SELECT count(*) FROM (SELECT ts, lag(ts) OVER"
                " (PARTITION BY device_token ORDER BY id) AS prev FROM positions) WHERE ts < prev"
            ).fetchone()[0]


# -- the references -------------------------------------------------------------
# The raw ASGI app is fanout.raw_http_app(201, RAW_ASGI_RESPONSE) (`--role raw-asgi`).


# -- the SQLite reference -----------------------------------------------------


def sqlite_reference(db_path: str, seconds: float, warmup: float, schema: str) -> None:
    """`--role sqlite`: executemany into a bare table (`--schema bare`) or into tracker's
    positions table (`--schema tracker`); prints rows/s as JSON."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    if schema == "tracker":
        from tracker.store import devices, instances, positions
        from tracker.store import schema as tracker_schema

        conn.execute("PRAGMA foreign_keys = ON")
        tracker_schema.migrate(conn)
        instance = instances.create(conn, "floor")
        for number in range(50):
            devices.create(conn, instance.id, f"device-{number}")
        table, insert = "positions", positions._INSERT
    else:
        conn.execute(
            "CREATE TABLE bare (device_token TEXT, track_token TEXT, ts REAL, lat REAL, lon REAL,"
            " speed REAL, heading REAL, accuracy REAL, altitude REAL, battery REAL, valid INTEGER,"
            " attributes TEXT, received_at REAL)"
        )
        table, insert = "bare", "INSERT INTO bare VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    now = time.time()
    batches = [
        [
            (
                f"device-{b % 50}",
                "0123456789abcdef",
                now - 3600 + (b * SQLITE_ROWS_PER_TRANSACTION + i) * 0.001,
                52.5 + i * 1e-6,
                13.4 + i * 1e-6,
                12.5,
                90.0,
                5.0,
                None,
                None,
                1,
                None,
                now,
            )
            for i in range(SQLITE_ROWS_PER_TRANSACTION)
        ]
        for b in range(FLOOR_BATCHES if schema == "tracker" else 500)
    ]
    # The bare table takes the same 500 batches again and again; tracker's refuses a
    # fix it holds (the duplicate rule), so the floor has a batch of its own for every
    # transaction, made beforehand, and ends early should they run out.
    cycle = schema != "tracker"
    index = 0

    def run(duration: float) -> tuple[int, float]:
        nonlocal index
        rows, start = 0, time.perf_counter()
        end = start + duration
        while time.perf_counter() < end and (cycle or index < len(batches)):
            conn.execute("BEGIN")
            conn.executemany(insert, batches[index % len(batches)])
            conn.execute("COMMIT")
            rows += SQLITE_ROWS_PER_TRANSACTION
            index += 1
        return rows, time.perf_counter() - start

    run(warmup)
    rows, elapsed = run(seconds)
    stored = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    print(json.dumps({"rows": rows, "elapsed": elapsed, "stored": stored}))


# -- load client: wrk ----------------------------------------------------------

WRK_LUA = r"""
-- generated by bench/ingest.py: one device per wrk thread (one connection each),
-- fixes in time order with unique timestamps base + n * 1 ms.
local devices = {%(devices)s}
local base = %(base).3f
local batch = %(batch)d
local raw_path = %(raw_path)s
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("index", threads)
end

local counter = 0
local path, headers

function init(args)
  local d = devices[((index - 1) %% #devices) + 1]
  path = raw_path or ("%(prefix)s/devices/" .. d[1] .. "/positions")
  headers = {["Content-Type"] = "application/json", ["X-Ingest-Key"] = d[2]}
end

local function fix()
  counter = counter + 1
  return string.format(
    '{"latitude":%%.6f,"longitude":%%.6f,"timestamp":%%.3f,"speed":12.5,"heading":90.0,"accuracy":5.0}',
    52.5 + counter * 1e-6, 13.4 + counter * 1e-6, base + counter * 0.001)
end

function request()
  local body
  if batch == 1 then
    body = fix()
  else
    local parts = {}
    for i = 1, batch do parts[i] = fix() end
    body = '{"positions":[' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format("POST", path, headers, body)
end
"""


@dataclass
class ClientResult:
    requests: int  # completed responses
    failed: int  # non-2xx responses and socket errors
    elapsed: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_seconds: float  # the client processes' CPU time
    notes: list[str] = field(default_factory=list)


def run_wrk(
    port: int,
    devices: list[Device],
    base: float,
    batch: int,
    seconds: float,
    concurrency: int,
    workdir: Path,
    children: Children,
    cpus: set[int] | None,
    raw: bool,
) -> ClientResult:
    script = workdir / f"wrk-{time.monotonic_ns()}.lua"
    script.write_text(
        WRK_LUA
        % {
            "devices": ", ".join(
                f"{{{json.dumps(d.token)}, {json.dumps(d.key)}}}" for d in devices
            ),
            "base": base,
            "batch": batch,
            "raw_path": json.dumps(RAW_ASGI_PATH) if raw else "nil",
            "prefix": API_PREFIX,
        }
        + WRK_REPORT_LUA
    )
    argv = [
        shutil.which("wrk") or "wrk",
        f"-t{concurrency}",  # one connection per thread: each connection owns a device
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/",
    ]
    run = run_wrk_process(argv, seconds, children, cpus)
    return ClientResult(
        requests=run.report["requests"],
        failed=run.failed,
        elapsed=run.report["duration_us"] / 1e6,
        p50_ms=run.report["p50_us"] / 1000,
        p99_ms=run.report["p99_us"] / 1000,
        cpu_seconds=run.cpu_seconds,
        notes=run.notes,
    )


# -- load client: Python processes ---------------------------------------------


def _fix_json(counter: int, base: float) -> bytes:
    return (
        b'{"latitude":%.6f,"longitude":%.6f,"timestamp":%.3f,'
        b'"speed":12.5,"heading":90.0,"accuracy":5.0}'
        % (52.5 + counter * 1e-6, 13.4 + counter * 1e-6, base + counter * 0.001)
    )


def _python_client_process(port, jobs, batch, start_at, seconds, results, cpus) -> None:
    """One client process: trio, one raw keep-alive socket per job (device), in order."""
    import trio

    if cpus:
        os.sched_setaffinity(0, cpus)
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}

    async def connection(path: str, key: str, base: float) -> None:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nX-Ingest-Key: {key}\r\n"
            "Content-Length: %d\r\n\r\n"
        ).encode()
        client = KeepAliveClient(port)
        await client.reopen()
        counter = 0
        await trio.sleep_until(trio.current_time() + max(0.0, start_at - time.time()))
        end = start_at + seconds
        while time.time() < end:
            if batch == 1:
                counter += 1
                body = _fix_json(counter, base)
            else:
                fixes = [_fix_json(counter + i, base) for i in range(1, batch + 1)]
                counter += batch
                body = b'{"positions":[' + b",".join(fixes) + b"]}"
            sent = time.perf_counter()
            status = await client.exchange(head % len(body) + body)
            if status is None:
                counts["failed"] += 1
                continue
            latencies.append(time.perf_counter() - sent)
            counts["ok" if 200 <= status < 300 else "failed"] += 1
        await client.aclose()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(connection, *job)

    trio.run(main)
    results.put(
        {
            "ok": counts["ok"],
            "failed": counts["failed"],
            "latencies": latencies,
            "finished": time.time(),
        }
    )


def run_python_clients(
    port: int,
    devices: list[Device],
    base: float,
    batch: int,
    seconds: float,
    concurrency: int,
    children: Children,
    cpus: set[int] | None,
    processes: int,
    raw: bool,
) -> ClientResult:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    jobs = []
    for index in range(concurrency):
        device = devices[index % len(devices)]
        path = RAW_ASGI_PATH if raw else f"{API_PREFIX}/devices/{device.token}/positions"
        jobs.append((path, device.key, base))
    start_at = time.time() + 1.0 + 0.02 * concurrency  # after every connection is open
    cpu_before = children_cpu_seconds()
    workers = []
    for index in range(processes):
        args = (port, jobs[index::processes], batch, start_at, seconds, results, cpus)
        workers.append(children.spawn(_python_client_process, args))
    collected = [results.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(30)
        children.stop(worker)
    cpu = children_cpu_seconds() - cpu_before
    latencies = sorted(x for c in collected for x in c["latencies"])
    ok = sum(c["ok"] for c in collected)
    failed = sum(c["failed"] for c in collected)

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    notes = [f"python client: {failed} failed requests"] if failed else []
    return ClientResult(
        requests=ok + failed,
        failed=failed,
        elapsed=max(c["finished"] for c in collected) - start_at,
        p50_ms=percentile(50),
        p99_ms=percentile(99),
        cpu_seconds=cpu,
        notes=notes,
    )


# -- load client: open loop ------------------------------------------------------

MAX_OPEN_LOOP_CONNECTIONS = 256


def _open_loop_client_process(port, jobs, rate, start_at, seconds, results, cpus) -> None:
    """Requests at a fixed rate from one process; latency from each scheduled send time."""
    import trio

    if cpus:
        os.sched_setaffinity(0, cpus)
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0, "late": 0}
    counters = [0] * len(jobs)

    def request_bytes(index: int) -> bytes:
        path, key, base = jobs[index % len(jobs)]
        counters[index % len(jobs)] += 1
        body = _fix_json(counters[index % len(jobs)], base)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nX-Ingest-Key: {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head + body

    async def main() -> None:
        idle: list[KeepAliveClient] = []
        opened = 0
        for _ in range(8):
            client = KeepAliveClient(port)
            await client.reopen()
            idle.append(client)
            opened += 1
        loop_start = trio.current_time() + max(0.0, start_at - time.time())
        total = int(rate * seconds)

        async def one(client: KeepAliveClient, request: bytes, scheduled: float) -> None:
            status = await client.exchange(request)
            if status is None:
                counts["failed"] += 1
            else:
                latencies.append(trio.current_time() - scheduled)
                counts["ok" if 200 <= status < 300 else "failed"] += 1
            idle.append(client)

        async with trio.open_nursery() as nursery:
            for index in range(total):
                scheduled = loop_start + index / rate
                await trio.sleep_until(scheduled)
                if idle:
                    client = idle.pop()
                elif opened < MAX_OPEN_LOOP_CONNECTIONS:
                    client = KeepAliveClient(port)
                    opened += 1
                else:  # every connection is stuck: the request waits, its latency counts
                    counts["late"] += 1
                    while not idle:
                        await trio.sleep(0.001)
                    client = idle.pop()
                nursery.start_soon(one, client, request_bytes(index), scheduled)
        for client in idle:
            await client.aclose()
        counts["connections"] = opened

    trio.run(main)
    results.put({**counts, "latencies": latencies, "finished": time.time()})


def run_open_loop(
    port: int,
    devices: list[Device],
    base: float,
    rate: float,
    seconds: float,
    children: Children,
    cpus: set[int] | None,
    raw: bool,
) -> ClientResult:
    """One client process sending `rate` single-position POSTs/s for `seconds`."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    jobs = [
        (RAW_ASGI_PATH if raw else f"{API_PREFIX}/devices/{d.token}/positions", d.key, base)
        for d in devices
    ]
    start_at = time.time() + 1.0
    cpu_before = children_cpu_seconds()
    worker = children.spawn(
        _open_loop_client_process, (port, jobs, rate, start_at, seconds, results, cpus)
    )
    collected = results.get(timeout=seconds + 120)
    worker.join(30)
    children.stop(worker)
    latencies = sorted(collected["latencies"])

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    notes = [f"open loop: {collected['connections']} connections used"]
    if collected["failed"]:
        notes.append(f"open loop: {collected['failed']} failed requests")
    if collected["late"]:
        notes.append(f"open loop: {collected['late']} requests waited for a free connection")
    return ClientResult(
        requests=collected["ok"] + collected["failed"],
        failed=collected["failed"],
        elapsed=collected["finished"] - start_at,
        p50_ms=percentile(50),
        p99_ms=percentile(99),
        cpu_seconds=children_cpu_seconds() - cpu_before,
        notes=notes,
    )


# -- phases ---------------------------------------------------------------------


@dataclass
class Row:
    phase: str
    client: str
    concurrency: int | str
    seconds: float
    requests_per_s: float | None
    positions_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    server_cpu: float | None  # share of one core
    client_cpu: float | None
    ratio: str = ""
    other_cpu: float | None = None  # share of a core used by processes not ours
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, children: Children):
        self.args = args
        self.workdir = workdir
        self.children = children
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            self.server_cpus: set[int] | None = {cpus[0]}
            self.client_cpus: set[int] | None = set(cpus[1:])
        else:
            self.server_cpus = self.client_cpus = None
        self.notes: list[str] = []
        self.open_rows: list[Row] = []  # this round's open-loop phases

    @property
    def client_label(self) -> str:
        if self.args.client == "wrk":
            return "wrk"
        return f"python x{self.args.client_processes}"

    def drive(
        self,
        port: int,
        devices: list[Device],
        base: float,
        batch: int,
        seconds: float,
        raw: bool = False,
    ) -> ClientResult:
        args = self.args
        if args.client == "wrk":
            return run_wrk(
                port,
                devices,
                base,
                batch,
                seconds,
                args.concurrency,
                self.workdir,
                self.children,
                self.client_cpus,
                raw,
            )
        return run_python_clients(
            port,
            devices,
            base,
            batch,
            seconds,
            args.concurrency,
            self.children,
            self.client_cpus,
            args.client_processes,
            raw,
        )

    def other_load(self, busy_before: float, elapsed: float, ours: float) -> float:
        """Share of a core that processes other than ours used during a phase (noise)."""
        return max(0.0, (machine_busy_seconds() - busy_before) / elapsed - ours)

    def sqlite_reference(self, round_: int, schema: str = "bare") -> Row:
        busy_before, children_before = machine_busy_seconds(), children_cpu_seconds()
        started = time.monotonic()
        out = subprocess.run(  # a child of its own, pinned to the server's core
            [
                sys.executable,
                str(THIS_FILE),
                "--role",
                "sqlite",
                "--db",
                str(self.workdir / f"{schema}-{round_}.db"),
                "--schema",
                schema,
                "--seconds",
                str(self.args.seconds),
                "--warmup",
                str(self.args.warmup),
            ],
            preexec_fn=(lambda: os.sched_setaffinity(0, self.server_cpus))
            if self.server_cpus
            else None,
            capture_output=True,
            text=True,
            timeout=self.args.seconds + 120,
            check=True,
        )
        wall = time.monotonic() - started
        ours = (children_cpu_seconds() - children_before) / wall
        data = json.loads(out.stdout)
        assert data["stored"] >= data["rows"], data
        rate = data["rows"] / data["elapsed"]
        return Row(
            "ref: sqlite executemany" if schema == "bare" else FLOOR_PHASE,
            "-",
            "-",
            data["elapsed"],
            None,
            rate,
            None,
            None,
            None,
            None,
            f"{SQLITE_ROWS_PER_TRANSACTION} rows/txn",
            notes=[f"the run ended early, {data['rows']:,} rows made beforehand all stored"]
            if data["elapsed"] < self.args.seconds * 0.99
            else [],
            other_cpu=self.other_load(busy_before, wall, ours),
        )

    def raw_asgi_reference(self, devices: list[Device]) -> Row:
        port = free_port()
        log = self.workdir / "raw-asgi.log"
        with open(log, "ab") as log_file:
            process = self.children.popen(
                [sys.executable, str(THIS_FILE), "--role", "raw-asgi", "--port", str(port)],
                cpus=self.server_cpus,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        try:
            wait_http_ok(port, RAW_ASGI_PATH, process, log)
            self.drive(port, devices, 0.0, 1, self.args.warmup, raw=True)
            cpu_before, busy_before = process_cpu_seconds(process.pid), machine_busy_seconds()
            result = self.drive(port, devices, 0.0, 1, self.args.seconds, raw=True)
            server_cpu = (process_cpu_seconds(process.pid) - cpu_before) / result.elapsed
            client_cpu = result.cpu_seconds / result.elapsed
            other = self.other_load(busy_before, result.elapsed, server_cpu + client_cpu)
            if "open" in self.args.phases:
                self.open_rows.append(
                    self.open_loop_phase("ref: raw ASGI", port, devices, 0.0, True)
                )
        finally:
            self.children.stop(process)
        return Row(
            "ref: raw ASGI POST",
            self.client_label,
            self.args.concurrency,
            result.elapsed,
            (result.requests - result.failed) / result.elapsed,
            None,
            result.p50_ms,
            result.p99_ms,
            server_cpu,
            client_cpu,
            other_cpu=other,
            notes=list(result.notes),
        )

    def ingest_phase(self, tracker: Tracker, devices: list[Device], batch: int) -> Row:
        def next_base() -> float:
            # After every stored fix: each device's fixes stay in time order across phases.
            latest = tracker.max_timestamp()  # 0.0 while the database is empty
            return (latest + 1.0) if latest else time.time() - 20 * 3600

        self.drive(tracker.port, devices, next_base(), batch, self.args.warmup)
        base = next_base()
        before = tracker.settled_count()
        pid = tracker.process.pid
        cpu_before, threads_before = process_cpu_seconds(pid), thread_cpu_seconds(pid)
        busy_before = machine_busy_seconds()
        result = self.drive(tracker.port, devices, base, batch, self.args.seconds)
        server_cpu = (process_cpu_seconds(pid) - cpu_before) / result.elapsed
        client_cpu = result.cpu_seconds / result.elapsed
        other = self.other_load(busy_before, result.elapsed, server_cpu + client_cpu)
        split = thread_split(threads_before, thread_cpu_seconds(pid), pid, result.elapsed)
        committed = tracker.settled_count() - before
        expected = (result.requests - result.failed) * batch
        notes = [f"server {split}", *result.notes]
        if committed < expected:
            notes.append(f"{expected - committed} acknowledged positions not found")
        name = "single position" if batch == 1 else f"batch of {batch}"
        return Row(
            f"tracker: {name}",
            self.client_label,
            self.args.concurrency,
            result.elapsed,
            (result.requests - result.failed) / result.elapsed,
            committed / result.elapsed,
            result.p50_ms,
            result.p99_ms,
            server_cpu,
            client_cpu,
            other_cpu=other,
            notes=notes,
        )

    def open_loop_phase(
        self, name: str, port: int, devices: list[Device], base: float, raw: bool
    ) -> Row:
        rate = self.args.open_rate
        busy_before = machine_busy_seconds()
        result = run_open_loop(
            port, devices, base, rate, self.args.seconds, self.children, self.client_cpus, raw
        )
        client_cpu = result.cpu_seconds / result.elapsed
        return Row(
            f"{name} @{rate:g}/s",
            "python",
            "open",
            result.elapsed,
            (result.requests - result.failed) / result.elapsed,
            None,
            result.p50_ms,
            result.p99_ms,
            None,
            client_cpu,
            other_cpu=self.other_load(busy_before, result.elapsed, client_cpu),
            notes=list(result.notes),
        )

    def tracker_open_loop(self, tracker: Tracker, devices: list[Device]) -> Row:
        latest = tracker.max_timestamp()
        base = (latest + 1.0) if latest else time.time() - 20 * 3600
        return self.open_loop_phase("tracker: single", tracker.port, devices, base, False)

    def run(self) -> list[Row]:
        args = self.args
        tracker = Tracker(self.workdir, self.children, self.server_cpus)
        step(f"creating an instance and {args.concurrency} devices with the CLI")
        devices = tracker.make_devices(args.concurrency)
        phases = args.phases
        rounds: list[list[Row]] = []
        for round_ in range(1, args.rounds + 1):
            self.open_rows = []
            label = f"round {round_}/{args.rounds}: " if args.rounds > 1 else ""
            rows: list[Row] = []
            if "sqlite" in phases:
                step(f"{label}reference: SQLite executemany")
                rows.append(self.sqlite_reference(round_))
                step(f"{label}floor: the same into tracker's positions table")
                rows.append(self.sqlite_reference(round_, "tracker"))
            if "raw-asgi" in phases:
                step(f"{label}reference: raw ASGI app on Hypercorn's trio worker")
                rows.append(self.raw_asgi_reference(devices))
            if {"single", "open", "batch"} & set(phases):
                step(f"{label}starting `python -m tracker serve`")
                tracker.start()
                try:
                    if "single" in phases:
                        step(f"{label}tracker: single-position requests")
                        rows.append(self.ingest_phase(tracker, devices, 1))
                    if "open" in phases:
                        step(
                            f"{label}tracker: open loop, {args.open_rate:g} single-position POSTs/s"
                        )
                        self.open_rows.append(self.tracker_open_loop(tracker, devices))
                    if "batch" in phases:
                        step(f"{label}tracker: batches of {BATCH_SIZE}")
                        rows.append(self.ingest_phase(tracker, devices, BATCH_SIZE))
                finally:
                    tracker.stop()
            rounds.append(rows + self.open_rows)
        reordered = tracker.out_of_order_inserts() if tracker.db_path.exists() else 0
        if reordered:
            self.notes.append(f"{reordered} fixes were stored after a later fix of their device")

        def rate(row: Row) -> float:
            if row.concurrency == "open":  # the best open-loop round is the lowest p99
                return -(row.p99_ms or float("inf"))
            return row.positions_per_s if row.positions_per_s is not None else row.requests_per_s

        best = [max(phase, key=rate) for phase in zip(*rounds, strict=True)]
        if args.rounds > 1:
            for phase in zip(*rounds, strict=True):
                rates = ", ".join(
                    f"p99 {-rate(row):.1f} ms" if row.concurrency == "open" else f"{rate(row):,.0f}"
                    for row in phase
                )
                self.notes.append(f"{phase[0].phase}: rounds gave {rates}; the best is shown")
        by_phase = {row.phase: row for row in best}
        raw_row = by_phase.get("ref: raw ASGI POST")
        sqlite_row = by_phase.get("ref: sqlite executemany")
        single_row = by_phase.get("tracker: single position")
        batch_row = by_phase.get(f"tracker: batch of {BATCH_SIZE}")
        floor_row = by_phase.get(FLOOR_PHASE)
        open_rows = [row for row in best if row.concurrency == "open"]
        raw_open = next((row for row in open_rows if row.phase.startswith("ref:")), None)
        tracker_open = next((row for row in open_rows if row.phase.startswith("tracker:")), None)
        if raw_row and single_row:
            single_row.ratio = (
                f"{single_row.positions_per_s / raw_row.requests_per_s:.2f}x raw ASGI"
            )
        if sqlite_row and batch_row:
            batch_row.ratio = (
                f"{batch_row.positions_per_s / sqlite_row.positions_per_s:.2f}x SQLite"
            )
        if sqlite_row and floor_row:
            floor_row.ratio = (
                f"{floor_row.positions_per_s / sqlite_row.positions_per_s:.2f}x SQLite"
            )
        if raw_open and tracker_open and raw_open.p99_ms and tracker_open.p99_ms:
            tracker_open.ratio = f"p99 {tracker_open.p99_ms / raw_open.p99_ms:.2f}x raw ASGI"
        for row in best:
            name = row.phase.split(": ", 1)[1]
            self.notes += [f"{name}: {note}" for note in row.notes]
            if row.other_cpu is not None and row.other_cpu > 0.10:
                self.notes.append(
                    f"{name}: other processes used about {row.other_cpu * 100:.0f}% of a core"
                    " during the phase; the figures may be low (a quiet machine, or --rounds 3)"
                )
        return best


def table(rows: list[Row]) -> str:
    header = [
        "phase",
        "client",
        "conc",
        "seconds",
        "requests/s",
        "positions/s",
        "p50 ms",
        "p99 ms",
        "server CPU",
        "client CPU",
        "ratio",
    ]
    body = [
        [
            r.phase,
            r.client,
            str(r.concurrency),
            f"{r.seconds:.1f}",
            fmt(r.requests_per_s, ",.0f"),
            fmt(r.positions_per_s, ",.0f"),
            fmt(r.p50_ms, ".1f"),
            fmt(r.p99_ms, ".1f"),
            fmt(None if r.server_cpu is None else r.server_cpu * 100, ".0f")
            + "%" * (r.server_cpu is not None),
            fmt(None if r.client_cpu is None else r.client_cpu * 100, ".0f")
            + "%" * (r.client_cpu is not None),
            r.ratio,
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        for line in [header, *body]
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest benchmark: committed positions/s vs raw ASGI and SQLite references.",
    )
    parser.add_argument("--seconds", type=float, help="length of each measured phase (default 10)")
    parser.add_argument(
        "--concurrency", type=int, help="client connections, one device each (default 50)"
    )
    parser.add_argument("--warmup", type=float, help="warm-up before each phase (default 2 s)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s phases, 16 connections, 1 s warm-up"
    )
    parser.add_argument(
        "--client",
        choices=["wrk", "python"],
        help="load client (default: wrk when installed, else python)",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        help="python client processes (default: one per client core)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every phase N times and show the best of each (for a shared machine)",
    )
    parser.add_argument(
        "--open-rate",
        type=float,
        default=300.0,
        help="requests/s of the open-loop latency phases (default 300)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, of {', '.join(PHASES)} (default: all)",
    )
    # Internal: the reference servers run as children of this same file.
    parser.add_argument(
        "--role", choices=["bench", "raw-asgi", "sqlite"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--schema", choices=["bare", "tracker"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.concurrency = args.concurrency or (16 if args.quick else 50)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    if args.client is None:
        args.client = "wrk" if shutil.which("wrk") else "python"
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk), or use --client python")
    if args.client_processes is None:
        args.client_processes = max(1, len(os.sched_getaffinity(0)) - 1)
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    unknown = [name for name in args.phases if name not in PHASES]
    if unknown or not args.phases:
        parser.error(f"--phases takes some of {', '.join(PHASES)}; got {args.phases}")
    if args.concurrency < 1 or args.seconds <= 0 or args.rounds < 1 or args.open_rate <= 0:
        parser.error("--concurrency, --seconds and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "raw-asgi":
        serve_raw_app(raw_http_app(201, RAW_ASGI_RESPONSE), args.port)
        return 0
    if args.role == "sqlite":
        sqlite_reference(args.db, args.seconds, args.warmup, args.schema)
        return 0

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.time()

    outcome = run_bench(
        "tracker-bench-", args.keep, lambda workdir, children: Bench(args, workdir, children)
    )
    if outcome is None:
        return 130
    bench, rows = outcome

    stack = versions() + (f", {wrk_version()}" if args.client == "wrk" else "")
    print(f"tracker ingest benchmark, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}")
    print(machine_line(bench.server_cpus, bench.client_cpus))
    print(f"stack: {stack}")
    print(f"tree: {revision()}")
    print(
        f"parameters: --seconds {args.seconds:g} --concurrency {args.concurrency} --warmup"
        f" {args.warmup:g} --rounds {args.rounds} --phases {','.join(args.phases)}, client {bench.client_label}, batch"
        f" {BATCH_SIZE}, one device per connection ({args.concurrency} devices),"
        " auth X-Ingest-Key"
    )
    print()
    print(table(rows))
    print()
    print("positions/s = rows committed in the database / elapsed; server and client CPU are")
    print("shares of one core over the phase (100% = one core busy).")
    for note in bench.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
