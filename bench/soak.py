"""Soak: the server's memory (and ingest latency) over a long run of connection churn.

    python bench/soak.py                               # issue #15: 60 min, 50 WS opens/s, 100 POSTs/s
    python bench/soak.py --minutes 10                  # a short run: does RSS creep?
    python bench/soak.py --post-rate 250 --viewers 250 --ws-rate 0   # issue #20's shape
    python bench/soak.py --minutes 10 --trace /tmp/trace   # tracemalloc + gc counts in the server

What runs (loopback only, bounded by --minutes, every child stopped at the end):

  server   `python -m tracker serve` on a fresh database in a temp directory (the CLI
           makes an instance, --devices devices and a read token), pinned to the first
           core. The debug options run the same server under a small wrapper in this
           file (`--serve-wrapped`, `tracker serve` in-process): --memlog FILE logs
           every 10 s where the memory is (glibc's heap in use and free, SQLite's own
           count, Python's blocks); --malloc-trim N calls malloc_trim(0) every N s;
           --trace DIR starts tracemalloc and writes, every minute, a snapshot and the
           live objects counted by type (`--trace-diff DIR` prints what grew most).
  churn    --ws-rate `/ws/realtime` WebSockets opened per second, each from one of
           127.0.0.10-209: handshake, authenticate with the read token, wait for
           `welcome` and --ws-messages more messages (the snapshot, live positions),
           then close. --abrupt of them (a fraction) go without a close frame: half
           a plain TCP close (FIN), half a reset (SO_LINGER 0), as clients that
           vanish do. Each connection is bounded (10 s).
  ingest   --post-rate single-position POSTs per second (native JSON, X-Ingest-Key)
           spread evenly over the --devices devices, each on its own keep-alive
           connection, closed loop (a device sends its next fix when the previous
           was answered, on schedule while the server keeps up). Round trips are
           kept per minute (p50/p99).
  viewers  --viewers long-lived `/share/{token}/live` viewers (one share session per
           device, viewers spread over them), answering the server's pings. A
           viewer whose connection ends counts as an error and reconnects.

The client tasks run in one trio process pinned to the other core(s). Every
--sample-seconds the parent reads the server's VmRSS (/proc/PID/status) and the
anonymous memory of /proc/PID/smaps_rollup; it prints one row per minute. At the end:
RSS after warm-up (--warmup-minutes), at the start of the last --window-minutes
(default: the last half, at most 30), and at the end, with the slopes (least squares,
MiB/min), and three verdicts (issue #20), each PASS or FAIL (the exit status is 0 only
when all pass):

  errors     WebSocket, POST and viewer errors of the client, and ERROR lines of the
             server log: none.
  RSS drift  RSS at the end against RSS after warm-up: at most --max-growth (5) %.
  p99        POST p99 of the last 5 minutes against the first 5: at most
             --max-p99-ratio (1.2) x.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import (  # noqa: E402
    API_PREFIX,
    SOURCE_ADDRESSES,
    Children,
    Device,
    TrackerServer,
    _raise_on_sigterm,
    client_frame,
    http_json,
    in_workdir,
    machine_line,
    percentile,
    process_cpu_seconds,
    realtime_auth,
    render_table,
    revision,
    rss_kib,
    split_cpus,
    step,
    versions,
    wait_http_ok,
)

SOAK_FILE = Path(__file__).resolve()
WS_CONNECTION_TIMEOUT_SECONDS = 10.0
CLOSE_WAIT_SECONDS = 2.0
MIB = 1024  # KiB
PONG = b'{"type":"pong"}'

# Counters shared by the client process and the parent (doubles, cumulative).
COUNTERS = (
    "ws_opened",
    "ws_welcomed",
    "ws_closed_clean",
    "ws_abrupt",
    "ws_errors",
    "posted",
    "post_errors",
    "viewer_messages",
    "viewer_errors",
)
K = {name: index for index, name in enumerate(COUNTERS)}


# -- the server, plain or traced -------------------------------------------------


class SoakServer(TrackerServer):
    """The harness's server; with trace_dir, run under this file's tracemalloc wrapper."""

    def __init__(
        self,
        *args,
        trace_dir: Path | None = None,
        trim_seconds: float = 0,
        memlog: Path | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.trace_dir = trace_dir
        self.trim_seconds = trim_seconds
        self.memlog = memlog

    def start(self) -> None:
        argv = [sys.executable, "-m", "tracker", "serve"]
        if self.trace_dir is not None or self.trim_seconds or self.memlog:
            argv = [sys.executable, str(SOAK_FILE), "--serve-wrapped"]
            self.env["SOAK_TRACE_DIR"] = str(self.trace_dir or "")
            self.env["SOAK_MALLOC_TRIM_SECONDS"] = str(self.trim_seconds)
            self.env["SOAK_MEMLOG"] = str(self.memlog or "")
        with open(self.log, "ab") as log:
            self.process = self.children.popen(
                argv,
                cpus=self.cpus,
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_http_ok(self.port, f"{API_PREFIX}/health", self.process, self.log)


def serve_wrapped(trace_dir: Path | None, interval: float, trim_seconds: float) -> None:
    """`tracker serve` for a debug run: with trace_dir, tracemalloc on and, every interval,
    a snapshot and the live objects by type written there (tracemalloc slows the server);
    with trim_seconds, glibc's malloc_trim(0) that often (is the growth free memory the
    allocator keeps, or live memory?)."""
    import tracemalloc

    from tracker.cli import main as tracker_main

    started = time.time()

    def record() -> None:
        index = 0
        while True:
            time.sleep(interval)
            index += 1
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(str(trace_dir / f"snap-{index:03d}.pickle"))
            counts = Counter(type(o).__qualname__ for o in gc.get_objects())
            with open(trace_dir / "objects.jsonl", "a") as out:
                out.write(
                    json.dumps(
                        {
                            "t": round(time.time() - started),
                            "index": index,
                            "traced_kib": tracemalloc.get_traced_memory()[0] // 1024,
                            "rss_kib": rss_kib(os.getpid()),
                            "top": counts.most_common(40),
                        }
                    )
                    + "\n"
                )

    def trim() -> None:
        libc = ctypes.CDLL("libc.so.6")
        while True:
            time.sleep(trim_seconds)
            libc.malloc_trim(0)

    def memlog() -> None:
        """Where the memory is: glibc's heap in use and free (mallinfo2), SQLite's own
        count (sqlite3_memory_used), Python's allocated blocks, RSS and anonymous RSS."""
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        sqlite = ctypes.CDLL(_sqlite_library())
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
        sqlite.sqlite3_memory_highwater.restype = ctypes.c_int64
        sqlite.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
        while True:
            time.sleep(10)
            info = libc.mallinfo2()
            line = {
                "t": round(time.time() - started),
                "rss_kib": rss_kib(os.getpid()),
                "anon_kib": smaps_anon_kib(os.getpid()),
                "malloc_in_use_kib": info.uordblks // 1024,
                "malloc_free_kib": info.fordblks // 1024,
                "malloc_mmap_kib": info.hblkhd // 1024,
                "sqlite_kib": sqlite.sqlite3_memory_used() // 1024,
                "sqlite_highwater_kib": sqlite.sqlite3_memory_highwater(0) // 1024,
                "python_blocks": sys.getallocatedblocks(),
                "threads": threading.active_count(),
            }
            with open(memlog_path, "a") as out:
                out.write(json.dumps(line) + "\n")

    memlog_path = os.environ.get("SOAK_MEMLOG")
    if memlog_path:
        threading.Thread(target=memlog, daemon=True).start()
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        tracemalloc.start(int(os.environ.get("SOAK_TRACE_FRAMES", "4")))
        threading.Thread(target=record, daemon=True).start()
    if trim_seconds:
        threading.Thread(target=trim, daemon=True).start()
    tracker_main(["serve"])


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _sqlite_library() -> str:
    """The libsqlite3 the sqlite3 module is linked with (from /proc/self/maps)."""
    import sqlite3  # noqa: F401  (loads the library)

    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libsqlite3" in line:
            return line.split()[-1]
    return "libsqlite3.so.0"


def trace_diff(trace_dir: Path, first: int, last: int, count: int = 25) -> None:
    """The allocation sites that grew most between two snapshots of a traced run."""
    import tracemalloc

    snaps = sorted(trace_dir.glob("snap-*.pickle"))
    a = tracemalloc.Snapshot.load(str(snaps[first - 1 if first > 0 else first]))
    b = tracemalloc.Snapshot.load(str(snaps[last - 1 if last > 0 else last]))
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    a, b = a.filter_traces(filters), b.filter_traces(filters)
    for key in ("lineno", "traceback"):
        print(f"-- top {count} by {key} --")
        for stat in b.compare_to(a, key)[: count if key == "lineno" else 8]:
            print(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks")
            for line in stat.traceback.format()[-(1 if key == "lineno" else 8) :]:
                print("    " + line)
    lines = (trace_dir / "objects.jsonl").read_text().splitlines()
    if lines:
        one, two = (
            json.loads(lines[first - 1 if first > 0 else first]),
            json.loads(lines[last - 1 if last > 0 else last]),
        )
        before = dict(one["top"])
        print(f"-- objects by type, t={one['t']} s -> t={two['t']} s --")
        for name, n in two["top"]:
            if n != before.get(name):
                print(f"{name:40s} {before.get(name, 0):>9,} -> {n:>9,}")
        print(f"traced {one['traced_kib']:,} -> {two['traced_kib']:,} KiB;"
              f" RSS {one['rss_kib']:,} -> {two['rss_kib']:,} KiB")  # fmt: skip


# -- the client process ------------------------------------------------------------


def _server_frames(buf: bytearray):
    """Whole server frames (unmasked) off the front of buf: (opcode, payload) each."""
    while len(buf) >= 2:
        length, head = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return
            length, head = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return
            length, head = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < head + length:
            return
        opcode, payload = buf[0] & 0x0F, bytes(buf[head : head + length])
        del buf[: head + length]
        yield opcode, payload


def client_process(
    port: int,
    args: argparse.Namespace,
    realtime_auth: bytes,
    devices: list[Device],
    share_paths: list[str],
    counters,
    latencies_out,
    start_at: float,
    stop_at: float,
    cpus: set[int] | None,
) -> None:
    """Churn, ingest and viewers (see the module doc) until stop_at."""
    import trio

    if cpus:
        os.sched_setaffinity(0, cpus)
    host = f"127.0.0.1:{port}".encode()
    errors: Counter = Counter()

    def bump(name: str, n: float = 1) -> None:
        counters[K[name]] += n

    async def handshake(path: str, source: str):
        stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        await stream.send_all(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )  # fmt: skip
        buf = bytearray()
        while (end := buf.find(b"\r\n\r\n")) < 0:
            data = await stream.receive_some(65536)
            if not data:
                raise ConnectionError("EOF in handshake")
            buf += data
        if buf[9:12] != b"101":
            raise ConnectionError(f"handshake HTTP {bytes(buf[9:12]).decode()}")
        del buf[: end + 4]
        return stream, buf

    async def churn_one(index: int) -> None:
        source = f"127.0.0.{10 + index % SOURCE_ADDRESSES}"
        stream = None
        try:
            with trio.fail_after(WS_CONNECTION_TIMEOUT_SECONDS):
                stream, buf = await handshake(f"{API_PREFIX}/ws/realtime", source)
                bump("ws_opened")
                await stream.send_all(client_frame(realtime_auth))
                seen, welcomed = 0, False
                while not welcomed or seen < args.ws_messages:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise ConnectionError("EOF before the messages")
                    buf += data
                    for opcode, payload in _server_frames(buf):
                        if opcode == 8:
                            raise ConnectionError(f"closed {payload[:2].hex()} early")
                        if opcode != 1:
                            continue
                        if payload.startswith(b'{"type":"welcome"'):
                            welcomed = True
                            bump("ws_welcomed")
                        elif payload.startswith(b'{"type":"error"'):
                            raise ConnectionError(payload[:80].decode())
                        elif welcomed:
                            seen += 1
                abrupt = (index * 0.6180339887) % 1.0 < args.abrupt
                if abrupt:
                    if index % 2:
                        stream.socket.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    bump("ws_abrupt")
                    return
                await stream.send_all(client_frame((1000).to_bytes(2, "big"), opcode=8))
                with trio.move_on_after(CLOSE_WAIT_SECONDS):
                    while True:
                        data = await stream.receive_some(65536)
                        if not data:
                            break
                        buf += data
                        if any(opcode == 8 for opcode, _ in _server_frames(buf)):
                            break
                bump("ws_closed_clean")
        except (OSError, ConnectionError, trio.BrokenResourceError, trio.TooSlowError) as error:
            bump("ws_errors")
            errors[f"ws: {error.__class__.__name__}: {str(error)[:60]}"] += 1
        finally:
            if stream is not None:
                stream.socket.close()

    async def churn() -> None:
        if args.ws_rate <= 0:
            return
        async with trio.open_nursery() as nursery:
            index = 0
            while True:
                at = start_at + index / args.ws_rate
                if at >= stop_at:
                    break
                await trio.sleep_until(trio.current_time() + max(0.0, at - time.time()))
                nursery.start_soon(churn_one, index)
                index += 1

    async def device_sender(number: int, device: Device, period: float, minute_lat) -> None:
        from fanout import KeepAliveClient

        client = KeepAliveClient(port)
        path = f"{API_PREFIX}/devices/{device.token}/positions"
        next_at = start_at + period * number / len(devices)
        sequence = 0
        try:
            while next_at < stop_at:
                await trio.sleep_until(trio.current_time() + max(0.0, next_at - time.time()))
                next_at += period
                sequence += 1
                body = json.dumps(
                    {
                        "latitude": round(51.5 + (sequence % 1000) * 1e-4, 6),
                        "longitude": round(-0.12 + number * 1e-3, 6),
                        "timestamp": round(time.time(), 3),
                        "speed": 10.0,
                    }
                ).encode()
                request = (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nX-Ingest-Key: {device.key}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                sent = time.perf_counter()
                try:
                    status = await client.exchange(request)
                except OSError:  # the server is gone (at the end) or refused the connection
                    status = None
                    await trio.sleep(period)
                minute_lat.append(time.perf_counter() - sent)
                if status in (200, 201, 202):
                    bump("posted")
                else:
                    bump("post_errors")
                    errors[f"POST: {status}"] += 1
        finally:
            await client.aclose()

    async def viewer(index: int, path: str) -> None:
        source = f"127.0.0.{10 + (index * 7) % SOURCE_ADDRESSES}"
        while time.time() < stop_at:
            stream = None
            try:
                stream, buf = await handshake(path, source)
                while True:
                    for opcode, payload in _server_frames(buf):
                        if opcode == 8:
                            raise ConnectionError(f"closed {payload[:2].hex()}")
                        if opcode == 9:
                            await stream.send_all(client_frame(payload, opcode=10))
                        elif payload.startswith(b'{"type":"ping"'):
                            await stream.send_all(client_frame(PONG))
                        else:
                            bump("viewer_messages")
                    data = await stream.receive_some(65536)
                    if not data:
                        raise ConnectionError("EOF")
                    buf += data
            except (OSError, ConnectionError, trio.BrokenResourceError) as error:
                if time.time() < stop_at - 1:
                    bump("viewer_errors")
                    errors[f"viewer: {error.__class__.__name__}: {str(error)[:60]}"] += 1
                    await trio.sleep(1.0)
            finally:
                if stream is not None:
                    stream.socket.close()

    async def main() -> None:
        window: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = trio.current_time() + (stop_at - time.time()) + 15

            async def report() -> None:
                while True:
                    await trio.sleep(1.0)
                    latencies_out.put(("latencies", time.time(), window[:]))
                    window.clear()

            nursery.start_soon(report)
            for index, path in enumerate(share_paths):
                nursery.start_soon(viewer, index, path)
            async with trio.open_nursery() as load:
                load.start_soon(churn)
                if args.post_rate > 0:
                    period = len(devices) / args.post_rate
                    for number, device in enumerate(devices):
                        load.start_soon(device_sender, number, device, period, window)
                # viewers run until stop_at on their own; the load nursery ends at stop_at
            await trio.sleep_until(trio.current_time() + max(0.0, stop_at - time.time()))
            nursery.cancel_scope.cancel()
        latencies_out.put(("latencies", time.time(), window[:]))
        latencies_out.put(("done", dict(errors)))

    trio.run(main)


# -- the parent: set-up, sampling, the table -------------------------------------------


def smaps_anon_kib(pid: int) -> int:
    """Anonymous memory of the process (heap, arenas), KiB, from /proc/PID/smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    if not var:
        return 0.0
    cov = sum((t - mx) * (v - my) for t, v in samples)
    return cov / var * 60 / MIB


def run(args: argparse.Namespace, workdir: Path, children: Children) -> dict:
    server_cpus, client_cpus = split_cpus()
    env = {}
    if args.viewers:
        env["TRACKER_SHARING_RATE_LIMIT_PER_MINUTE"] = "100000"
    for item in args.server_env:
        name, _, value = item.partition("=")
        env[name] = value
    trace_dir = Path(args.trace).resolve() if args.trace else None
    server = SoakServer(
        workdir,
        children,
        server_cpus,
        env=env,
        trace_dir=trace_dir,
        trim_seconds=args.malloc_trim,
        memlog=Path(args.memlog).resolve() if args.memlog else None,
    )
    step(f"creating an instance, {args.devices} devices and tokens with the CLI")
    instance_id = server.create_instance("Soak fleet")
    devices = server.add_devices(instance_id, args.devices)
    read_token = server.token(instance_id, "read")
    admin_token = server.token(instance_id, "admin") if args.viewers else None
    server.start()
    info: dict = {"server_cpus": server_cpus, "client_cpus": client_cpus, "env": env}
    try:
        now = time.time()
        for index, device in enumerate(devices):
            server.ingest_one(device, now - 60, 51.5 + index * 1e-3)
        share_paths = []
        if args.viewers:
            tokens = []
            for device in devices[: min(len(devices), args.viewers)]:
                status, body = http_json(
                    server.port,
                    "POST",
                    f"{API_PREFIX}/sharing/sessions",
                    {"device_token": device.token, "expires_in_hours": 4},
                    {"Authorization": f"Bearer {admin_token}"},
                )
                if status != 201:
                    raise RuntimeError(f"creating a share session answered {status}: {body}")
                tokens.append(body["share_token"])
            share_paths = [
                f"{API_PREFIX}/share/{tokens[i % len(tokens)]}/live" for i in range(args.viewers)
            ]
        auth = realtime_auth(read_token, instance_id)
        ctx = multiprocessing.get_context("fork")
        counters = ctx.RawArray("d", len(COUNTERS))
        queue = ctx.Queue()
        start_at = time.time() + 1.0
        stop_at = start_at + args.minutes * 60
        step(
            f"soak for {args.minutes:g} min: {args.ws_rate:g} WebSocket opens/s,"
            f" {args.post_rate:g} POSTs/s over {args.devices} devices, {args.viewers} viewers;"
            f" server pid {server.pid}"
        )
        client = children.spawn(
            client_process,
            (server.port, args, auth, devices, share_paths, counters, queue, start_at, stop_at,
             client_cpus),
        )  # fmt: skip
        info["rss_start"] = rss_kib(server.pid)
        samples: list[tuple[float, int, int]] = []  # (seconds since start, RSS, anonymous)
        minutes: list[dict] = []
        latencies: list[float] = []
        previous = [0.0] * len(COUNTERS)
        client_errors: dict = {}
        cpu_before = process_cpu_seconds(server.pid)
        sample_count, minute_count = 1, 1  # (multiples, so the last ones fall on stop_at)
        next_sample = start_at + args.sample_seconds
        minute_end = start_at + 60.0
        while True:
            now = time.time()
            while True:  # drain the client's reports
                try:
                    item = queue.get(timeout=max(0.05, min(next_sample, minute_end, stop_at) - now))
                except Exception:
                    break
                if item[0] == "latencies":
                    latencies += item[2]
                elif item[0] == "done":
                    client_errors = item[1]
                now = time.time()
                if now >= min(next_sample, minute_end, stop_at):
                    break
            if server.process.poll() is not None:
                raise RuntimeError(f"the server exited with {server.process.returncode}")
            now = time.time()
            if now >= next_sample:
                samples.append((now - start_at, rss_kib(server.pid), smaps_anon_kib(server.pid)))
                sample_count += 1
                next_sample = start_at + sample_count * args.sample_seconds
            if now >= minute_end:
                totals = list(counters)
                delta = {name: totals[K[name]] - previous[K[name]] for name in COUNTERS}
                previous = totals
                latencies.sort()
                cpu_now = process_cpu_seconds(server.pid)
                row = {
                    "cpu": (cpu_now - cpu_before) / 60,
                    "minute": len(minutes) + 1,
                    "rss": samples[-1][1] if samples else rss_kib(server.pid),
                    "anon": samples[-1][2] if samples else 0,
                    "p50": percentile(latencies, 50),
                    "p99": percentile(latencies, 99),
                    "wal": _size(server.db_path.with_name(server.db_path.name + "-wal")),
                    "db": _size(server.db_path),
                    "latencies": latencies,  # sorted; dropped from info at the end
                    **delta,
                }
                latencies = []
                cpu_before = cpu_now
                minutes.append(row)
                print(_minute_line(row, len(minutes) == 1), flush=True)
                minute_count += 1
                minute_end = start_at + minute_count * 60.0
            if now >= stop_at:  # the last sample and row were taken at stop_at, above
                break
        client.join(30)
        try:
            while True:
                item = queue.get(timeout=2)
                if item[0] == "done":
                    client_errors = item[1]
        except Exception:
            pass
        info["client_errors"] = client_errors
        info["hwm"] = rss_kib(server.pid, "VmHWM")
        info["samples"] = samples
        info["minutes"] = minutes
        info["log_tail"] = _log_errors(server.log)
    finally:
        server.stop()
    return info


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_errors(log: Path) -> list[str]:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [x for x in lines if "ERROR" in x or "Traceback" in x][:10]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


HEADER = (
    "min",
    "RSS MiB",
    "anon MiB",
    "server CPU",
    "WS opened",
    "WS errors",
    "posted",
    "POST errors",
    "POST p50 ms",
    "POST p99 ms",
    "viewer msgs",
    "viewer errors",
    "db+wal MiB",
)


def _cells(row: dict) -> list[str]:
    return [
        str(row["minute"]),
        f"{row['rss'] / MIB:.1f}",
        f"{row['anon'] / MIB:.1f}",
        f"{row['cpu'] * 100:.0f}%",
        f"{row['ws_opened']:.0f}",
        f"{row['ws_errors']:.0f}",
        f"{row['posted']:.0f}",
        f"{row['post_errors']:.0f}",
        _ms(row["p50"]),
        _ms(row["p99"]),
        f"{row['viewer_messages']:.0f}",
        f"{row['viewer_errors']:.0f}",
        f"{(row['db'] + row['wal']) / 2**20:.1f}",
    ]


def _minute_line(row: dict, header: bool) -> str:
    cells = _cells(row)
    line = " ".join(f"{c:>{max(len(h), 7)}}" for c, h in zip(cells, HEADER, strict=True))
    if header:
        head = " ".join(f"{h:>{max(len(h), 7)}}" for h in HEADER)
        return head + "\n" + line
    return line


def rss_at(samples: list[tuple[float, int, int]], seconds: float) -> tuple[float, int]:
    """The sample nearest to `seconds` after the start."""
    return min(((t, rss) for t, rss, _ in samples), key=lambda s: abs(s[0] - seconds))


def summary(args: argparse.Namespace, info: dict) -> tuple[list[str], bool]:
    """The run's figures and the three verdicts (errors, RSS drift, p99 first vs last)."""
    samples, minutes = info["samples"], info["minutes"]
    total = args.minutes * 60
    window = args.window_minutes if args.window_minutes else min(30.0, args.minutes / 2)
    t_warm, warm = rss_at(samples, args.warmup_minutes * 60)
    t_mid, mid = rss_at(samples, total - window * 60)
    t_end, end = samples[-1][0], samples[-1][1]
    after_warm = [(t, rss) for t, rss, _ in samples if t >= t_warm]
    in_window = [(t, rss) for t, rss, _ in samples if t >= t_mid]
    drift = (end - warm) / warm * 100
    peak_drift = (max(rss for _, rss in after_warm) - warm) / warm * 100
    lines = [
        f"RSS at start {info['rss_start'] / MIB:.1f} MiB; after warm-up ({t_warm / 60:.1f} min)"
        f" {warm / MIB:.1f} MiB; at {t_mid / 60:.1f} min {mid / MIB:.1f} MiB; at the end"
        f" ({t_end / 60:.1f} min) {end / MIB:.1f} MiB; VmHWM {info['hwm'] / MIB:.1f} MiB",
        f"slope after warm-up {slope_mib_per_min(after_warm):+.3f} MiB/min; over the last"
        f" {window:g} min {slope_mib_per_min(in_window):+.3f} MiB/min; growth over the last"
        f" {window:g} min {(end - mid) / mid * 100:+.2f}%; highest sample after warm-up"
        f" {peak_drift:+.2f}% over the warm-up figure",
    ]
    sums = {name: sum(m[name] for m in minutes) for name in COUNTERS}
    lines.append(
        f"totals: {sums['ws_opened']:,.0f} WebSockets opened ({sums['ws_welcomed']:,.0f} welcomed,"
        f" {sums['ws_closed_clean']:,.0f} closed with a close frame, {sums['ws_abrupt']:,.0f}"
        f" dropped), {sums['ws_errors']:,.0f} WebSocket errors; {sums['posted']:,.0f} positions"
        f" posted, {sums['post_errors']:,.0f} POST errors; {sums['viewer_messages']:,.0f} viewer"
        f" messages, {sums['viewer_errors']:,.0f} viewer errors"
    )
    posted_rate = sums["posted"] / (len(minutes) * 60) if minutes else 0.0
    if args.post_rate and posted_rate < 0.95 * args.post_rate:
        lines.append(
            f"note: {posted_rate:.0f} POSTs/s answered of the {args.post_rate:g}/s asked (the"
            " devices send closed loop): the server did not keep up, so this run does not show"
            " the soak at the asked load"
        )
    for name, count in sorted(info["client_errors"].items(), key=lambda kv: -kv[1])[:8]:
        lines.append(f"error: {count} x {name}")
    for line in info["log_tail"]:
        lines.append(f"server log: {line[:160]}")

    # The verdicts (issue #20): no error; RSS drift after warm-up; p99 first vs last minutes.
    # (The client's error messages are the same errors as its counters, named.)
    counted = sums["ws_errors"] + sums["post_errors"] + sums["viewer_errors"]
    errors = max(counted, sum(info["client_errors"].values())) + len(info["log_tail"])
    verdicts = [
        (
            errors == 0,
            f"errors: {errors:,.0f} (WebSocket {sums['ws_errors']:,.0f}, POST"
            f" {sums['post_errors']:,.0f}, viewer {sums['viewer_errors']:,.0f}, server log"
            f" {len(info['log_tail'])}) (target 0)",
        ),
        (
            drift <= args.max_growth,
            f"RSS drift after warm-up: {warm / MIB:.1f} MiB at {t_warm / 60:.1f} min ->"
            f" {end / MIB:.1f} MiB at the end: {drift:+.2f}% (target <= {args.max_growth:g}%)",
        ),
    ]
    span = min(5, len(minutes) // 2)
    first = sorted(x for m in minutes[:span] for x in m["latencies"]) if span else []
    last = sorted(x for m in minutes[-span:] for x in m["latencies"]) if span else []
    if first and last:
        p_first, p_last = percentile(first, 99), percentile(last, 99)
        verdicts.append(
            (
                p_last <= args.max_p99_ratio * p_first,
                f"POST p99 of the last {span} min {p_last * 1000:.1f} ms vs the first {span} min"
                f" {p_first * 1000:.1f} ms: {p_last / p_first:.2f}x (target <="
                f" {args.max_p99_ratio:g}x)",
            )
        )
    else:
        verdicts.append((False, "POST p99 first vs last minutes: no POSTs measured"))
    lines += [f"{'PASS' if ok else 'FAIL'}  {text}" for ok, text in verdicts]
    return lines, all(ok for ok, _ in verdicts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Soak: server RSS under connection churn.")
    parser.add_argument("--minutes", type=float, default=60, help="length of the run (60)")
    parser.add_argument("--ws-rate", type=float, default=50, help="/ws/realtime opens/s (50)")
    parser.add_argument(
        "--ws-messages", type=int, default=3, help="messages after welcome before closing (3)"
    )
    parser.add_argument(
        "--abrupt", type=float, default=0.2, help="share of WebSockets dropped without close (0.2)"
    )
    parser.add_argument("--post-rate", type=float, default=100, help="position POSTs/s (100)")
    parser.add_argument("--devices", type=int, help="devices (20; at least --viewers' sessions)")
    parser.add_argument("--viewers", type=int, default=0, help="live share viewers (0)")
    parser.add_argument("--sample-seconds", type=float, default=10, help="RSS sampling (10)")
    parser.add_argument(
        "--warmup-minutes", type=float, default=5, help="RSS 'after warm-up' at (5)"
    )
    parser.add_argument(
        "--window-minutes", type=float, help="growth window at the end (half the run, <= 30)"
    )
    parser.add_argument(
        "--max-growth", type=float, default=5.0, help="RSS drift after warm-up, PASS limit %% (5)"
    )
    parser.add_argument(
        "--max-p99-ratio",
        type=float,
        default=1.2,
        help="POST p99 last/first 5 min, PASS limit (1.2)",
    )
    parser.add_argument(
        "--server-env", action="append", default=[], help="NAME=VALUE for the server (repeat)"
    )
    parser.add_argument("--trace", help="debug: run the server under tracemalloc, dumps in DIR")
    parser.add_argument(
        "--malloc-trim", type=float, default=0, help="debug: malloc_trim(0) in the server every N s"
    )
    parser.add_argument("--memlog", help="debug: the server logs where its memory is to FILE")
    parser.add_argument("--trace-diff", help="print the growth between two snapshots in DIR")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    if args.devices is None:
        args.devices = max(20, args.viewers) if args.viewers else 20
    args.warmup_minutes = min(args.warmup_minutes, args.minutes / 2)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-wrapped"]:
        serve_wrapped(
            Path(os.environ["SOAK_TRACE_DIR"]) if os.environ.get("SOAK_TRACE_DIR") else None,
            float(os.environ.get("SOAK_TRACE_SECONDS", "60")),
            float(os.environ.get("SOAK_MALLOC_TRIM_SECONDS", "0")),
        )
        return 0
    args = parse_args(argv)
    if args.trace_diff:
        trace_diff(Path(args.trace_diff), 2, -1)
        return 0
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.time()
    print(f"tracker soak, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}")
    print(f"command: python bench/soak.py {' '.join(argv)}", flush=True)
    info = in_workdir(
        "tracker-bench-soak-", args.keep, lambda workdir, children: run(args, workdir, children)
    )
    if info is None:
        return 130
    print()
    print(machine_line(info["server_cpus"], info["client_cpus"]))
    print(f"stack: {versions()}")
    print(f"tree: {revision()}")
    print(
        f"parameters: --minutes {args.minutes:g} --ws-rate {args.ws_rate:g} --ws-messages"
        f" {args.ws_messages} --abrupt {args.abrupt:g} --post-rate {args.post_rate:g}"
        f" --devices {args.devices} --viewers {args.viewers}; server env {info['env'] or '-'}"
    )
    print()
    print(render_table(list(HEADER), [_cells(m) for m in info["minutes"]]))
    print()
    lines, passed = summary(args, info)
    for line in lines:
        print(line)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
