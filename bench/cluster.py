"""Cluster benchmark: ingest and fan-out with one and with several tracker processes.

    python bench/cluster.py                       # full run: SQLite configurations (about 3 min)
    python bench/cluster.py --quick               # smoke run: 3 s phases, 30 subscribers (about 1 min)
    python bench/cluster.py --storage postgresql  # adds PostgreSQL + Redis, 1 and 3 processes (6 min)

Issue #21: "the bench reports ingest and fan-out with one and with three processes on
the same machine, beside the embedded figures". Configurations, all measured in the
same run, each on the same database as the others of its engine (one instance of
fan-out devices, one of ingest devices, made once):

  embedded       one `tracker serve`, SQLite, no broker (the default installation)
  1 process      one `tracker serve`, SQLite, `broker.url` = a Redis server
  N processes    `tracker serve --workers N` (N processes on ports P..P+N-1), SQLite + Redis
  (--storage postgresql) the same two on PostgreSQL + Redis (`storage.url`)

The Redis server (Debian's redis-server, no persistence) and the PostgreSQL cluster
(initdb + postgres in a temp dir, fsync off, as the `postgres` user when run as root)
are started by this script on free loopback ports and stopped by their PIDs.

Two phases per configuration:

  ingest   single-position POSTs with X-Ingest-Key from Debian's wrk (a generated Lua
           script): --concurrency connections, one device and one wrk thread each,
           thread i going straight to process i mod N's port (round-robin); fixes in
           time order, unique timestamps within the last day. positions/s = rows
           committed in the database (counted after the phase) / wrk's duration; p50/p99
           of wrk's latency histogram (all processes together).
  fan-out  --subscribers /ws/realtime subscribers (one instance, each getting every
           device) spread round-robin over the processes; --rate devices each post one
           position per second (open loop, pipelined keep-alive connections from
           bench/fanout.py's sender) spread over the processes in blocks, so most
           positions cross the broker to reach most subscribers. Latency = receipt time
           - the post's send time (one clock, bench/fanout.py's receivers). A
           --warmup of positions first (not counted), then the window: it opens with
           the first send, the senders stop --tail s before it closes, so every
           position sent is in it, and "missing" = positions sent x subscribers -
           deliveries (every subscriber must get every position).

The servers (tracker processes, Redis, PostgreSQL) are pinned to the first core and
every client (wrk, the WebSocket receivers, the senders) to the others, as in
bench/fanout.py: on a 2-core machine N processes share one core, so the N-process
figures show what the broker hop costs, not how the cluster scales.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# tests/engines.py starts the engines; appended, so PYTHONPATH still picks the tracker measured.
sys.path.append(str(Path(__file__).resolve().parent.parent))

# The harness pieces every benchmark shares live in fanout.py.
import contextlib

from fanout import (  # noqa: E402
    API_PREFIX,
    C_STOP_AT,
    C_WINDOW_END,
    C_WINDOW_START,
    CONNECT_TIMEOUT_SECONDS,
    DRAIN_SECONDS,
    WRK_REPORT_LUA,
    Children,
    Collector,
    Device,
    TrackerServer,
    WsSpec,
    _raise_on_sigterm,
    fmt,
    free_port,
    http_json,
    machine_busy_seconds,
    machine_line,
    percentile,
    process_cpu_seconds,
    raise_nofile_limit,
    realtime_auth,
    receiver_process,
    render_table,
    revision,
    rss_kib,
    run_bench,
    run_wrk_process,
    sender_process,
    split,
    split_cpus,
    spread_sources,
    step,
    versions,
    wait_http_ok,
    wrk_version,
)

from tests.engines import REDIS_SERVER, PostgresServer, RedisServer, postgres_bin_dir  # noqa: E402

STORAGES = ("sqlite", "postgresql")


# -- the engines: tests/engines.py's Redis and PostgreSQL, pinned, as the bench's children ----


class RedisEngine(RedisServer):
    """redis-server on a free loopback port, no persistence, on the servers' core."""

    def __init__(self, workdir: Path, children: Children, cpus: set[int] | None):
        super().__init__(workdir / "redis", popen=functools.partial(children.popen, cpus=cpus))
        self.children = children

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def stop(self) -> None:
        if self.process is not None:
            self.children.stop(self.process)


class PostgresEngine(PostgresServer):
    """A throwaway PostgreSQL cluster on the servers' core, room for every process's pool;
    in a temp dir of its own (the bench's is closed to the postgres user)."""

    def __init__(self, children: Children, cpus: set[int] | None):
        super().__init__(
            popen=functools.partial(children.popen, cpus=cpus), settings=("max_connections=200",)
        )
        self.children = children

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process else []

    def stop(self) -> None:
        if self.process is not None:
            self.halt()  # fast shutdown
            self.children.stop(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def version(self) -> str:
        out = subprocess.run([self.postgres, "--version"], capture_output=True, text=True)
        return out.stdout.strip().replace("postgres (PostgreSQL)", "PostgreSQL")


def redis_version() -> str:
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True)
    word = next((w for w in out.stdout.split() if w.startswith("v=")), "v=?")
    return f"Redis {word[2:]}"


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # ended (a postgres backend)
            total += process_cpu_seconds(pid)
    return total


# -- a configuration: its tracker processes ----------------------------------------------


@dataclass
class Config:
    name: str
    storage: str  # "sqlite" or "postgresql"
    broker: bool
    processes: int


class Cluster:
    """One configuration's `tracker serve` (with `--workers N` when N > 1) on ports P..P+N-1."""

    def __init__(self, config: Config, env: dict[str, str], workdir: Path, bench: ClusterBench):
        self.config = config
        self.env = {**os.environ, **env}
        self.workdir = workdir
        self.children = bench.children
        self.cpus = bench.server_cpus
        self.ports = consecutive_free_ports(config.processes)
        self.log = workdir / f"server-{len(list(workdir.glob('server-*.log')))}.log"
        self.process: subprocess.Popen | None = None
        self.pids: list[int] = []
        self.env["TRACKER_SERVER_PORT"] = str(self.ports[0])
        self.env["TRACKER_SERVER_PUBLIC_URL"] = f"http://127.0.0.1:{self.ports[0]}"
        if config.broker:
            self.env["TRACKER_BROKER_URL"] = bench.redis_url()
        else:
            self.env.pop("TRACKER_BROKER_URL", None)

    def start(self) -> None:
        argv = [sys.executable, "-m", "tracker", "serve"]
        if self.config.processes > 1:
            argv += ["--workers", str(self.config.processes)]
        with open(self.log, "ab") as log:
            self.process = self.children.popen(
                argv,
                cpus=self.cpus,
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        for port in self.ports:
            wait_http_ok(port, f"{API_PREFIX}/health", self.process, self.log)
        self.pids = process_tree(self.process.pid)  # the supervisor and its workers

    def cpu_seconds(self) -> float:
        return cpu_of(self.pids)

    def rss_mib(self) -> float:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += rss_kib(pid)
        return total / 1024

    def stop(self) -> None:
        if self.process is not None:
            self.children.stop(self.process, timeout=40)
            self.process = None


def consecutive_free_ports(count: int) -> list[int]:
    import socket

    for _ in range(100):
        first = free_port()
        if first + count > 65535:
            continue
        ports = [first + i for i in range(count)]
        try:
            for port in ports[1:]:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return ports
    raise RuntimeError(f"no {count} consecutive free loopback ports")


# -- the ingest phase: wrk, each thread on one process's port ----------------------------

WRK_LUA = r"""
-- generated by bench/cluster.py: one device per wrk thread (one connection each), thread i
-- on port ports[i mod N] (round-robin over the processes); fixes in time order with
-- unique timestamps base + n * 1 ms.
local devices = {%(devices)s}
local ports = {%(ports)s}
local base = %(base).3f
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("index", threads)
  local port = ports[((threads - 1) %% #ports) + 1]
  thread.addr = wrk.lookup("127.0.0.1", tostring(port))[1]
end

local counter = 0
local path, headers

function init(args)
  local d = devices[((index - 1) %% #devices) + 1]
  path = "%(prefix)s/devices/" .. d[1] .. "/positions"
  headers = {["Content-Type"] = "application/json", ["X-Ingest-Key"] = d[2]}
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"latitude":%%.6f,"longitude":%%.6f,"timestamp":%%.3f,"speed":12.5,"heading":90.0,"accuracy":5.0}',
    52.5 + counter * 1e-6, 13.4 + counter * 1e-6, base + counter * 0.001)
  return wrk.format("POST", path, headers, body)
end
"""


@dataclass
class IngestRow:
    config: Config
    positions_per_s: float
    requests: int
    committed: int
    p50_ms: float
    p99_ms: float
    failed: int
    tracker_cpu: float  # shares of one core
    engine_cpu: float
    client_cpu: float
    machine_cpu: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_per_position_us(self) -> float:
        """The tracker processes' CPU time per committed position."""
        return self.tracker_cpu * self.seconds / max(self.committed, 1) * 1e6


@dataclass
class FanoutRow:
    config: Config
    subscribers: int
    connected: int
    seconds: float  # the senders' window (the receivers' is --tail s longer)
    sent: int
    expected: int
    delivered: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    ingest_p99_ms: float | None
    tracker_cpu: float
    engine_cpu: float
    client_cpu: float
    machine_cpu: float
    rss_mib: float
    tail: float
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return self.expected - self.delivered

    @property
    def cpu_per_delivery_us(self) -> float:
        """The tracker processes' CPU time per delivery (less noisy on a busy machine)."""
        return self.tracker_cpu * (self.seconds + self.tail) / max(self.delivered, 1) * 1e6


def busy_note(other: float) -> list[str]:
    if other > 0.10:
        return [
            f"other processes used about {other * 100:.0f}% of a core during the window;"
            " the figures may be off: run again on a quiet machine"
        ]
    return []


# -- the benchmark ------------------------------------------------------------------------


@dataclass
class Fleet:
    """One database's instances, tokens and devices (made once per engine)."""

    env: dict[str, str]
    fanout_instance: str = ""
    read_token: str = ""
    admin_token: str = ""
    ingest_instance: str = ""
    fanout_devices: list[Device] = field(default_factory=list)
    ingest_devices: list[Device] = field(default_factory=list)
    ingest_base: float = 0.0  # next ingest timestamp (in the last day)
    fanout_base: int = 0  # next fan-out timestamp (whole seconds)


class ClusterBench:
    def __init__(self, args: argparse.Namespace, workdir: Path, children: Children):
        self.args = args
        self.workdir = workdir
        self.children = children
        self.server_cpus, self.client_cpus = split_cpus()
        self.secret = os.urandom(32).hex()
        self.redis: RedisEngine | None = None
        self.postgres: PostgresEngine | None = None
        self.engine_versions: list[str] = []
        self.configs = [
            Config("embedded: 1 process, SQLite, no broker", "sqlite", False, 1),
            Config("1 process, SQLite + Redis", "sqlite", True, 1),
            Config(f"{args.processes} processes, SQLite + Redis", "sqlite", True, args.processes),
        ]
        if args.storage == "postgresql":
            self.configs += [
                Config("1 process, PostgreSQL + Redis", "postgresql", True, 1),
                Config(
                    f"{args.processes} processes, PostgreSQL + Redis",
                    "postgresql",
                    True,
                    args.processes,
                ),
            ]

    def redis_url(self) -> str:
        if self.redis is None:
            step("starting redis-server (no persistence)")
            self.redis = RedisEngine(self.workdir, self.children, self.server_cpus)
            self.redis.start()
            self.engine_versions.append(redis_version())
        return self.redis.url

    def engine_pids(self) -> list[int]:
        pids = self.redis.pids() if self.redis else []
        return pids + (self.postgres.pids() if self.postgres else [])

    def fleet(self, storage: str) -> Fleet:
        """The engine's database: instances and tokens with the CLI (devices come later)."""
        env = {
            "TRACKER_SERVER_HOST": "127.0.0.1",
            "TRACKER_AUTH_JWT_SECRET": self.secret,
            "TRACKER_STORAGE_PATH": str(self.workdir / "tracker.db"),
        }
        if storage == "postgresql":
            step("starting a throwaway PostgreSQL cluster (initdb + postgres)")
            self.postgres = PostgresEngine(self.children, self.server_cpus)
            self.postgres.start()
            self.engine_versions.append(self.postgres.version())
            self.engine_versions.append(f"psycopg {version('psycopg')}")
            env["TRACKER_STORAGE_URL"] = self.postgres.create_database("tracker")
        fleet = Fleet(env)
        cli = TrackerServer(self.workdir, self.children, None, env)
        step(f"{storage}: creating two instances and tokens with the CLI")
        fleet.fanout_instance = cli.create_instance("Fan-out fleet")
        fleet.ingest_instance = cli.create_instance("Ingest fleet")
        fleet.read_token = cli.token(fleet.fanout_instance, "read")
        fleet.admin_token = cli.token("*", "admin")
        fleet.ingest_base = time.time() - 80_000
        fleet.fanout_base = int(time.time())
        return fleet

    def add_devices(self, fleet: Fleet, port: int) -> None:
        """The devices, over the API of the first server (the CLI starts a process each)."""
        step(f"adding {self.args.rate} fan-out and {self.args.concurrency} ingest devices")

        def add(instance_id: str, index: int) -> Device:
            status, body = http_json(
                port,
                "POST",
                f"{API_PREFIX}/devices",
                {"instance_id": instance_id, "profile": {"full_name": f"Bench {index}"}},
                {"Authorization": f"Bearer {fleet.admin_token}"},
            )
            if status != 201:
                raise RuntimeError(f"adding a device answered {status}: {body}")
            return Device(body["device_token"], body["ingest_key"])

        fleet.fanout_devices = [add(fleet.fanout_instance, i) for i in range(self.args.rate)]
        fleet.ingest_devices = [add(fleet.ingest_instance, i) for i in range(self.args.concurrency)]

    def run(self) -> tuple[list[IngestRow], list[FanoutRow]]:
        ingest_rows, fanout_rows = [], []
        fleets: dict[str, Fleet] = {}
        for config in self.configs:
            if config.storage not in fleets:
                fleets[config.storage] = self.fleet(config.storage)
                fresh = True
            else:
                fresh = False
            fleet = fleets[config.storage]
            cluster = Cluster(config, fleet.env, self.workdir, self)
            step(f"{config.name}: starting tracker serve on ports {cluster.ports}")
            cluster.start()
            try:
                if fresh:
                    self.add_devices(fleet, cluster.ports[0])
                ingest_rows.append(self.ingest(cluster, fleet))
                fanout_rows.append(self.fanout(cluster, fleet))
            finally:
                cluster.stop()
        return ingest_rows, fanout_rows

    # -- ingest ----------------------------------------------------------------------

    def count_positions(self, fleet: Fleet) -> int:
        sql = "SELECT count(*) FROM positions"
        if "TRACKER_STORAGE_URL" in fleet.env:
            import psycopg

            with psycopg.connect(fleet.env["TRACKER_STORAGE_URL"]) as conn:
                return conn.execute(sql).fetchone()[0]
        with sqlite3.connect(fleet.env["TRACKER_STORAGE_PATH"], timeout=30) as conn:
            return conn.execute(sql).fetchone()[0]

    def settled_count(self, fleet: Fleet, timeout: float = 10) -> int:
        """The row count once in-flight requests have committed (two equal reads)."""
        previous = self.count_positions(fleet)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.25)
            current = self.count_positions(fleet)
            if current == previous:
                return current
            previous = current
        return previous

    def wrk(self, cluster: Cluster, fleet: Fleet, seconds: float):
        script = self.workdir / f"wrk-{time.monotonic_ns()}.lua"
        script.write_text(
            WRK_LUA
            % {
                "devices": ", ".join(
                    f"{{{json.dumps(d.token)}, {json.dumps(d.key)}}}" for d in fleet.ingest_devices
                ),
                "ports": ", ".join(str(p) for p in cluster.ports),
                "base": fleet.ingest_base,
                "prefix": API_PREFIX,
            }
            + WRK_REPORT_LUA
        )
        concurrency = self.args.concurrency
        argv = [
            shutil.which("wrk") or "wrk",
            f"-t{concurrency}",  # one connection per thread: each connection owns a device
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            f"http://127.0.0.1:{cluster.ports[0]}/",
        ]
        run = run_wrk_process(argv, seconds, self.children, self.client_cpus)
        # A connection's timestamps end before base + its requests x 1 ms.
        fleet.ingest_base += run.report["requests"] * 0.001 + 1
        return run

    def ingest(self, cluster: Cluster, fleet: Fleet) -> IngestRow:
        name = cluster.config.name
        step(f"{name}: ingest warm-up ({self.args.ingest_warmup:g} s)")
        self.wrk(cluster, fleet, self.args.ingest_warmup)
        before = self.settled_count(fleet)
        step(f"{name}: ingest, {self.args.concurrency} connections, {self.args.seconds:g} s")
        tracker0, engine0 = cluster.cpu_seconds(), cpu_of(self.engine_pids())
        busy0 = machine_busy_seconds()
        run = self.wrk(cluster, fleet, self.args.seconds)
        tracker1, engine1 = cluster.cpu_seconds(), cpu_of(self.engine_pids())
        busy1 = machine_busy_seconds()
        committed = self.settled_count(fleet) - before
        elapsed = run.report["duration_us"] / 1e6
        tracker = (tracker1 - tracker0) / elapsed
        engine = (engine1 - engine0) / elapsed
        client = run.cpu_seconds / elapsed
        machine = (busy1 - busy0) / elapsed
        notes = list(run.notes)
        answered = run.report["requests"] - run.failed
        # wrk stops with a request in flight on each connection: committed, not counted.
        if not answered <= committed <= answered + self.args.concurrency:
            notes.append(
                f"{committed:,} rows committed for {run.report['requests']:,} answers"
                f" ({run.failed:,} failed)"
            )
        return IngestRow(
            config=cluster.config,
            positions_per_s=committed / elapsed,
            requests=run.report["requests"],
            committed=committed,
            p50_ms=run.report["p50_us"] / 1000,
            p99_ms=run.report["p99_us"] / 1000,
            failed=run.failed,
            tracker_cpu=tracker,
            engine_cpu=engine,
            client_cpu=client,
            machine_cpu=machine,
            seconds=elapsed,
            notes=notes + busy_note(machine - tracker - engine - client),
        )

    # -- fan-out ---------------------------------------------------------------------

    def senders(
        self,
        cluster: Cluster,
        devices: list[Device],
        base: int,
        sent_times,
        max_seq: int,
        start_at: float,
        window: tuple[float, float],
        collector: Collector,
    ) -> list:
        """One sender process per tracker process, each posting a block of the devices
        to its port; each writes its send times into its block of sent_times."""
        processes = []
        blocks = split_blocks(len(devices), len(cluster.ports))
        for k, (port, (first, count)) in enumerate(zip(cluster.ports, blocks, strict=True)):
            if not count:
                continue
            view = (ctypes.c_double * (count * max_seq)).from_buffer(
                sent_times, first * max_seq * ctypes.sizeof(ctypes.c_double)
            )
            offset = k / (len(cluster.ports) * count)  # the senders' sends interleave
            processes.append(
                self.children.spawn(
                    sender_process,
                    (
                        port,
                        "tracker",
                        devices[first : first + count],
                        1.0,
                        base,
                        view,
                        max_seq,
                        start_at + offset,
                        window,
                        False,  # open loop
                        collector.queue,
                        self.client_cpus,
                    ),
                )
            )
        return processes

    def fanout(self, cluster: Cluster, fleet: Fleet) -> FanoutRow:
        args = self.args
        name = cluster.config.name
        devices = fleet.fanout_devices
        warm = int(args.warmup)  # warm-up positions per device (1 Hz)
        max_seq = int(args.seconds) + 2
        base = fleet.fanout_base
        measured_base = base + warm  # the receivers see warm-up positions as before the phase
        fleet.fanout_base = measured_base + max_seq + 1
        ctx = multiprocessing.get_context("fork")
        sent_times = ctx.RawArray("d", len(devices) * max_seq)
        scratch = ctx.RawArray("d", len(devices) * (warm + 2))
        control = ctx.RawArray("d", 3)
        total = args.warmup + args.seconds + args.tail + 10
        control[C_STOP_AT] = time.time() + CONNECT_TIMEOUT_SECONDS + total + 60  # a hard bound
        token_index = {d.token: i for i, d in enumerate(devices)}
        auth = realtime_auth(fleet.read_token, fleet.fanout_instance)
        specs = spread_sources(
            [WsSpec(f"{API_PREFIX}/ws/realtime", auth) for _ in range(args.subscribers)]
        )
        n = len(cluster.ports)
        per_port = max(1, args.client_processes // n)
        collector = Collector()
        receivers = [
            self.children.spawn(
                receiver_process,
                (
                    port,
                    chunk,
                    "realtime",
                    token_index,
                    sent_times,
                    max_seq,
                    measured_base,
                    control,
                    collector.queue,
                    self.client_cpus,
                    f"receiver-{k}-{i}",
                ),
            )
            for k, port in enumerate(cluster.ports)
            for i, chunk in enumerate(split(specs[k::n], per_port))
        ]
        processes = list(receivers)
        notes: list[str] = []
        try:
            step(f"{name}: opening {len(specs)} /ws/realtime connections over {n} process(es)")
            ready = collector.gather(
                "ready", len(receivers), time.time() + CONNECT_TIMEOUT_SECONDS + 30, processes
            )
            connected = sum(r[2] for r in ready)
            if connected < len(specs):
                errors = Counter()
                for r in ready:
                    errors.update(r[4])
                notes.append(f"{len(specs) - connected} connections failed: {dict(errors)}")
            if warm:
                step(f"{name}: fan-out warm-up, {len(devices)} positions/s for {warm} s")
                start_at = time.time() + 0.5
                warmup = self.senders(
                    cluster, devices, base, scratch, warm + 2, start_at,
                    (start_at, start_at + warm), collector,
                )  # fmt: skip
                processes += warmup
                collector.gather("sender", len(warmup), start_at + warm + 60, processes)
                time.sleep(0.5)  # the last warm-up deliveries
            start_at = time.time() + 0.5
            window = (start_at, start_at + args.seconds + args.tail)
            send_window = (start_at, start_at + args.seconds)
            control[C_WINDOW_START], control[C_WINDOW_END] = window
            control[C_STOP_AT] = window[1] + 0.2
            step(
                f"{name}: fan-out, {len(devices)} positions/s for {args.seconds:g} s"
                f" (+{args.tail:g} s for the last deliveries)"
            )
            senders = self.senders(
                cluster, devices, measured_base, sent_times, max_seq, start_at, send_window,
                collector,
            )  # fmt: skip
            processes += senders
            time.sleep(max(0.0, window[0] - time.time()))
            tracker0, engine0 = cluster.cpu_seconds(), cpu_of(self.engine_pids())
            busy0 = machine_busy_seconds()
            time.sleep(max(0.0, window[1] - time.time()))
            tracker1, engine1 = cluster.cpu_seconds(), cpu_of(self.engine_pids())
            busy1 = machine_busy_seconds()
            rss = cluster.rss_mib()
            reports = collector.gather("sender", len(senders), window[1] + 60, processes)
            done = collector.gather("done", len(receivers), window[1] + 60, processes)
        finally:
            control[C_STOP_AT] = 0.0  # every receiver stops at its next poll
            for process in processes:
                process.join(10)
                self.children.stop(process)
        seconds = window[1] - window[0]
        sent = sum(1 for t in sent_times if window[0] <= t < window[1])
        latencies = sorted(x for r in done for x in r[2]["latencies"])
        delivered = sum(r[2]["in_window"] for r in done)
        closes, errors, sender_counts = Counter(), Counter(), Counter()
        for r in done:
            closes.update(r[2]["closes"])
            errors.update(r[2]["errors"])
        for r in reports:
            sender_counts.update(r[2]["counts"])
        if closes:
            notes.append(f"connections closed by the server during the run: {dict(closes)}")
        if errors:
            notes.append(f"errors received: {dict(errors)}")
        unmapped = sum(r[2]["unmapped"] for r in done)
        if unmapped:
            notes.append(f"{unmapped} positions could not be matched to a send time")
        bad = {k: v for k, v in sender_counts.items() if k not in ("ok", "sent in window")}
        if bad:
            notes.append(f"sender: {bad}")
        ingest = sorted(x for r in reports for x in r[2]["latencies"])
        client = (
            sum(r[2]["cpu"] for r in done)
            + sum(r[2]["cpu"] for r in reports) * seconds / (window[1] - start_at + DRAIN_SECONDS)
        ) / seconds
        tracker = (tracker1 - tracker0) / seconds
        engine = (engine1 - engine0) / seconds
        machine = (busy1 - busy0) / seconds

        def ms(value: float | None) -> float | None:
            return None if value is None else value * 1000

        return FanoutRow(
            config=cluster.config,
            subscribers=len(specs),
            connected=connected,
            seconds=send_window[1] - send_window[0],
            sent=sent,
            expected=sent * connected,
            delivered=delivered,
            p50_ms=ms(percentile(latencies, 50)),
            p99_ms=ms(percentile(latencies, 99)),
            max_ms=ms(latencies[-1] if latencies else None),
            ingest_p99_ms=ms(percentile(ingest, 99)),
            tracker_cpu=tracker,
            engine_cpu=engine,
            client_cpu=client,
            machine_cpu=machine,
            rss_mib=rss,
            tail=args.tail,
            notes=notes + busy_note(machine - tracker - engine - client),
        )


def split_blocks(items: int, parts: int) -> list[tuple[int, int]]:
    """(first, count) of parts contiguous blocks covering range(items), sizes within one."""
    blocks, first = [], 0
    for k in range(parts):
        count = items // parts + (1 if k < items % parts else 0)
        blocks.append((first, count))
        first += count
    return blocks


# -- output -------------------------------------------------------------------------------


def percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value is not None and reference else "-"


def ingest_table(rows: list[IngestRow]) -> str:
    reference = rows[0]
    header = [
        "configuration",
        "positions/s",
        "x embedded",
        "p50 ms",
        "p99 ms",
        "failed",
        "tracker CPU",
        "CPU us/position",
        "Redis/PG CPU",
        "client CPU",
    ]
    body = [
        [
            r.config.name,
            f"{r.positions_per_s:,.0f}",
            ratio(r.positions_per_s, reference.positions_per_s),
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.failed:,}",
            percent(r.tracker_cpu),
            f"{r.cpu_per_position_us:,.0f}",
            percent(r.engine_cpu) if r.config.broker else "-",
            percent(r.client_cpu),
        ]
        for r in rows
    ]
    return render_table(header, body)


def fanout_table(rows: list[FanoutRow]) -> str:
    reference = rows[0]
    header = [
        "configuration",
        "subscribers",
        "positions/s in",
        "deliveries/s",
        "missing",
        "p50 ms",
        "p99 ms",
        "p99 x embedded",
        "max ms",
        "POST p99 ms",
        "tracker CPU",
        "CPU us/delivery",
        "Redis/PG CPU",
        "RSS MiB",
    ]
    body = [
        [
            r.config.name,
            f"{r.connected:,}" + ("" if r.connected == r.subscribers else f"/{r.subscribers:,}"),
            f"{r.sent / r.seconds:,.1f}",
            f"{r.delivered / r.seconds:,.0f}",
            f"{r.missing:,}" if r.missing >= 0 else f"{r.missing:,} (duplicates)",
            fmt(r.p50_ms, ".1f"),
            fmt(r.p99_ms, ".1f"),
            ratio(r.p99_ms, reference.p99_ms),
            fmt(r.max_ms, ".1f"),
            fmt(r.ingest_p99_ms, ".1f"),
            percent(r.tracker_cpu),
            f"{r.cpu_per_delivery_us:,.0f}",
            percent(r.engine_cpu) if r.config.broker else "-",
            f"{r.rss_mib:.0f}",
        ]
        for r in rows
    ]
    return render_table(header, body)


# -- command line -------------------------------------------------------------------------


def tracker_source() -> str:
    """Where `tracker` is imported from, when that is not this tree (PYTHONPATH)."""
    import tracker

    source = Path(tracker.__file__).resolve().parent.parent
    root = Path(__file__).resolve().parent.parent
    return "" if source == root else f" (but tracker imported from {source})"


def postgres_engine_present() -> bool:
    """Whether this tree's tracker has the PostgreSQL engine (`storage.url`)."""
    from tracker.config import StorageSettings

    return "url" in StorageSettings.model_fields


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ingest and fan-out with one and with several tracker processes"
        " (Redis broker, SQLite or PostgreSQL), beside the embedded single process.",
    )
    parser.add_argument(
        "--storage",
        choices=STORAGES,
        default="sqlite",
        help="sqlite (default): embedded, 1 process + Redis, N processes + Redis, all on"
        " SQLite; postgresql: also 1 and N processes on PostgreSQL + Redis",
    )
    parser.add_argument("--processes", type=int, default=3, help="processes of the cluster (3)")
    parser.add_argument("--quick", action="store_true", help="smoke run (under 2 minutes)")
    parser.add_argument("--seconds", type=float, help="measured window per phase (20; quick 3)")
    parser.add_argument("--warmup", type=float, help="fan-out warm-up seconds (5; quick 1)")
    parser.add_argument("--ingest-warmup", type=float, help="ingest warm-up seconds (2; quick 1)")
    parser.add_argument(
        "--tail", type=float, default=2.0, help="fan-out: seconds after the last send (2)"
    )
    parser.add_argument(
        "--subscribers", type=int, help="/ws/realtime subscribers, spread over processes (100)"
    )
    parser.add_argument(
        "--rate",
        type=int,
        default=50,
        help="fan-out: positions/s posted, one device per position/s at 1 Hz (50)",
    )
    parser.add_argument(
        "--concurrency", type=int, help="ingest: wrk connections (48; quick 12), one device each"
    )
    parser.add_argument(
        "--client-processes", type=int, default=3, help="WebSocket receiver processes (3)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory and logs")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 5.0)
    args.ingest_warmup = args.ingest_warmup or (1.0 if args.quick else 2.0)
    args.subscribers = args.subscribers or (30 if args.quick else 100)
    args.concurrency = args.concurrency or (12 if args.quick else 48)
    counts = (args.seconds, args.subscribers, args.rate, args.concurrency, args.client_processes)
    if min(counts) <= 0 or args.processes < 2 or args.tail < 0 or args.warmup < 0:
        parser.error(
            "--seconds, --subscribers, --rate, --concurrency, --client-processes must be > 0,"
            " --processes >= 2"
        )
    if not shutil.which("wrk"):
        parser.error("needs Debian's wrk (apt-get install -y wrk)")
    if not os.access(REDIS_SERVER, os.X_OK):
        parser.error("needs Debian's redis-server (apt-get install -y redis-server)")
    if args.storage == "postgresql":
        if not postgres_engine_present():
            parser.error(
                "--storage postgresql needs the PostgreSQL engine (storage.url, issue #21),"
                " which this tree's tracker does not have yet"
            )
        if postgres_bin_dir() is None:
            parser.error("--storage postgresql needs Debian's postgresql package")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    nofile = raise_nofile_limit()
    started = time.time()
    load = os.getloadavg()
    engines: list = []

    def make(workdir: Path, children: Children) -> ClusterBench:
        bench = ClusterBench(args, workdir, children)
        engines.append(bench)
        return bench

    try:
        outcome = run_bench("tracker-bench-cluster-", args.keep, make)
    finally:
        for bench in engines:  # the PostgreSQL dir is outside the bench's temp dir
            if bench.postgres is not None:
                shutil.rmtree(bench.postgres.workdir, ignore_errors=True)
    if outcome is None:
        return 130
    bench, (ingest_rows, fanout_rows) = outcome

    print(f"tracker cluster benchmark, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}")
    print(machine_line(bench.server_cpus, bench.client_cpus))
    print(f"stack: {versions()}, {', '.join(bench.engine_versions)}, {wrk_version()}")
    print(f"tree: {revision()}{tracker_source()}")
    print("load average at the start (1, 5, 15 min): " + " ".join(f"{x:.2f}" for x in load))
    print(
        f"parameters: --storage {args.storage} --processes {args.processes} --seconds"
        f" {args.seconds:g} --warmup {args.warmup:g} --ingest-warmup {args.ingest_warmup:g}"
        f" --tail {args.tail:g} --subscribers {args.subscribers} --rate {args.rate}"
        f" --concurrency {args.concurrency} --client-processes {args.client_processes};"
        f" open-files limit {nofile}"
    )
    print()
    print(
        f"ingest: single-position POSTs (X-Ingest-Key) from wrk, {args.concurrency} connections,"
        " one device each, round-robin over the processes' ports; positions/s = rows committed"
    )
    print(ingest_table(ingest_rows))
    print()
    print(
        f"fan-out: {args.subscribers} /ws/realtime subscribers round-robin over the processes,"
        f" {args.rate} devices x 1 Hz posted in blocks through the processes (open loop);"
        " latency = receipt - send time; missing = sent x subscribers - deliveries"
    )
    print(fanout_table(fanout_rows))
    print()
    if bench.server_cpus and len(bench.server_cpus) == 1:
        print(
            f"note: every server (tracker processes, Redis, PostgreSQL) is pinned to CPU"
            f" {sorted(bench.server_cpus)[0]}: the {args.processes} processes share one core,"
            " so their figures show the cost of the broker hop, not scaling."
        )
    print(
        "note: CPU columns are shares of one core (100% = one core busy); tracker CPU sums"
        " every tracker process (and the --workers supervisor); CPU us/position and"
        " us/delivery = their CPU time in the window / committed positions or deliveries"
        " (less noisy than the rates on a busy machine)."
    )
    for row in [*ingest_rows, *fanout_rows]:
        kind = "ingest" if isinstance(row, IngestRow) else "fan-out"
        for note in row.notes:
            print(f"note: {row.config.name}, {kind}: {note}")
    missing = sum(max(0, r.missing) for r in fanout_rows)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
