"""Memory benchmark: the server's RSS per idle authenticated /ws/realtime connection.

    python bench/memory.py                 # full run: 5,000 connections, held 30 s
    python bench/memory.py --quick         # smoke run: 500 connections, held 5 s
    python bench/memory.py --connections 10000 --client-processes 10

Steps:

  1. `python -m tracker serve` in its own process (open-files limit raised to the hard
     limit), an instance with --devices devices that each have a position, a read token.
  2. Warm-up: 50 connections open, authenticate, get their snapshot, and close, so code
     paths and caches touched by the first connection do not count. RSS "before".
  3. --client-processes processes open --connections connections between them, one
     process after the other; RSS (VmRSS of /proc/PID/status) after each.
  4. Every connection is held idle for --seconds (answering the server's pings; the
     default 30 s includes one ping round at 25 s); RSS at the end: "after".
  5. All connections close; RSS once more (what the process gives back).

KiB per connection = (after - before) / connections. The same is measured on the raw
ASGI broadcaster of bench/fanout.py (Hypercorn's trio worker, nothing else) as the
stack's floor. Kernel socket buffers are not in RSS.

Shares its harness (server process, CLI, WebSocket client) with bench/fanout.py.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import (  # noqa: E402
    API_PREFIX,
    C_STOP_AT,
    C_WINDOW_END,
    C_WINDOW_START,
    CONNECT_TIMEOUT_SECONDS,
    RAW_WS_PATH,
    Children,
    Collector,
    RawBroadcaster,
    TrackerServer,
    WsSpec,
    _raise_on_sigterm,
    in_workdir,
    machine_line,
    raise_nofile_limit,
    realtime_auth,
    receiver_process,
    render_table,
    revision,
    rss_kib,
    split_cpus,
    spread_sources,
    step,
    versions,
)

WARMUP_CONNECTIONS = 50
SETTLE_SECONDS = 2.0
GIB = 1024 * 1024  # KiB


class Holder:
    """Client processes holding idle WebSocket connections until told to stop."""

    def __init__(self, port: int, children: Children, cpus: set[int] | None):
        self.port = port
        self.children = children
        self.cpus = cpus
        self.collector = Collector()
        ctx = multiprocessing.get_context("fork")
        self.control = ctx.RawArray("d", 3)
        self.control[C_WINDOW_START] = self.control[C_WINDOW_END] = 0.0
        self.control[C_STOP_AT] = time.time() + 3600  # a hard bound; stop() ends it sooner
        self.processes: list = []
        self.opened = self.failed = 0
        self.errors: dict = {}

    def open(self, specs: list[WsSpec], name: str) -> None:
        """One more process with these connections; returns once all are open (or failed)."""
        process = self.children.spawn(
            receiver_process,
            (self.port, specs, "idle", {}, [], 0, 0, self.control, self.collector.queue,
             self.cpus, name),
        )  # fmt: skip
        self.processes.append(process)
        ready = self.collector.gather(
            "ready", 1, time.time() + CONNECT_TIMEOUT_SECONDS + 30, self.processes
        )[0]
        self.opened += ready[2]
        self.failed += ready[3]
        for key, count in ready[4].items():
            self.errors[key] = self.errors.get(key, 0) + count

    def stop(self) -> list[dict]:
        """Close every connection; the processes' final reports."""
        self.control[C_STOP_AT] = 0.0
        try:
            done = self.collector.gather("done", len(self.processes), time.time() + 60, [])
        finally:
            for process in self.processes:
                process.join(10)
                self.children.stop(process)
        return [item[2] for item in done]


def measure(
    name: str,
    pid: int,
    port: int,
    make_specs,
    args: argparse.Namespace,
    children: Children,
    client_cpus: set[int] | None,
) -> dict:
    """RSS of a running server: warm, then with args.connections idle WebSockets, then after."""
    result: dict = {"name": name, "cold": rss_kib(pid), "steps": [], "notes": []}
    step(f"{name}: warm-up ({WARMUP_CONNECTIONS} connections opened and closed)")
    warm = Holder(port, children, client_cpus)
    warm.open(spread_sources(make_specs(WARMUP_CONNECTIONS)), f"{name}-warmup")
    warm.stop()
    time.sleep(SETTLE_SECONDS)
    result["before"] = rss_kib(pid)
    holder = Holder(port, children, client_cpus)
    specs = spread_sources(make_specs(args.connections))
    chunks = [specs[i :: args.client_processes] for i in range(args.client_processes)]
    try:
        for index, chunk in enumerate(chunks):
            if not chunk:
                continue
            holder.open(chunk, f"{name}-{index}")
            time.sleep(SETTLE_SECONDS / 2)
            result["steps"].append((holder.opened, rss_kib(pid)))
            step(f"{name}: {holder.opened} open, RSS {rss_kib(pid) / 1024:.0f} MiB")
        step(f"{name}: holding {holder.opened} idle connections for {args.seconds:g} s")
        peak, end = 0, time.time() + args.seconds
        while time.time() < end:
            time.sleep(min(1.0, max(0.0, end - time.time())))
            peak = max(peak, rss_kib(pid))
        result["after"] = rss_kib(pid)
        result["peak"] = max(peak, result["after"])
        result["opened"] = holder.opened
    finally:
        reports = holder.stop()
    open_at_end = sum(r["open_at_end"] for r in reports)
    pongs = sum(r["pongs"] for r in reports)
    closes: dict = {}
    for r in reports:
        for key, count in r["closes"].items():
            closes[key] = closes.get(key, 0) + count
    if holder.failed:
        result["notes"].append(f"{holder.failed} connections failed: {holder.errors}")
    if open_at_end < holder.opened:
        result["notes"].append(
            f"{holder.opened - open_at_end} connections were closed while held: {closes}"
        )
    result["notes"].append(
        f"{open_at_end} of {holder.opened} connections still open at the end of the hold;"
        f" {pongs} server pings answered"
    )
    time.sleep(SETTLE_SECONDS)
    result["closed"] = rss_kib(pid)
    result["hwm"] = rss_kib(pid, "VmHWM")
    return result


def run(args: argparse.Namespace, workdir: Path, children: Children) -> tuple[list[dict], dict]:
    server_cpus, client_cpus = split_cpus()
    results = []
    info = {"server_cpus": server_cpus, "client_cpus": client_cpus}
    if not args.no_reference:
        raw = RawBroadcaster(workdir, children, server_cpus)
        step("reference: raw ASGI broadcaster on Hypercorn's trio worker")
        raw.start()
        try:
            results.append(
                measure(
                    "ref: raw ASGI WebSocket",
                    raw.pid,
                    raw.port,
                    lambda n: [WsSpec(RAW_WS_PATH) for _ in range(n)],
                    args,
                    children,
                    client_cpus,
                )
            )
        finally:
            raw.stop()
    server = TrackerServer(workdir, children, server_cpus)
    step(f"creating an instance, {args.devices} devices and a read token with the CLI")
    instance_id = server.create_instance("Bench fleet")
    devices = server.add_devices(instance_id, args.devices)
    token = server.token(instance_id, "read")
    server.start()
    info["nofile"] = Path(f"/proc/{server.pid}/limits").read_text()
    try:
        now = int(time.time())
        for index, device in enumerate(devices):
            server.ingest_one(device, now - 60, 51.5 + index * 1e-3)
        auth = realtime_auth(token, instance_id)
        results.append(
            measure(
                "tracker: /ws/realtime",
                server.pid,
                server.port,
                lambda n: [WsSpec(f"{API_PREFIX}/ws/realtime", auth) for _ in range(n)],
                args,
                children,
                client_cpus,
            )
        )
    finally:
        server.stop()
    return results, info


def nofile_of(limits: str) -> str:
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            return "/".join(line.split()[3:5])
    return "?"


def table(results: list[dict]) -> str:
    header = [
        "server",
        "state",
        "connections",
        "VmRSS MiB",
        "vs before MiB",
        "KiB per connection",
    ]
    body = []
    for r in results:

        def row(state: str, count: int | str, kib: int, per: bool = True, r: dict = r) -> list[str]:
            delta = kib - r["before"]
            per_conn = f"{delta / count:.1f}" if per and isinstance(count, int) and count else "-"
            return [r["name"], state, f"{count:,}" if isinstance(count, int) else count,
                    f"{kib / 1024:.1f}", f"{delta / 1024:+.1f}", per_conn]  # fmt: skip

        body.append(row("started (cold)", "-", r["cold"], False))
        body.append(row("before (warm)", 0, r["before"], False))
        for opened, kib in r["steps"]:
            body.append(row("opening", opened, kib))
        body.append(row("after the hold", r["opened"], r["after"]))
        body.append(row("all closed", 0, r["closed"], False))
    return render_table(header, body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Memory benchmark: server RSS per idle authenticated /ws/realtime connection."
    )
    parser.add_argument("--connections", type=int, help="idle connections to open (5000)")
    parser.add_argument("--seconds", type=float, help="how long to hold them idle (30)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 connections, 5 s")
    parser.add_argument("--devices", type=int, default=10, help="devices with a position (10)")
    parser.add_argument(
        "--client-processes", type=int, help="client processes, opened one after the other (5)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the raw ASGI reference")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    args.connections = args.connections or (500 if args.quick else 5000)
    args.seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 30.0)
    args.client_processes = args.client_processes or 5
    if args.connections < 1 or args.client_processes < 1 or args.seconds < 0:
        parser.error("--connections and --client-processes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    nofile = raise_nofile_limit()
    needed = args.connections + 200
    if nofile < needed:
        print(
            f"warning: the open-files limit is {nofile}, under the {needed} the server needs",
            file=sys.stderr,
        )
    started = time.time()
    outcome = in_workdir(
        "tracker-bench-memory-", args.keep, lambda workdir, children: run(args, workdir, children)
    )
    if outcome is None:
        return 130
    results, info = outcome

    print(f"tracker memory benchmark, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}")
    print(machine_line(info["server_cpus"], info["client_cpus"]))
    print(f"stack: {versions()}")
    print(f"tree: {revision()}")
    print(
        f"parameters: --connections {args.connections} --seconds {args.seconds:g} --devices"
        f" {args.devices} --client-processes {args.client_processes}; server open-files limit"
        f" {nofile_of(info['nofile'])} (soft/hard); {platform.python_implementation()}"
    )
    print()
    print(table(results))
    print()
    for r in results:
        delta = r["after"] - r["before"]
        per = delta / r["opened"] if r["opened"] else float("nan")
        verdict = []
        if r["name"].startswith("tracker"):
            verdict = [
                f"target {args.connections:,} idle under 1 GiB:"
                f" {'met' if r['after'] < GIB and r['opened'] >= args.connections else 'NOT met'}",
                f"aim <= 35 KiB per idle WebSocket: {'met' if per <= 35 else 'NOT met'}",
            ]
        print(
            f"{r['name']}: {r['opened']:,} idle connections, {r['after'] / 1024:.1f} MiB total,"
            f" {per:.1f} KiB per connection (peak {r['peak'] / 1024:.1f} MiB, VmHWM"
            f" {r['hwm'] / 1024:.1f} MiB)" + ("; " + "; ".join(verdict) if verdict else "")
        )
    if len(results) == 2 and results[0]["opened"] and results[1]["opened"]:
        ref, ours = results
        ratio = ((ours["after"] - ours["before"]) / ours["opened"]) / (
            (ref["after"] - ref["before"]) / ref["opened"]
        )
        print(f"ratio tracker / raw ASGI, KiB per connection: {ratio:.2f}x")
    print()
    print("KiB per connection = (RSS after the hold - RSS before) / connections; RSS is the")
    print("server process's VmRSS (kernel socket buffers are not included).")
    for r in results:
        for note in r["notes"]:
            print(f"note: {r['name']}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
