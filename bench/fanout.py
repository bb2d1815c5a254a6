"""Fan-out benchmark: ingest-to-receipt latency and deliveries/s over WebSockets.

    python bench/fanout.py                  # full run: 20 s phases, 1,000 subscribers, 100 devices
    python bench/fanout.py --quick          # smoke run: 3 s phases, 100 subscribers, 10 devices
    python bench/fanout.py --phases realtime --seconds 30 --profile /tmp/prof

Phases, each bounded in time (--warmup, then --seconds measured):

  ref raw broadcaster  A tiny raw ASGI app (in this file) on the same Hypercorn trio worker
                       and config as `tracker serve`: WebSocket clients connect, and
                       `POST /publish` puts the body into every connection's mailbox (newest
                       per device, like tracker's hub); each connection's sender task sends it.
  ref raw, batched     The same, each sender joining everything pending into one
                       `{"type": "positions", "positions": [...]}` frame.
  realtime             `python -m tracker serve`; --subscribers `/ws/realtime` connections
                       authenticated with a read token on one instance, each receiving every
                       device of the instance.
  realtime-batch       The same with `"batch": true` in authenticate (one `positions` frame
                       per sender turn).
  share                The same server; one share session per device, --viewers-per-session
                       `/share/{token}/live` viewers each
                       (TRACKER_SHARING_PUSH_INTERVAL_SECONDS=0: every update is pushed).

In every phase --devices devices each send one position per 1/--rate s from a separate
sender process over keep-alive HTTP (tracker: native JSON with X-Ingest-Key; reference:
the same position message as /ws/realtime sends, to /publish). Position n of a device
carries the timestamp base + n (whole seconds: the streams floor timestamps), and the
sender writes its send time (time.time()) into an array shared with the receiver
processes at [device, n] just before sending. A receiver looks the send time up when a
position arrives: latency = time.time() at receipt - send time. Only positions received
in the measured window count, and only those sent in this phase (not the snapshot a new
connection gets).

deliveries/s = positions received in the window / window length; delivered % = that
against the positions sent in the window x subscribers of their device (the offered
load). Both the tracker and the reference conflate (a newer position of a device
replaces an unsent older one), so a saturated server delivers fewer, fresher positions
rather than queueing without bound: compare deliveries/s and latency together. A
saturated server sends to every connection in turn, so its latency is about the time
one round over all connections takes; the warm-up must be longer than one round for
the window to see the steady state (hence the default 10 s).

The server (and the reference) is pinned to one core and every client process (the
receivers and the sender) to the others. The WebSocket clients are a small hand-written
client over non-blocking sockets and epoll (handshake, masked client frames, unmasked
server frames; it answers the server's pings), several processes: trio-websocket costs
tens of microseconds per message, which would make the client the bottleneck at these
rates on a 2-core machine. Client CPU is reported to show it is not.

bench/memory.py and bench/position.py use this file's harness (server process, CLI,
WebSocket client).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import http.client
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

API_PREFIX = "/api/v1"
T = TypeVar("T")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
THIS_FILE = Path(__file__).resolve()
ROOT = THIS_FILE.parent.parent
DRAIN_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 180.0
MAX_INFLIGHT_HANDSHAKES = 64
RAW_PUBLISH_PATH = "/publish"
RAW_WS_PATH = "/ws"


# -- child processes ----------------------------------------------------------


class Children:
    """Every process the benchmark starts; all are stopped on exit, error or Ctrl-C."""

    def __init__(self) -> None:
        self.processes: list = []

    def popen(self, argv: list[str], *, cpus: set[int] | None, **kwargs) -> subprocess.Popen:
        def prepare() -> None:
            raise_nofile_limit()
            if cpus:
                os.sched_setaffinity(0, cpus)

        # A new session: the terminal's Ctrl-C reaches only us, and we stop the children.
        process = subprocess.Popen(argv, preexec_fn=prepare, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def spawn(self, target, args: tuple) -> multiprocessing.Process:
        """A forked client process (it ignores Ctrl-C: we stop it)."""
        process = multiprocessing.get_context("fork").Process(
            target=_child_main, args=(target, args), daemon=True
        )
        process.start()
        self.processes.append(process)
        return process

    def stop(self, process, timeout: float = 10) -> None:
        if isinstance(process, subprocess.Popen):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        elif process.is_alive():
            process.terminate()
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in list(reversed(self.processes)):
            try:
                self.stop(process)
            except Exception as error:  # keep stopping the others
                print(f"warning: could not stop a child process: {error}", file=sys.stderr)


def _child_main(target, args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    target(*args)


def _raise_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def raise_nofile_limit() -> int:
    """Raise this process's open-files limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """The server's core and the clients' cores (None, None on one core: no pinning)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        return {cpus[0]}, set(cpus[1:])
    return None, None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http_ok(port: int, path: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail(log)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not answer:\n{tail(log)}")


def http_json(
    port: int, method: str, path: str, body=None, headers: dict | None = None
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(
            method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else {})
    finally:
        conn.close()


# -- measurements from /proc ----------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, all its threads included."""
    return sum(process_cpu_split(pid))


def process_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a running process in seconds: user code and the kernel."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        threads[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return threads


def loop_thread_share(before: dict[int, float], after: dict[int, float], pid: int) -> float:
    """The event-loop (main) thread's share of the process's CPU between two readings."""
    loop = total = 0.0
    for tid, seconds in after.items():
        used = seconds - before.get(tid, 0.0)
        total += used
        if tid == pid:
            loop += used
    return loop / total if total else 1.0


def machine_busy_seconds() -> float:
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU seconds of every waited-for child process of this one (the load clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# The end of every wrk script the benches run: the line run_wrk_process reads.
WRK_REPORT_LUA = r"""
function done(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkRun:
    """What one wrk run reported (its Lua script ends with WRK_REPORT_LUA)."""

    report: dict
    cpu_seconds: float  # wrk's own CPU
    failed: int  # responses >= 400, socket errors and timeouts
    notes: list[str]


def run_wrk_process(
    argv: list[str], seconds: float, children: Children, cpus: set[int] | None
) -> WrkRun:
    """Run wrk (argv, its script printing BENCH_JSON) pinned to cpus; RuntimeError if it fails."""
    cpu_before = children_cpu_seconds()
    process = children.popen(argv, cpus=cpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=seconds + 60)
    finally:
        children.stop(process)
    cpu = children_cpu_seconds() - cpu_before
    line = next((x for x in out.decode().splitlines() if x.startswith("BENCH_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{out.decode()}\n{err.decode()}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    socket_errors = data["connect_errors"] + data["read_errors"] + data["write_errors"]
    failed = data["status_errors"] + socket_errors + data["timeouts"]
    notes = []
    if failed:
        notes.append(
            f"wrk: {data['status_errors']} responses >= 400, {socket_errors} socket errors,"
            f" {data['timeouts']} timeouts"
        )
    return WrkRun(data, cpu, failed, notes)


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """A memory figure of /proc/PID/status, in KiB (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def percentile(values, p: float) -> float | None:
    """The p-th percentile (nearest rank) of sorted values."""
    if not len(values):
        return None
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


# -- the tracker server ---------------------------------------------------------


@dataclass
class Device:
    token: str
    key: str


class TrackerServer:
    """`python -m tracker serve` in its own process, on a free loopback port, temp database."""

    def __init__(
        self,
        workdir: Path,
        children: Children,
        cpus: set[int] | None,
        env: dict[str, str] | None = None,
    ):
        self.workdir = workdir
        self.children = children
        self.cpus = cpus
        self.db_path = workdir / "tracker.db"
        self.port = free_port()
        self.log = workdir / "server.log"
        self.env = {
            **os.environ,
            "TRACKER_SERVER_HOST": "127.0.0.1",
            "TRACKER_SERVER_PORT": str(self.port),
            "TRACKER_SERVER_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "TRACKER_STORAGE_PATH": str(self.db_path),
            "TRACKER_AUTH_JWT_SECRET": secrets.token_urlsafe(48),
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cli(self, *args: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "tracker", *args, "--json"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"tracker {' '.join(args)} failed:\n{result.stderr}")
        return json.loads(result.stdout)

    def create_instance(self, name: str) -> str:
        return self.cli("instance", "create", name)["instance_id"]

    def add_devices(self, instance_id: str, count: int) -> list[Device]:
        def add(index: int) -> Device:
            out = self.cli("device", "add", "--instance", instance_id, "--name", f"Bench {index}")
            return Device(out["device_token"], out["ingest_key"])

        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            return list(pool.map(add, range(count)))

    def token(self, instance_id: str, scope: str) -> str:
        return self.cli("token", "create", "--instance", instance_id, "--scope", scope)["token"]

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = self.children.popen(
                [sys.executable, "-m", "tracker", "serve"],
                cpus=self.cpus,
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_http_ok(self.port, f"{API_PREFIX}/health", self.process, self.log)

    def stop(self) -> None:
        if self.process is not None:
            self.children.stop(self.process, timeout=20)

    def ingest_one(self, device: Device, timestamp: float, latitude: float = 51.5) -> None:
        status, body = http_json(
            self.port,
            "POST",
            f"{API_PREFIX}/devices/{device.token}/positions",
            {"latitude": latitude, "longitude": -0.12, "timestamp": timestamp, "speed": 10.0},
            {"X-Ingest-Key": device.key},
        )
        if status != 201:
            raise RuntimeError(f"ingest answered {status}: {body}")

    def max_timestamp(self) -> float:
        with sqlite3.connect(self.db_path, timeout=30) as conn:
            value = conn.execute("SELECT max(ts) FROM positions").fetchone()[0]
        return value or 0.0


# -- the raw ASGI broadcaster (the reference) -----------------------------------


class _RawConnection:
    __slots__ = ("pending", "ready")

    def __init__(self, event) -> None:
        self.pending: dict[bytes, str] = {}
        self.ready = event


async def answer_lifespan(receive, send) -> None:
    """The ASGI lifespan of the raw reference apps: nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def raw_broadcaster_app():
    """The bare stack: raw ASGI WebSockets, a POST that broadcasts its body to all of them.

    Each connection gets a conflating mailbox (newest message per key, the X-Key header)
    and a sender task, and a receiver that notices the disconnect: the least that
    behaves like tracker's hub under load, with no framework, JSON, auth or database.
    A connection to `/ws?topic=KEY` gets only the messages of that key (like a share
    viewer gets its device's); one to `/ws` gets every message. `batch=1` sends everything
    pending as one `{"type": "positions", "positions": [...]}` frame (like /ws/realtime's
    `"batch": true`).
    """
    from urllib.parse import parse_qs

    import trio

    topics: dict[bytes, set[_RawConnection]] = {}

    async def publish(scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if scope["path"] == RAW_PUBLISH_PATH:
            key = next((v for k, v in scope["headers"] if k == b"x-key"), b"")
            text = body.decode()
            for connection in topics.get(b"*", ()):
                connection.pending[key] = text
                connection.ready.set()
            for connection in topics.get(key, ()):
                connection.pending[key] = text
                connection.ready.set()
        await send(
            {"type": "http.response.start", "status": 204, "headers": [(b"content-length", b"0")]}
        )
        await send({"type": "http.response.body", "body": b""})

    async def websocket(scope, receive, send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        query = parse_qs(scope.get("query_string", b"").decode())
        topic = query.get("topic", ["*"])[0].encode()
        batch = query.get("batch", ["0"])[0] == "1"
        connection = _RawConnection(trio.Event())
        connections = topics.setdefault(topic, set())
        connections.add(connection)
        try:
            async with trio.open_nursery() as nursery:

                async def receiver() -> None:
                    while (await receive())["type"] != "websocket.disconnect":
                        pass
                    nursery.cancel_scope.cancel()

                async def sender() -> None:
                    while True:
                        await connection.ready.wait()
                        connection.ready = trio.Event()
                        items = list(connection.pending.values())
                        connection.pending.clear()
                        if batch:
                            items = ['{"type":"positions","positions":[' + ",".join(items) + "]}"]
                        for text in items:
                            await send({"type": "websocket.send", "text": text})
                        await trio.lowlevel.checkpoint()

                nursery.start_soon(receiver)
                nursery.start_soon(sender)
        finally:
            connections.discard(connection)

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
        elif scope["type"] == "http":
            await publish(scope, receive, send)
        elif scope["type"] == "websocket":
            await websocket(scope, receive, send)

    return app


def raw_http_app(status: int, body: bytes):
    """The bare stack over HTTP: read the request body, answer status with a JSON body."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve_raw_app(app, port: int) -> None:
    """A reference app (`--role raw-...`) on Hypercorn's trio worker, with tracker's own
    Hypercorn config (backlog, timeouts, limits), until SIGTERM."""
    import trio
    from hypercorn.trio import serve

    from tracker.config import Settings
    from tracker.server import hypercorn_config, wait_for_stop_signal

    raise_nofile_limit()
    settings = Settings().replace(server={"host": "127.0.0.1", "port": port})
    config = hypercorn_config(settings)
    trio.run(lambda: serve(app, config, shutdown_trigger=wait_for_stop_signal))


class RawBroadcaster:
    """A reference broadcaster in its own process: role "raw-broadcaster" (raw ASGI on
    Hypercorn) or "trio-broadcaster" (hand-written, trio sockets only)."""

    def __init__(
        self,
        workdir: Path,
        children: Children,
        cpus: set[int] | None,
        role: str = "raw-broadcaster",
    ):
        self.children = children
        self.cpus = cpus
        self.role = role
        self.port = free_port()
        self.log = workdir / f"{role}.log"
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = self.children.popen(
                [
                    sys.executable,
                    str(THIS_FILE),
                    "--role",
                    self.role,
                    "--port",
                    str(self.port),
                ],
                cpus=self.cpus,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_http_ok(self.port, "/health", self.process, self.log)

    def stop(self) -> None:
        if self.process is not None:
            self.children.stop(self.process)


# -- the hand-written trio broadcaster (the runtime's own limit) -------------------------

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (RFC 6455 5.2): what a server sends."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class _TrioSubscriber:
    __slots__ = ("pending", "ready")

    def __init__(self, event) -> None:
        self.pending: dict[bytes, bytes] = {}
        self.ready = event


def serve_trio_broadcaster(port: int) -> None:
    """The reference with no Hypercorn and no ASGI: trio sockets, a minimal HTTP/1.1 and
    WebSocket handshake, until SIGTERM.

    `POST /publish` frames its body once and puts the same bytes into every
    subscriber's conflating mailbox (newest per X-Key, like tracker's hub); each
    subscriber's sender task joins what is pending and writes it with one `send_all`.
    `GET /ws` (any other path than /publish and /health that asks for an upgrade)
    subscribes to everything; a receiver task per subscriber reads (and drops) the
    client's frames and ends the connection at EOF. No auth, JSON, database or framework:
    the least a trio program can do for the same fan-out.
    """
    import hashlib

    import trio

    raise_nofile_limit()
    subscribers: set[_TrioSubscriber] = set()

    async def read_head(stream, buffer: bytearray) -> tuple[bytes, dict[bytes, bytes]] | None:
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            data = await stream.receive_some(65536)
            if not data:
                return None
            buffer += data
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[: end + 4]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return lines[0], headers

    async def subscribe(stream, headers: dict[bytes, bytes]) -> None:
        accept = base64.b64encode(
            hashlib.sha1(headers.get(b"sec-websocket-key", b"") + WEBSOCKET_GUID).digest()
        )
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        subscriber = _TrioSubscriber(trio.Event())
        subscribers.add(subscriber)
        try:
            async with trio.open_nursery() as nursery:

                async def receiver() -> None:
                    while await stream.receive_some(65536):
                        pass
                    nursery.cancel_scope.cancel()

                async def sender() -> None:
                    while True:
                        await subscriber.ready.wait()
                        subscriber.ready = trio.Event()
                        frames = list(subscriber.pending.values())
                        subscriber.pending.clear()
                        await stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))

                nursery.start_soon(receiver)
                nursery.start_soon(sender)
        finally:
            subscribers.discard(subscriber)

    async def serve_http(stream, buffer: bytearray, request_line: bytes, headers) -> None:
        length = int(headers.get(b"content-length", b"0"))
        while len(buffer) < length:
            data = await stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError
            buffer += data
        body = bytes(buffer[:length])
        del buffer[:length]
        if request_line.startswith(b"POST " + RAW_PUBLISH_PATH.encode()):
            key = headers.get(b"x-key", b"")
            frame = server_text_frame(body)  # once, for every subscriber
            for subscriber in subscribers:
                subscriber.pending[key] = frame
                subscriber.ready.set()
            await stream.send_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        else:
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
            )

    async def handle(stream) -> None:
        buffer = bytearray()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            async with stream:
                while (head := await read_head(stream, buffer)) is not None:
                    request_line, headers = head
                    if headers.get(b"upgrade", b"").lower() == b"websocket":
                        await subscribe(stream, headers)
                        return
                    await serve_http(stream, buffer, request_line, headers)

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
        await trio.serve_listeners(handle, listeners)

    trio.run(main)


# -- a light WebSocket client: non-blocking sockets and epoll -----------------------

HANDSHAKE, AUTHENTICATING, OPEN, CLOSED = range(4)


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame (RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if n:
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return header + mask + payload


PONG_FRAME_TEXT = b'{"type":"pong"}'


@dataclass
class WsSpec:
    """One client connection: its path, the first message to send (or none), its device."""

    path: str
    first_message: bytes | None = None
    device: int = -1
    source: str = "127.0.0.1"  # the client's own (loopback) address


SOURCE_ADDRESSES = 200


def spread_sources(specs: list[WsSpec]) -> list[WsSpec]:
    """Each connection from one of 127.0.0.10-209 (to the server at 127.0.0.1).

    Every client address stays far under the server's per-address connection cap
    (`server.max_connections_per_address`, 256 by default), so the benchmark runs the
    server with its default configuration.
    """
    return [
        dataclasses.replace(spec, source=f"127.0.0.{10 + index % SOURCE_ADDRESSES}")
        for index, spec in enumerate(specs)
    ]


class _Client:
    __slots__ = ("sock", "buf", "state", "spec", "fragments")

    def __init__(self, sock: socket.socket, spec: WsSpec):
        self.sock = sock
        self.buf = bytearray()
        self.state = HANDSHAKE
        self.spec = spec
        self.fragments: list[bytes] | None = None


# Control array shared by the parent and the receiver processes (doubles).
C_WINDOW_START, C_WINDOW_END, C_STOP_AT = range(3)


def receiver_process(
    port: int,
    specs: list[WsSpec],
    mode: str,
    token_index: dict[str, int],
    sent_times,
    max_seq: int,
    base: int,
    control,
    results,
    cpus: set[int] | None,
    name: str,
) -> None:
    """A client process holding many WebSocket connections (see the module docstring).

    mode: "realtime" (tracker's /ws/realtime message, also the reference's), "share"
    (the share viewer's message; the device is the connection's), or "idle" (count only).
    Reports ("ready", ...) once every connection is open (and welcomed), then runs until
    control[C_STOP_AT] and reports ("done", ...).
    """
    import orjson

    if cpus:
        os.sched_setaffinity(0, cpus)
    raise_nofile_limit()
    epoll = select.epoll()
    clients: dict[int, _Client] = {}
    pending = list(reversed(specs))
    inflight = 0
    ready = failed = 0
    closes: Counter = Counter()
    errors: Counter = Counter()
    latencies: list[float] = []
    in_window = outside = unmapped = other = pongs = 0
    cpu_start = cpu_end = None
    host = f"127.0.0.1:{port}".encode()
    connect_deadline = time.time() + CONNECT_TIMEOUT_SECONDS
    reported_ready = False

    def drop(client: _Client, reason: str | None) -> None:
        nonlocal inflight, failed
        if client.state in (HANDSHAKE, AUTHENTICATING):
            inflight -= 1
            failed += 1
        client.state = CLOSED
        if reason:
            closes[reason] += 1
        fd = client.sock.fileno()
        with contextlib.suppress(OSError, KeyError):
            epoll.unregister(fd)
        clients.pop(fd, None)
        client.sock.close()

    def opened(client: _Client) -> None:
        nonlocal inflight, ready
        client.state = OPEN
        inflight -= 1
        ready += 1

    def connect(spec: WsSpec) -> None:
        nonlocal inflight, failed
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((spec.source, 0))
            sock.connect(("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16))
            sock.sendall(
                b"GET " + spec.path.encode() + b" HTTP/1.1\r\nHost: " + host
                + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )  # fmt: skip
        except OSError as error:
            sock.close()
            errors[f"connect: {error.__class__.__name__}"] += 1
            failed += 1
            return
        sock.setblocking(False)
        client = _Client(sock, spec)
        clients[sock.fileno()] = client
        epoll.register(sock.fileno(), select.EPOLLIN)
        inflight += 1

    def send(client: _Client, payload: bytes, opcode: int = 1) -> None:
        # A full buffer or a closed socket: the read side will tell.
        with contextlib.suppress(OSError):
            client.sock.send(client_frame(payload, opcode))

    def on_message(client: _Client, payload: bytes, now: float) -> None:
        nonlocal other, pongs
        if mode == "idle" and client.state == OPEN:
            if payload.startswith(b'{"type":"ping"'):
                send(client, PONG_FRAME_TEXT)
                pongs += 1
            else:
                other += 1
            return
        message = orjson.loads(payload)
        kind = message.get("type")
        if kind == "positions" and mode == "realtime":
            for position in message["positions"]:
                on_position(client, position, now)
        elif kind == "position":
            on_position(client, message, now)
        elif kind == "welcome" and client.state == AUTHENTICATING:
            opened(client)
        elif kind == "ping":
            send(client, PONG_FRAME_TEXT)
            pongs += 1
        elif kind == "error":
            errors[f"error {message.get('code')}: {str(message.get('message'))[:60]}"] += 1
        else:
            other += 1

    def on_position(client: _Client, message: dict, now: float) -> None:
        nonlocal in_window, outside, unmapped
        if mode == "share":
            device = client.spec.device
            ts = message.get("timestamp")
        else:
            device = token_index.get(message.get("DeviceToken"), -1)
            ts = message.get("Timestamp")
        if device < 0 or not isinstance(ts, int) or ts - base >= max_seq:
            unmapped += 1
            return
        seq = ts - base
        if seq < 0:  # a position from before this phase (a snapshot on connect)
            outside += 1
            return
        sent = sent_times[device * max_seq + seq]
        if sent > 0 and window_start <= now < window_end:
            latencies.append(now - sent)
            in_window += 1
        else:
            outside += 1

    def on_data(client: _Client, now: float) -> None:
        buf = client.buf
        if client.state == HANDSHAKE:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[9:12])
            if status != b"101":
                errors[f"handshake HTTP {status.decode(errors='replace')}"] += 1
                drop(client, None)
                return
            del buf[: end + 4]
            if client.spec.first_message is not None:
                client.state = AUTHENTICATING
                send(client, client.spec.first_message)
            else:
                opened(client)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > n:
                break
            payload = bytes(buf[pos + head : end])
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0 or not b0 & 0x80:  # fragmented message
                client.fragments = (client.fragments or []) + [payload]
                if not b0 & 0x80:
                    continue
                payload, client.fragments = b"".join(client.fragments), None
                opcode = 1
            if opcode in (1, 2):
                on_message(client, payload, now)
            elif opcode == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                drop(client, f"closed {code}")
                return
            elif opcode == 9:
                send(client, payload, 10)
            if client.state == CLOSED:
                return
        del buf[:pos]

    while True:
        now = time.time()
        window_start = control[C_WINDOW_START] or float("inf")
        window_end = control[C_WINDOW_END] or float("inf")
        if now >= control[C_STOP_AT]:
            break
        if cpu_start is None and now >= window_start:
            cpu_start = time.process_time()
        if cpu_end is None and now >= window_end:
            cpu_end = time.process_time()
        while pending and inflight < MAX_INFLIGHT_HANDSHAKES:
            connect(pending.pop())
        if not reported_ready and not pending and (inflight == 0 or now > connect_deadline):
            results.put(("ready", name, ready, failed + inflight, dict(errors)))
            reported_ready = True
        for fd, _ in epoll.poll(0.05):
            client = clients.get(fd)
            if client is None:
                continue
            try:
                data = client.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError as error:
                drop(client, f"socket {error.__class__.__name__}")
                continue
            if not data:
                drop(client, "EOF without close frame")
                continue
            client.buf += data
            on_data(client, time.time())
    if cpu_start is not None and cpu_end is None:
        cpu_end = time.process_time()
    open_at_end = sum(1 for c in clients.values() if c.state == OPEN)
    for client in list(clients.values()):
        client.sock.close()
    results.put(
        (
            "done",
            name,
            {
                "ready": ready,
                "open_at_end": open_at_end,
                "in_window": in_window,
                "outside": outside,
                "unmapped": unmapped,
                "other": other,
                "pongs": pongs,
                "closes": dict(closes),
                "errors": dict(errors),
                "latencies": latencies,
                "cpu": (cpu_end - cpu_start) if cpu_start is not None else 0.0,
            },
        )
    )


# -- the sender (ingest) process ------------------------------------------------------


async def read_http_response(stream, buffer: bytearray) -> tuple[int, bytes]:
    """One HTTP/1.1 response off a keep-alive trio stream: (status, lower-cased header).

    buffer keeps what was read past the response (a pipelined next one)."""
    while (header_end := buffer.find(b"\r\n\r\n")) < 0:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionResetError("server closed the connection")
        buffer += data
    header = bytes(buffer[:header_end]).lower()
    status = int(header[9:12])
    length = 0
    for line in header.split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line[15:])
    while len(buffer) < header_end + 4 + length:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionResetError("server closed the connection")
        buffer += data
    del buffer[: header_end + 4 + length]
    return status, header


def in_workdir(prefix: str, keep: bool, job: Callable[[Path, Children], T]) -> T | None:
    """job(workdir, children) in a new temp directory; every child process is stopped and
    the directory removed (unless keep) however it ends. None when interrupted (Ctrl-C)."""
    children = Children()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        return job(workdir, children)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return None
    finally:
        children.stop_all()
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run_bench(prefix: str, keep: bool, make: Callable[[Path, Children], Any]) -> tuple | None:
    """make(workdir, children) a benchmark and return (it, its rows), in in_workdir."""

    def job(workdir: Path, children: Children) -> tuple:
        bench = make(workdir, children)
        return bench, bench.run()

    return in_workdir(prefix, keep, job)


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection to the loopback server (trio), for load clients:
    reopened after a socket error and when the server says `Connection: close`."""

    def __init__(self, port: int):
        self.port = port
        self.stream = None
        self.buffer = bytearray()

    async def reopen(self) -> None:
        import trio

        if self.stream is not None:
            await self.stream.aclose()
        self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.buffer.clear()

    async def exchange(self, request: bytes) -> int | None:
        """Send a request, read its answer: the status, or None after a socket error."""
        import trio

        if self.stream is None:
            await self.reopen()
        try:
            await self.stream.send_all(request)
            status, header = await read_http_response(self.stream, self.buffer)
        except (OSError, trio.BrokenResourceError, ValueError):
            await self.reopen()
            return None
        if b"connection: close" in header:  # Hypercorn's keep_alive_max_requests
            await self.reopen()
        return status

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


def position_message(token: str, index: int, seq: int, ts: int) -> bytes:
    """The reference's message: the shape and size of tracker's /ws/realtime position."""
    return json.dumps(
        {
            "type": "position",
            "DeviceToken": token,
            "Lat": round(51.5 + seq * 1e-4, 6),
            "Lng": round(-0.12 + index * 1e-3, 6),
            "Speed": 11.1,
            "Heading": 0.0,
            "Accuracy": 5.0,
            "Altitude": 30.0,
            "Battery": 80.0,
            "TrackToken": "0123456789abcdef",
            "DisplayIdentifier": f"Bench {index}",
            "Timestamp": ts,
        },
        separators=(",", ":"),
    ).encode()


def sender_process(
    port: int,
    target: str,
    devices: list[Device],
    rate: float,
    base: int,
    sent_times,
    max_seq: int,
    start_at: float,
    window: tuple[float, float],
    closed_loop: bool,
    results,
    cpus: set[int] | None,
) -> None:
    """Each device sends one position per 1/rate s on its own keep-alive connection.

    target "tracker": native JSON with X-Ingest-Key; "raw": the reference's /publish.
    The device's n-th position has timestamp base + n; its send time goes to
    sent_times[device * max_seq + n] just before the request is written.

    Open loop (default): requests go out on schedule whatever the server's answers,
    pipelined on the device's connection (HTTP/1.1 answers them in order, so a device's
    positions are committed in order), so the offered load stays at devices x rate.
    Closed loop: the next request waits for the previous answer (a phone client that
    sends in order), so a slow server also lowers the offered load.
    """
    import collections

    import trio

    if cpus:
        os.sched_setaffinity(0, cpus)
    period = 1.0 / rate
    stop_at = window[1]
    latencies: list[float] = []  # ingest round trips of requests sent in the window
    counts: Counter = Counter()

    def request(index: int, device: Device, seq: int) -> bytes:
        ts = base + seq
        if target == "tracker":
            body = (
                b'{"latitude":%.6f,"longitude":%.6f,"timestamp":%d,"speed":11.1,'
                b'"heading":0.0,"accuracy":5.0,"altitude":30.0,"battery":80.0}'
                % (51.5 + seq * 1e-4, -0.12 + index * 1e-3, ts)
            )
            head = (
                f"POST {API_PREFIX}/devices/{device.token}/positions HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"X-Ingest-Key: {device.key}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
        else:
            body = position_message(device.token, index, seq, ts)
            head = (
                f"POST {RAW_PUBLISH_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nX-Key: {device.token}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
        return head.encode() + body

    def answered(sent: float, status: int) -> None:
        if window[0] <= sent < window[1]:
            latencies.append(time.time() - sent)
        counts["ok" if 200 <= status < 300 else f"HTTP {status}"] += 1

    def stamp(index: int, seq: int) -> float:
        sent = time.time()
        sent_times[index * max_seq + seq] = sent
        if window[0] <= sent < window[1]:
            counts["sent in window"] += 1
        return sent

    async def closed_loop_device(index: int, device: Device) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buffer = bytearray()
        next_at = start_at + period * index / len(devices)
        seq = 0
        while next_at < stop_at and seq < max_seq:
            delay = next_at - time.time()
            if delay > 0:
                await trio.sleep(delay)
            data = request(index, device, seq)
            sent = stamp(index, seq)
            try:
                await stream.send_all(data)
                status, header = await read_http_response(stream, buffer)
            except (OSError, trio.BrokenResourceError, ValueError) as error:
                counts[f"socket error {error.__class__.__name__}"] += 1
                await stream.aclose()
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                buffer.clear()
                status, header = 0, b""
            answered(sent, status)
            if b"connection: close" in header:  # Hypercorn's keep_alive_max_requests
                await stream.aclose()
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                buffer.clear()
            seq += 1
            next_at += period
            if next_at < time.time() - period:  # over a period behind: do not burst
                counts["late"] += 1
                next_at = time.time()
        await stream.aclose()

    async def open_loop_device(index: int, device: Device) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        outstanding: collections.deque[float] = collections.deque()
        send_channel, receive_channel = trio.open_memory_channel[None](math.inf)

        async def reader() -> None:
            buffer = bytearray()
            async for _ in receive_channel:  # one item per request written
                status, header = await read_http_response(stream, buffer)
                answered(outstanding.popleft(), status)
                if b"connection: close" in header:
                    raise ConnectionResetError("the server closed a pipelined connection")

        async def writer() -> None:
            async with send_channel:
                next_at = start_at + period * index / len(devices)
                seq = 0
                while next_at < stop_at and seq < max_seq:
                    delay = next_at - time.time()
                    if delay > 0:
                        await trio.sleep(delay)
                    data = request(index, device, seq)
                    outstanding.append(stamp(index, seq))
                    await stream.send_all(data)
                    send_channel.send_nowait(None)
                    seq += 1
                    next_at += period

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                nursery.start_soon(writer)
        except (OSError, trio.BrokenResourceError, ValueError) as error:
            counts[f"device connection lost: {error.__class__.__name__}"] += 1
        finally:
            counts["unanswered"] += len(outstanding)
            await stream.aclose()

    async def main() -> None:
        device_task = closed_loop_device if closed_loop else open_loop_device
        # Answers still missing long after the window are given up (bounded in time).
        with trio.move_on_after(stop_at - time.time() + DRAIN_SECONDS + 10):
            async with trio.open_nursery() as nursery:
                for index, device in enumerate(devices):
                    nursery.start_soon(device_task, index, device)

    cpu_before = time.process_time()
    trio.run(main)
    if not counts["unanswered"]:
        del counts["unanswered"]
    results.put(
        (
            "sender",
            "sender",
            {
                "latencies": latencies,
                "counts": dict(counts),
                "cpu": time.process_time() - cpu_before,
            },
        )
    )


# -- a phase: receivers, a sender, measurements ----------------------------------------


@dataclass
class PhaseResult:
    name: str
    subscribers: int
    connected: int
    devices: int
    seconds: float
    sent: int  # positions sent in the window
    expected: int  # sent x subscribers of their device
    delivered: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    ingest_p50_ms: float | None
    ingest_p99_ms: float | None
    server_cpu: float
    server_system: float  # the kernel's share of the server's CPU time
    loop_share: float
    client_cpu: float
    machine_cpu: float
    rss_mib: float
    notes: list[str] = field(default_factory=list)

    @property
    def deliveries_per_s(self) -> float:
        return self.delivered / self.seconds

    @property
    def positions_per_s(self) -> float:
        return self.sent / self.seconds


class Collector:
    """Messages from client processes, by kind, with a deadline."""

    def __init__(self) -> None:
        self.queue = multiprocessing.get_context("fork").Queue()
        self.stash: list = []  # reports of other kinds that came first

    def gather(self, kind: str, count: int, deadline: float, watch: list) -> list:
        import queue as queue_module

        found = [item for item in self.stash if item[0] == kind][:count]
        self.stash = [item for item in self.stash if item not in found]
        while len(found) < count:
            left = deadline - time.time()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {count - len(found)} {kind!r} reports")
            try:
                item = self.queue.get(timeout=min(1.0, left))
            except queue_module.Empty:
                dead = [p for p in watch if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise RuntimeError(
                        f"a client process died (exit code {dead[0].exitcode})"
                    ) from None
                continue
            if item[0] == kind:
                found.append(item)
            else:
                self.stash.append(item)
        return found


def split(items: list, parts: int) -> list[list]:
    return [chunk for chunk in (items[i::parts] for i in range(parts)) if chunk]


def run_phase(
    name: str,
    *,
    port: int,
    server_pid: int,
    specs: list[WsSpec],
    fan: list[int],  # subscribers of each device's positions
    mode: str,
    target: str,
    devices: list[Device],
    base: int,
    args: argparse.Namespace,
    children: Children,
    client_cpus: set[int] | None,
    profile_dir: Path | None,
) -> PhaseResult:
    total = args.warmup + args.seconds + DRAIN_SECONDS + 5
    max_seq = int(total * args.rate) + 2
    ctx = multiprocessing.get_context("fork")
    sent_times = ctx.RawArray("d", len(devices) * max_seq)
    control = ctx.RawArray("d", 3)
    control[C_STOP_AT] = time.time() + CONNECT_TIMEOUT_SECONDS + total + 60  # a hard bound
    token_index = {d.token: i for i, d in enumerate(devices)}
    specs = spread_sources(specs)
    collector = Collector()
    receivers = [
        children.spawn(
            receiver_process,
            (
                port,
                chunk,
                mode,
                token_index,
                sent_times,
                max_seq,
                base,
                control,
                collector.queue,
                client_cpus,
                f"{name}-{i}",
            ),
        )
        for i, chunk in enumerate(split(specs, args.client_processes))
    ]
    processes = list(receivers)
    try:
        step(f"{name}: opening {len(specs)} WebSocket connections")
        ready = collector.gather(
            "ready", len(receivers), time.time() + CONNECT_TIMEOUT_SECONDS + 30, processes
        )
        connected = sum(r[2] for r in ready)
        notes = []
        if connected < len(specs):
            errors = Counter()
            for r in ready:
                errors.update(r[4])
            notes.append(f"{len(specs) - connected} connections failed: {dict(errors)}")
        start_at = time.time() + 1.0
        window = (start_at + args.warmup, start_at + args.warmup + args.seconds)
        stop_at = window[1] + DRAIN_SECONDS
        control[C_WINDOW_START], control[C_WINDOW_END] = window
        control[C_STOP_AT] = stop_at
        sender = children.spawn(
            sender_process,
            (
                port,
                target,
                devices,
                args.rate,
                base,
                sent_times,
                max_seq,
                start_at,
                window,
                args.closed_loop,
                collector.queue,
                client_cpus,
            ),
        )
        processes.append(sender)
        step(
            f"{name}: {len(devices)} devices x {args.rate:g} Hz, {args.warmup:g} s warm-up,"
            f" {args.seconds:g} s measured"
        )
        time.sleep(max(0.0, window[0] - time.time()))
        split0, threads0 = process_cpu_split(server_pid), thread_cpu_seconds(server_pid)
        busy0 = machine_busy_seconds()
        profiler = None
        profile = None
        if profile_dir is not None:
            profile = profile_dir / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".txt")
            profiler = start_profiler(children, server_pid, profile, args, client_cpus)
        time.sleep(max(0.0, window[1] - time.time()))
        split1, threads1 = process_cpu_split(server_pid), thread_cpu_seconds(server_pid)
        busy1 = machine_busy_seconds()
        rss = rss_kib(server_pid) / 1024
        sender_report = collector.gather("sender", 1, stop_at + 60, processes)[0][2]
        done = collector.gather("done", len(receivers), stop_at + 60, processes)
        if profiler is not None:
            finish_profiler(children, profiler, profile, notes)
    finally:
        control[C_STOP_AT] = 0.0  # every receiver stops at its next poll
        for process in processes:
            process.join(10)
            children.stop(process)
    window_seconds = window[1] - window[0]
    cpu0, cpu1 = sum(split0), sum(split1)
    user, system = split1[0] - split0[0], split1[1] - split0[1]
    sent_in_window = [sent_times[d * max_seq : (d + 1) * max_seq] for d in range(len(devices))]
    sent = sum(1 for times in sent_in_window for t in times if window[0] <= t < window[1])
    expected = sum(
        fan[d] * sum(1 for t in times if window[0] <= t < window[1])
        for d, times in enumerate(sent_in_window)
    )
    latencies = sorted(x for r in done for x in r[2]["latencies"])
    delivered = sum(r[2]["in_window"] for r in done)
    closes, errors = Counter(), Counter()
    for r in done:
        closes.update(r[2]["closes"])
        errors.update(r[2]["errors"])
    open_at_end = sum(r[2]["open_at_end"] for r in done)
    if closes:
        notes.append(f"connections closed by the server during the run: {dict(closes)}")
    if errors:
        notes.append(f"errors received: {dict(errors)}")
    if open_at_end < connected:
        notes.append(f"{connected - open_at_end} of {connected} connections were gone at the end")
    unmapped = sum(r[2]["unmapped"] for r in done)
    if unmapped:
        notes.append(f"{unmapped} positions could not be matched to a send time")
    sender_counts = sender_report["counts"]
    bad = {k: v for k, v in sender_counts.items() if k not in ("ok", "sent in window")}
    if bad:
        notes.append(f"sender: {bad}")
    ingest = sorted(sender_report["latencies"])
    client_cpu = (
        sum(r[2]["cpu"] for r in done)
        + sender_report["cpu"] * window_seconds / (window[1] - start_at)
    ) / window_seconds

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    other = (busy1 - busy0) / window_seconds - (cpu1 - cpu0) / window_seconds - client_cpu
    if other > 0.10:
        notes.append(
            f"other processes used about {other * 100:.0f}% of a core during the window;"
            " the figures may be off: run again on a quiet machine"
        )
    return PhaseResult(
        name=name,
        subscribers=len(specs),
        connected=connected,
        devices=len(devices),
        seconds=window_seconds,
        sent=sent,
        expected=expected,
        delivered=delivered,
        p50_ms=ms(percentile(latencies, 50)),
        p99_ms=ms(percentile(latencies, 99)),
        max_ms=ms(latencies[-1] if latencies else None),
        ingest_p50_ms=ms(percentile(ingest, 50)),
        ingest_p99_ms=ms(percentile(ingest, 99)),
        server_cpu=(cpu1 - cpu0) / window_seconds,
        server_system=system / (user + system) if user + system else 0.0,
        loop_share=loop_thread_share(threads0, threads1, server_pid),
        client_cpu=client_cpu,
        machine_cpu=(busy1 - busy0) / window_seconds,
        rss_mib=rss,
        notes=notes,
    )


# -- py-spy ------------------------------------------------------------------------------


def start_profiler(
    children: Children, pid: int, out: Path, args, cpus: set[int] | None
) -> subprocess.Popen | None:
    """py-spy on the clients' cores, sampling the server for the measured window."""
    exe = shutil.which("py-spy")
    if exe is None:
        print("warning: py-spy not found (pip install py-spy); no profile", file=sys.stderr)
        return None
    return children.popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(args.seconds))),
            "--rate",
            "100",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        cpus=cpus,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def finish_profiler(children: Children, profiler, out: Path, notes: list[str]) -> None:
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        children.stop(profiler)
    children.stop(profiler)
    if out.exists():
        notes.append(f"py-spy profile (collapsed stacks): {out}")
        notes.extend(top_functions(out, 12))


def top_functions(collapsed: Path, count: int) -> list[str]:
    """The hottest functions of a py-spy raw profile: by own samples and including callees."""
    own, inclusive, total = Counter(), Counter(), 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [
            f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f
            for f in stack.split(";")
            if not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return ["py-spy: no samples"]
    lines = [f"py-spy: {total} samples; hottest by own time:"]
    lines += [f"  {n / total * 100:5.1f}%  {f}" for f, n in own.most_common(count)]
    return lines


# -- the phases of this benchmark ------------------------------------------------------


def realtime_auth(read_token: str, instance_id: str, **settings: object) -> bytes:
    """The `/ws/realtime` authenticate message every bench client sends (metric, UTC, unix)."""
    message = {
        "type": "authenticate",
        "jwt": read_token,
        "instance_id": instance_id,
        "units": "metric",
        "timezone": "UTC",
        "date_format": "unix",
        **settings,
    }
    return json.dumps(message).encode()


class FanoutBench:
    def __init__(self, args: argparse.Namespace, workdir: Path, children: Children):
        self.args = args
        self.workdir = workdir
        self.children = children
        self.server_cpus, self.client_cpus = split_cpus()
        self.notes: list[str] = []
        self.profile_dir = Path(args.profile).resolve() if args.profile else None
        if self.profile_dir:
            self.profile_dir.mkdir(parents=True, exist_ok=True)

    def phase(self, name: str, **kwargs) -> PhaseResult:
        return run_phase(
            name,
            args=self.args,
            children=self.children,
            client_cpus=self.client_cpus,
            profile_dir=self.profile_dir,
            **kwargs,
        )

    def raw_phase(
        self, devices: list[Device], per_device: bool, batch: bool = False, trio: bool = False
    ) -> PhaseResult:
        """The reference: every client gets every device (like /ws/realtime; batched like
        its `"batch": true` when batch), or --viewers-per-session clients per device get
        that device's (like share viewers). trio: the hand-written trio broadcaster (every
        client gets every device) instead of the raw ASGI app."""
        if trio:
            raw = RawBroadcaster(
                self.workdir, self.children, self.server_cpus, role="trio-broadcaster"
            )
            step("reference: hand-written trio broadcaster (no Hypercorn, no ASGI)")
        else:
            raw = RawBroadcaster(self.workdir, self.children, self.server_cpus)
            step("reference: raw ASGI broadcaster on Hypercorn's trio worker")
        raw.start()
        try:
            if per_device:
                specs = [
                    WsSpec(f"{RAW_WS_PATH}?topic={device.token}", None, index)
                    for index, device in enumerate(devices)
                    for _ in range(self.args.viewers_per_session)
                ]
                fan = [self.args.viewers_per_session] * len(devices)
            else:
                path = f"{RAW_WS_PATH}?batch=1" if batch else RAW_WS_PATH
                specs = [WsSpec(path) for _ in range(self.args.subscribers)]
                fan = [len(specs)] * len(devices)
            name = RAW_PER_DEVICE if per_device else RAW_ALL_BATCH if batch else RAW_ALL
            return self.phase(
                TRIO_ALL if trio else name,
                port=raw.port,
                server_pid=raw.pid,
                specs=specs,
                fan=fan,
                mode="realtime",
                target="raw",
                devices=devices,
                base=int(time.time()),
            )
        finally:
            raw.stop()

    def run(self) -> list[PhaseResult]:
        args = self.args
        server = TrackerServer(
            self.workdir,
            self.children,
            self.server_cpus,
            env={
                "TRACKER_SHARING_PUSH_INTERVAL_SECONDS": "0",
                "TRACKER_SHARING_RATE_LIMIT_PER_MINUTE": "100000",
            },
        )
        step(f"creating an instance, {args.devices} devices and tokens with the CLI")
        instance_id = server.create_instance("Bench fleet")
        devices = server.add_devices(instance_id, args.devices)
        read_token = server.token(instance_id, "read")
        admin_token = server.token(instance_id, "admin")
        rows = []
        if "raw" in args.phases:
            rows.append(self.raw_phase(devices, per_device=False))
        if "raw-batch" in args.phases:
            rows.append(self.raw_phase(devices, per_device=False, batch=True))
        if "raw-topics" in args.phases:
            rows.append(self.raw_phase(devices, per_device=True))
        if "trio" in args.phases:
            rows.append(self.raw_phase(devices, per_device=False, trio=True))
        step("starting `python -m tracker serve`")
        server.start()
        try:
            for phase, name, batch in (
                ("realtime", REALTIME, False),
                ("realtime-batch", REALTIME_BATCH, True),
            ):
                if phase not in args.phases:
                    continue
                auth = realtime_auth(read_token, instance_id, batch=batch)
                specs = [WsSpec(f"{API_PREFIX}/ws/realtime", auth) for _ in range(args.subscribers)]
                rows.append(
                    self.phase(
                        name,
                        port=server.port,
                        server_pid=server.pid,
                        specs=specs,
                        fan=[len(specs)] * len(devices),
                        mode="realtime",
                        target="tracker",
                        devices=devices,
                        base=self.next_base(server),
                    )
                )
            if "share" in args.phases:
                step(f"creating {len(devices)} share sessions over HTTP")
                specs = []
                for index, device in enumerate(devices):
                    status, body = http_json(
                        server.port,
                        "POST",
                        f"{API_PREFIX}/sharing/sessions",
                        {"device_token": device.token, "expires_in_hours": 4},
                        {"Authorization": f"Bearer {admin_token}"},
                    )
                    if status != 201:
                        raise RuntimeError(f"creating a share session answered {status}: {body}")
                    path = f"{API_PREFIX}/share/{body['share_token']}/live"
                    specs += [WsSpec(path, None, index)] * args.viewers_per_session
                rows.append(
                    self.phase(
                        SHARE,
                        port=server.port,
                        server_pid=server.pid,
                        specs=specs,
                        fan=[args.viewers_per_session] * len(devices),
                        mode="share",
                        target="tracker",
                        devices=devices,
                        base=self.next_base(server),
                    )
                )
        finally:
            server.stop()
        return rows

    @staticmethod
    def next_base(server: TrackerServer) -> int:
        """Whole-second timestamps after every stored one: each phase's fixes become live."""
        return max(int(time.time()), int(server.max_timestamp()) + 1)


# -- output ------------------------------------------------------------------------------


def step(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        for line in [header, *body]
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def table(rows: list[PhaseResult]) -> str:
    header = [
        "phase",
        "subscribers",
        "positions/s in",
        "deliveries/s",
        "delivered",
        "p50 ms",
        "p99 ms",
        "max ms",
        "ingest p50/p99 ms",
        "server CPU",
        "client CPU",
        "RSS MiB",
    ]
    body = [
        [
            r.name,
            f"{r.connected:,}" + ("" if r.connected == r.subscribers else f"/{r.subscribers:,}"),
            f"{r.positions_per_s:,.0f}",
            f"{r.deliveries_per_s:,.0f}",
            percent(r.delivered / r.expected if r.expected else None),
            fmt(r.p50_ms, ".1f"),
            fmt(r.p99_ms, ".1f"),
            fmt(r.max_ms, ".1f"),
            f"{fmt(r.ingest_p50_ms, '.1f')} / {fmt(r.ingest_p99_ms, '.1f')}",
            percent(r.server_cpu),
            percent(r.client_cpu),
            f"{r.rss_mib:.0f}",
        ]
        for r in rows
    ]
    return render_table(header, body)


def revision() -> str:
    """The tree measured: git commit, and whether tracker/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tracker"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes in tracker/" if dirty else "")


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(
        [
            f"Python {platform.python_version()}",
            f"Hypercorn {version('hypercorn')}",
            f"Quart-Trio {version('quart-trio')}",
            f"trio {version('trio')}",
            f"SQLite {sqlite3.sqlite_version}",
        ]
    )


def wrk_version() -> str:
    """wrk's version line (e.g. `wrk debian/4.1.0-3+b2 [epoll]`)."""
    out = subprocess.run([shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else "wrk"


def machine_line(server_cpus, client_cpus) -> str:
    pinning = (
        f"server on CPU {sorted(server_cpus)}, clients on CPU {sorted(client_cpus)}"
        if server_cpus
        else "no CPU pinning (one core available)"
    )
    return f"machine: os.cpu_count()={os.cpu_count()}, {platform.machine()}, {pinning}"


# -- command line ----------------------------------------------------------------------

PHASES = ("raw", "raw-batch", "raw-topics", "trio", "realtime", "realtime-batch", "share")
DEFAULT_PHASES = ("raw", "raw-batch", "raw-topics", "realtime", "realtime-batch", "share")
RAW_ALL = "ref: raw, all to all"
TRIO_ALL = "ref: trio broadcaster, all to all"
RAW_ALL_BATCH = "ref: raw, all to all, batched"
RAW_PER_DEVICE = "ref: raw, per device"
REALTIME = "tracker: /ws/realtime"
REALTIME_BATCH = 'tracker: /ws/realtime "batch"'
SHARE = "tracker: share live"
REFERENCES_OF = {
    REALTIME: (RAW_ALL, TRIO_ALL),
    REALTIME_BATCH: (RAW_ALL_BATCH,),
    SHARE: (RAW_PER_DEVICE,),
}
# issue #20's fan-out rows (--issue20): the p99 load, fixed; the sustained load is
# --subscribers x --devices at --rate (the full run's 1,000 x 100 at 1 Hz by default).
P99_SUBSCRIBERS, P99_DEVICES, P99_RATE = 100, 50, 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fan-out benchmark: ingest-to-receipt latency and deliveries/s over"
        " /ws/realtime and share live streams, against a raw ASGI broadcaster.",
    )
    parser.add_argument("--seconds", type=float, help="measured window per phase (default 20)")
    parser.add_argument("--warmup", type=float, help="warm-up before each window (default 10 s)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 s windows, 100 subscribers, 10 devices, 1 s warm-up",
    )
    parser.add_argument("--subscribers", type=int, help="/ws/realtime and reference clients (1000)")
    parser.add_argument("--devices", type=int, help="devices sending positions (100)")
    parser.add_argument("--rate", type=float, default=1.0, help="positions/s per device (1)")
    parser.add_argument(
        "--viewers-per-session", type=int, help="share viewers per device's session (10)"
    )
    parser.add_argument(
        "--client-processes", type=int, default=4, help="WebSocket client processes (4)"
    )
    parser.add_argument(
        "--closed-loop",
        action="store_true",
        help="each device waits for the answer to a position before sending the next"
        " (default: open loop, pipelined, the offered load held at devices x rate)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(DEFAULT_PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all but trio)",
    )
    parser.add_argument(
        "--issue20",
        action="store_true",
        help="issue #20's two fan-out rows: raw + realtime at 100 subscribers x 50 devices"
        " x 1 Hz (p99), then trio + realtime at --subscribers x --devices x --rate"
        " (deliveries/s); --phases is ignored",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy the server in each window")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument(
        "--role",
        choices=["bench", "raw-broadcaster", "trio-broadcaster"],
        default="bench",
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 10.0)
    args.subscribers = args.subscribers or (100 if args.quick else 1000)
    args.devices = args.devices or (10 if args.quick else 100)
    args.viewers_per_session = args.viewers_per_session or 10
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}: choose from {','.join(PHASES)}")
    if min(args.seconds, args.subscribers, args.devices, args.rate, args.client_processes) <= 0:
        parser.error("--seconds, --subscribers, --devices, --rate, --client-processes must be > 0")
    return args


class Issue20Bench:
    """Issue #20's two fan-out rows in one run (--issue20): the p99 beside the raw ASGI
    broadcaster at 100 subscribers x 50 positions/s, and deliveries/s beside the
    hand-written trio broadcaster at the sustained load (--subscribers x --devices)."""

    def __init__(self, args: argparse.Namespace, workdir: Path, children: Children):
        self.p99_args = argparse.Namespace(
            **{
                **vars(args),
                "subscribers": P99_SUBSCRIBERS,
                "devices": P99_DEVICES,
                "rate": P99_RATE,
                "phases": ["raw", "realtime"],
            }
        )
        self.load_args = argparse.Namespace(**{**vars(args), "phases": ["trio", "realtime"]})
        self.workdir = workdir
        self.children = children
        self.server_cpus, self.client_cpus = split_cpus()

    def run(self) -> tuple[list[PhaseResult], list[PhaseResult]]:
        parts = []
        for name, args in (("p99", self.p99_args), ("sustained", self.load_args)):
            workdir = self.workdir / name
            workdir.mkdir()
            parts.append(FanoutBench(args, workdir, self.children).run())
        return parts[0], parts[1]


def print_run(args: argparse.Namespace, rows: list[PhaseResult], nofile: int) -> None:
    print(
        f"parameters: --seconds {args.seconds:g} --warmup {args.warmup:g} --subscribers"
        f" {args.subscribers} --devices {args.devices} --rate {args.rate:g}"
        f" --viewers-per-session {args.viewers_per_session} --client-processes"
        f" {args.client_processes}; sender {'closed' if args.closed_loop else 'open'} loop;"
        f" share push interval 0 s; open-files limit {nofile}"
    )
    print()
    print(table(rows))
    print()
    by_name = {r.name: r for r in rows}
    ratios = []
    for r in rows:
        for reference in REFERENCES_OF.get(r.name, ()):
            raw = by_name.get(reference)
            if raw is None or not raw.delivered:
                continue
            p99 = f"{r.p99_ms / raw.p99_ms:.2f}x" if r.p99_ms is not None and raw.p99_ms else "-"
            ratios.append(
                f"ratio {r.name} / {raw.name}: deliveries/s"
                f" {r.deliveries_per_s / raw.deliveries_per_s:.2f}x, p99 {p99}"
            )
    if ratios:
        print("\n".join(ratios))
        print()


def print_notes(rows: list[PhaseResult]) -> None:
    for r in rows:
        print(
            f"note: {r.name}: server CPU {r.server_system * 100:.0f}% in the kernel;"
            f" event-loop thread {r.loop_share * 100:.0f}% of the server's CPU;"
            f" whole machine {r.machine_cpu * 100:.0f}% of one core"
        )
        for note in r.notes:
            print(f"note: {r.name}: {note}")


def issue20_rows(p99_rows: list[PhaseResult], load_rows: list[PhaseResult]) -> str:
    """The two rows of issue #20's table, each against its reference of the same run."""
    p99 = {r.name: r for r in p99_rows}
    load = {r.name: r for r in load_rows}
    body = []
    tracker, raw = p99.get(REALTIME), p99.get(RAW_ALL)
    if tracker and raw and tracker.p99_ms and raw.p99_ms:
        body.append(
            [
                f"fan-out p99, {P99_SUBSCRIBERS} subscribers x"
                f" {P99_DEVICES * P99_RATE:g} positions/s: tracker vs raw-ASGI broadcaster",
                f"{tracker.p99_ms:.1f} ms",
                f"{raw.p99_ms:.1f} ms",
                f"{tracker.p99_ms / raw.p99_ms:.2f}x",
                "<= 1.5x",
            ]
        )
    tracker, trio_ref = load.get(REALTIME), load.get(TRIO_ALL)
    if tracker and trio_ref and trio_ref.delivered:
        body.append(
            [
                f"fan-out sustained deliveries/s ({tracker.subscribers:,} subscribers x"
                f" {tracker.positions_per_s:,.0f} positions/s): tracker vs hand-written trio"
                " broadcaster",
                f"{tracker.deliveries_per_s:,.0f}"
                f" ({percent(tracker.delivered / tracker.expected if tracker.expected else None)})",
                f"{trio_ref.deliveries_per_s:,.0f}"
                f" ({percent(trio_ref.delivered / trio_ref.expected if trio_ref.expected else None)})",
                f"{tracker.deliveries_per_s / trio_ref.deliveries_per_s:.2f}x",
                ">= 0.95x",
            ]
        )
        body.append(
            [
                "  the same, server CPU per delivery (what the most deliveries/s of one core"
                " follow from)",
                f"{cpu_per_delivery_us(tracker):.1f} us",
                f"{cpu_per_delivery_us(trio_ref):.1f} us",
                f"{cpu_per_delivery_us(trio_ref) / cpu_per_delivery_us(tracker):.2f}x",
                ">= 0.95x",
            ]
        )
    return render_table(["row", "tracker", "reference", "ratio", "aim"], body)


def cpu_per_delivery_us(row: PhaseResult) -> float:
    """Server CPU time per position delivered (microseconds): less noisy than deliveries/s
    on a shared machine, and 1 s / it is what one core could deliver."""
    return row.server_cpu * row.seconds / max(row.delivered, 1) * 1e6


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "raw-broadcaster":
        serve_raw_app(raw_broadcaster_app(), args.port)
        return 0
    if args.role == "trio-broadcaster":
        serve_trio_broadcaster(args.port)
        return 0

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    nofile = raise_nofile_limit()
    started = time.time()

    bench_class = Issue20Bench if args.issue20 else FanoutBench
    outcome = run_bench(
        "tracker-bench-fanout-",
        args.keep,
        lambda workdir, children: bench_class(args, workdir, children),
    )
    if outcome is None:
        return 130
    bench, rows = outcome

    print(f"tracker fan-out benchmark, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}")
    print(machine_line(bench.server_cpus, bench.client_cpus))
    print(f"stack: {versions()}")
    print(f"tree: {revision()}")
    if args.issue20:
        p99_rows, load_rows = rows
        print_run(bench.p99_args, p99_rows, nofile)
        print_run(bench.load_args, load_rows, nofile)
        print("issue #20, fan-out (each against its reference measured in this run):")
        print(issue20_rows(p99_rows, load_rows))
        print()
        rows = p99_rows + load_rows
    else:
        print_run(args, rows, nofile)
    print("latency = receipt - send time of each position (same clock); delivered = received")
    print("/ (sent x subscribers of the device); server and client CPU are shares of one core")
    print("(100% = one core busy); client CPU counts every receiver and the sender.")
    print(f"'{RAW_PER_DEVICE}': {args.viewers_per_session} clients per device, each getting only")
    print("that device's positions (the share viewers' fan-out); 'all to all': every client")
    print("gets every device (the /ws/realtime fan-out).")
    print(f"'{TRIO_ALL}': no Hypercorn, no ASGI: trio sockets, each frame built once")
    print("and written with send_all.")
    print_notes(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
