"""Scale points (issue #20): four figures, each beside its target, PASS or FAIL.

    python bench/scale.py                       # full run (about 6 min)
    python bench/scale.py --quick               # smoke run: a tenth of the connections
    python bench/scale.py --phases reconnect,idle

Phases (--phases, comma-separated), each on a fresh `python -m tracker serve`:

  subscribers  --subscribers (1,000) `/ws/realtime` subscribers of one instance, --devices
               (5) devices each posting 1 position/s (5 publishes/s), for --seconds (20):
               every subscriber must get every position (no drop: the missing ones are
               counted), and the p99 from the POST to receipt must be within 2x the raw
               ASGI broadcaster's (bench/fanout.py), measured the same way in the same run.
  viewers      --viewers (3,000) `/share/{token}/live` viewers of ONE share session; the
               device posts one position every 2 s: the time from the POST to the LAST
               viewer's receipt (the worst publish) must be within 500 ms, every viewer
               getting every position. The raw broadcaster with as many clients on one
               topic is shown beside it (for information: the aim is absolute).
  reconnect    --reconnect (2,000) `/ws/realtime` clients connect and authenticate, are
               all dropped at once (sockets closed, no close frame), and all reconnect at
               once (no cap on handshakes in flight): the time from the reconnect to the
               last `welcome` (authenticated and subscribed) must be within 5 s. The
               same storm on the raw broadcaster (handshake only) is shown beside it,
               and the server's CPU per connection (--profile DIR: py-spy), with what
               else could have set the time: the clients' CPU, other processes, and
               the kernel's listen-queue overflows and SYN retransmits.
  idle         --idle (10,000) idle authenticated `/ws/realtime` connections, held --hold
               (30) s (one ping round): the server's RSS (VmRSS, /proc) must stay under
               1 GiB. Measured by bench/memory.py's `measure`.

The server runs with `TRACKER_SERVER_MAX_CONNECTIONS_PER_ADDRESS=0` (no per-address cap),
`TRACKER_SHARING_RATE_LIMIT_PER_MINUTE=1000000` (3,000 viewers open the share link at
once) and `TRACKER_SHARING_PUSH_INTERVAL_SECONDS=0` (every position is pushed to viewers;
there is no per-session viewer cap). The clients also spread over the source addresses
127.0.0.10-209 (loopback), so neither the per-address cap nor the ephemeral ports of one
address are what limits. This script, the server and the client processes raise their
open-files limit to the hard limit (setrlimit); the idle phase needs 10,000 + some.

The harness (server, CLI, WebSocket client processes, sender, raw reference, /proc
readings) is bench/fanout.py's. To count drops exactly, the sender stops --tail (2) s
before the receivers' window closes and the window starts with the first send: every
position sent falls in the window, and one not received by the end of it is missing.

Every process this script starts is stopped at the end, on an error and on Ctrl-C;
loopback only; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout  # noqa: E402
from fanout import (  # noqa: E402
    API_PREFIX,
    C_STOP_AT,
    C_WINDOW_END,
    C_WINDOW_START,
    CONNECT_TIMEOUT_SECONDS,
    RAW_WS_PATH,
    Children,
    Collector,
    PhaseResult,
    RawBroadcaster,
    TrackerServer,
    WsSpec,
    _raise_on_sigterm,
    http_json,
    in_workdir,
    machine_busy_seconds,
    machine_line,
    process_cpu_seconds,
    raise_nofile_limit,
    realtime_auth,
    receiver_process,
    render_table,
    revision,
    run_phase,
    split,
    split_cpus,
    spread_sources,
    start_profiler,
    step,
    top_functions,
    versions,
)
from memory import measure  # noqa: E402

PHASES = ("subscribers", "viewers", "reconnect", "idle")
GIB_KIB = 1024 * 1024
SERVER_ENV = {
    "TRACKER_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "TRACKER_SHARING_RATE_LIMIT_PER_MINUTE": "1000000",
    "TRACKER_SHARING_PUSH_INTERVAL_SECONDS": "0",
}
SUBSCRIBERS_P99_RATIO = 2.0
VIEWERS_LAST_MS = 500.0
RECONNECT_SECONDS = 5.0
IDLE_RSS_KIB = GIB_KIB
VIEWER_PUBLISH_RATE = 0.5  # one position every 2 s: each publish is seen on its own


class Verdict:
    """One scale point: its figure, target, reference (or '-'), PASS/FAIL and notes."""

    def __init__(self, name: str, figure: str, target: str, reference: str, passed: bool):
        self.name = name
        self.figure = figure
        self.target = target
        self.reference = reference
        self.passed = passed
        self.notes: list[str] = []


@contextlib.contextmanager
def patched(name: str, value):
    """Set bench/fanout.py's module global `name` for a while (forked clients inherit it)."""
    old = getattr(fanout, name)
    setattr(fanout, name, value)
    try:
        yield
    finally:
        setattr(fanout, name, old)


def sender_stopping_early(tail: float):
    """fanout's sender, told to stop `tail` s before the receivers' window ends."""
    original = fanout.sender_process

    def sender(port, target, devices, rate, base, sent_times, max_seq, start_at, window, *rest):
        original(
            port, target, devices, rate, base, sent_times, max_seq, start_at,
            (window[0], window[1] - tail), *rest,
        )  # fmt: skip

    return sender


class ScaleBench:
    def __init__(self, args: argparse.Namespace, workdir: Path, children: Children):
        self.args = args
        self.workdir = workdir
        self.children = children
        self.server_cpus, self.client_cpus = split_cpus()
        self.rows: list[PhaseResult] = []  # the fan-out phases' full figures

    # -- helpers ---------------------------------------------------------------------

    def server(self, name: str, devices: int) -> tuple[TrackerServer, str, list, str, str]:
        """A fresh server (its own database): instance, devices, read and admin tokens."""
        (self.workdir / name).mkdir()
        server = TrackerServer(self.workdir / name, self.children, self.server_cpus, SERVER_ENV)
        step(f"{name}: creating an instance, {devices} devices and tokens with the CLI")
        instance_id = server.create_instance("Scale fleet")
        device_list = server.add_devices(instance_id, devices)
        read_token = server.token(instance_id, "read")
        admin_token = server.token(instance_id, "admin")
        step(f"{name}: starting `python -m tracker serve`")
        server.start()
        return server, instance_id, device_list, read_token, admin_token

    def counted_phase(self, name: str, rate: float, **kwargs) -> PhaseResult:
        """fanout's run_phase with every position counted: the window opens with the first
        send, and the sender stops --tail s before it closes."""
        args = argparse.Namespace(
            warmup=0.0,
            seconds=self.args.seconds + self.args.tail,
            rate=rate,
            client_processes=self.args.client_processes,
            closed_loop=False,
            phases=[],
        )
        with patched("sender_process", sender_stopping_early(self.args.tail)):
            row = run_phase(
                name,
                args=args,
                children=self.children,
                client_cpus=self.client_cpus,
                profile_dir=None,
                **kwargs,
            )
        self.rows.append(row)
        return row

    def raw_phase(self, name: str, specs: list[WsSpec], devices: list, rate: float):
        raw = RawBroadcaster(self.workdir, self.children, self.server_cpus)
        step("reference: raw ASGI broadcaster on Hypercorn's trio worker")
        raw.start()
        try:
            return self.counted_phase(
                name,
                rate,
                port=raw.port,
                server_pid=raw.pid,
                specs=specs,
                fan=[sum(1 for s in specs if s.device in (-1, d)) for d in range(len(devices))],
                mode="realtime",
                target="raw",
                devices=devices,
                base=int(time.time()),
            )
        finally:
            raw.stop()

    @staticmethod
    def missing(row: PhaseResult) -> str:
        lost = row.expected - row.delivered
        text = f"{row.delivered:,} of {row.expected:,} deliveries"
        if lost > 0:
            return text + f", {lost:,} missing"
        if lost < 0:
            return text + f", {-lost:,} more than sent (duplicates)"
        return text + ", none missing"

    # -- a: subscribers --------------------------------------------------------------

    def subscribers(self) -> Verdict:
        args = self.args
        server, instance_id, devices, read_token, _ = self.server("subscribers", args.devices)
        try:
            specs = [
                WsSpec(f"{API_PREFIX}/ws/realtime", realtime_auth(read_token, instance_id))
                for _ in range(args.subscribers)
            ]
            row = self.counted_phase(
                "scale: /ws/realtime subscribers",
                1.0,
                port=server.port,
                server_pid=server.pid,
                specs=specs,
                fan=[len(specs)] * len(devices),
                mode="realtime",
                target="tracker",
                devices=devices,
                base=fanout.FanoutBench.next_base(server),
            )
        finally:
            server.stop()
        raw_specs = [WsSpec(RAW_WS_PATH) for _ in range(args.subscribers)]
        raw = self.raw_phase("scale: ref raw, all to all", raw_specs, devices, 1.0)
        ratio = row.p99_ms / raw.p99_ms if row.p99_ms and raw.p99_ms else None
        complete = row.expected > 0 and row.delivered == row.expected
        passed = complete and ratio is not None and ratio <= SUBSCRIBERS_P99_RATIO
        verdict = Verdict(
            f"a. {row.connected:,} subscribers x {len(devices)} publishes/s",
            f"p99 {fmt_ms(row.p99_ms)} ({fmt_ratio(ratio)} ref); {self.missing(row)}",
            f"every position; p99 <= {SUBSCRIBERS_P99_RATIO:g}x ref",
            f"p99 {fmt_ms(raw.p99_ms)}; {self.missing(raw)}",
            passed,
        )
        verdict.notes += [f"{row.name}: {n}" for n in row.notes]
        verdict.notes += [f"{raw.name}: {n}" for n in raw.notes]
        if row.connected < row.subscribers:
            verdict.passed = False
        return verdict

    # -- b: share viewers ----------------------------------------------------------------

    def viewers(self) -> Verdict:
        args = self.args
        server, _, devices, _, admin_token = self.server("viewers", 1)
        try:
            status, body = http_json(
                server.port,
                "POST",
                f"{API_PREFIX}/sharing/sessions",
                {"device_token": devices[0].token, "expires_in_hours": 4},
                {"Authorization": f"Bearer {admin_token}"},
            )
            if status != 201:
                raise RuntimeError(f"creating a share session answered {status}: {body}")
            path = f"{API_PREFIX}/share/{body['share_token']}/live"
            specs = [WsSpec(path, None, 0) for _ in range(args.viewers)]
            row = self.counted_phase(
                "scale: share viewers, one session",
                VIEWER_PUBLISH_RATE,
                port=server.port,
                server_pid=server.pid,
                specs=specs,
                fan=[len(specs)],
                mode="share",
                target="tracker",
                devices=devices,
                base=fanout.FanoutBench.next_base(server),
            )
        finally:
            server.stop()
        raw = None
        if not args.no_reference:
            raw_specs = [
                WsSpec(f"{RAW_WS_PATH}?topic={devices[0].token}", None, 0)
                for _ in range(args.viewers)
            ]
            raw = self.raw_phase(
                "scale: ref raw, one topic", raw_specs, devices, VIEWER_PUBLISH_RATE
            )
        complete = row.expected > 0 and row.delivered == row.expected
        passed = complete and row.max_ms is not None and row.max_ms <= VIEWERS_LAST_MS
        publishes = row.expected // max(1, len(specs))
        verdict = Verdict(
            f"b. one publish to {row.connected:,} share viewers",
            f"last viewer {fmt_ms(row.max_ms)} (worst of {publishes} publishes; p50"
            f" {fmt_ms(row.p50_ms)}); {self.missing(row)}",
            f"last <= {VIEWERS_LAST_MS:g} ms, every viewer",
            f"last {fmt_ms(raw.max_ms)}; {self.missing(raw)}" if raw else "-",
            passed and row.connected == row.subscribers,
        )
        if publishes:
            verdict.notes.append(
                f"{row.name}: the server used {row.server_cpu * row.seconds / publishes * 1000:.0f}"
                f" ms of CPU per publish ({row.server_cpu * 100:.0f}% of one core over"
                f" {row.seconds:g} s, {publishes} publishes to {row.connected:,} viewers)"
            )
        verdict.notes += [f"{row.name}: {n}" for n in row.notes]
        if raw:
            verdict.notes += [f"{raw.name}: {n}" for n in raw.notes]
        return verdict

    # -- c: reconnect storm ------------------------------------------------------------

    def open_all(self, port: int, specs: list[WsSpec], name: str, collector: Collector, control):
        """Client processes opening specs (all at once); (processes, opened, failed, errors)."""
        processes = [
            self.children.spawn(
                receiver_process,
                (
                    port,
                    chunk,
                    "idle",
                    {},
                    [],
                    0,
                    0,
                    control,
                    collector.queue,
                    self.client_cpus,
                    f"{name}-{index}",
                ),
            )  # fmt: skip
            for index, chunk in enumerate(split(specs, self.args.client_processes))
        ]
        ready = collector.gather(
            "ready", len(processes), time.time() + CONNECT_TIMEOUT_SECONDS + 30, processes
        )
        errors: Counter = Counter()
        for item in ready:
            errors.update(item[4])
        return processes, sum(r[2] for r in ready), sum(r[3] for r in ready), dict(errors)

    def close_all(self, processes: list, collector: Collector, control) -> None:
        control[C_STOP_AT] = 0.0  # each client process closes its sockets and reports
        try:
            collector.gather("done", len(processes), time.time() + 60, [])
        finally:
            for process in processes:
                process.join(10)
                self.children.stop(process)

    def new_control(self):
        control = multiprocessing.get_context("fork").RawArray("d", 3)
        control[C_WINDOW_START] = control[C_WINDOW_END] = 0.0
        control[C_STOP_AT] = time.time() + CONNECT_TIMEOUT_SECONDS + 120  # a hard bound
        return control

    def reconnect(self) -> Verdict:
        args = self.args
        server, instance_id, devices, read_token, _ = self.server("reconnect", 10)
        try:
            now = int(time.time())
            for index, device in enumerate(devices):  # every connection gets a snapshot
                server.ingest_one(device, now - 60, 51.5 + index * 1e-3)
            auth = realtime_auth(read_token, instance_id)
            specs = spread_sources(
                [WsSpec(f"{API_PREFIX}/ws/realtime", auth) for _ in range(args.reconnect)]
            )
            seconds, reopened, notes = self.storm(server.port, server.pid, specs, "reconnect")
        finally:
            server.stop()
        reference = "-"
        if not args.no_reference:
            raw = RawBroadcaster(self.workdir, self.children, self.server_cpus)
            step("reference: raw ASGI broadcaster on Hypercorn's trio worker")
            raw.start()
            try:
                raw_specs = spread_sources([WsSpec(RAW_WS_PATH) for _ in range(args.reconnect)])
                raw_seconds, raw_opened, raw_notes = self.storm(
                    raw.port, raw.pid, raw_specs, "ref-reconnect"
                )
            finally:
                raw.stop()
            reference = f"{raw_seconds:.2f} s to open all ({raw_opened:,} opened; no auth)"
            notes += [f"ref raw: {n}" for n in raw_notes]
        return self.with_notes(
            Verdict(
                f"c. {len(specs):,} clients reconnecting at once",
                f"all subscribed in {seconds:.2f} s ({reopened:,} welcomed,"
                f" {len(specs) - reopened} failed)",
                f"all within {RECONNECT_SECONDS:g} s",
                reference,
                reopened == len(specs) and seconds <= RECONNECT_SECONDS,
            ),
            notes,
        )

    def storm(self, port: int, pid: int, specs: list[WsSpec], name: str):
        """Open specs, drop them all, reopen them all at once: (seconds, reopened, notes)."""
        notes = []
        collector = Collector()
        control = self.new_control()
        step(f"{name}: opening {len(specs):,} WebSocket connections")
        started = time.time()
        processes, opened, failed, errors = self.open_all(port, specs, "first", collector, control)
        first = time.time() - started
        notes.append(
            f"first connect ({fanout.MAX_INFLIGHT_HANDSHAKES} handshakes in flight per"
            f" process): {opened:,} open in {first:.2f} s, {failed} failed {errors or ''}"
        )
        step(f"{name}: {opened:,} open; dropping them all")
        self.close_all(processes, collector, control)
        step(f"{name}: {len(specs):,} clients reconnecting at once")
        collector = Collector()
        control = self.new_control()
        profiler = self.profile(pid, name)
        with patched("MAX_INFLIGHT_HANDSHAKES", len(specs)):
            tcp, busy = listen_counters(), machine_busy_seconds()
            started, cpu = time.time(), process_cpu_seconds(pid)
            processes, reopened, refailed, errors = self.open_all(
                port, specs, "again", collector, control
            )
            seconds = time.time() - started
            cpu = process_cpu_seconds(pid) - cpu
            busy = machine_busy_seconds() - busy
            clients = sum(cpu_or_zero(process.pid) for process in processes)
            tcp = {name: value - tcp.get(name, 0) for name, value in listen_counters().items()}
        notes += self.profiled(profiler, name)
        self.close_all(processes, collector, control)
        if refailed:
            notes.append(f"reconnect: {refailed} connections failed: {errors}")
        notes.append(
            f"the server used {cpu:.2f} s of CPU for the reconnect ({cpu / len(specs) * 1000:.2f}"
            f" ms per connection; {cpu / seconds * 100:.0f}% of one core over the"
            f" {seconds:.2f} s): on an idle core it would take about that long"
        )
        # What else could have set the time: the clients, the rest of the machine, the kernel.
        others = max(0.0, busy - cpu - clients)
        notes.append(
            f"during the reconnect: the client processes used {clients / seconds * 100:.0f}% of"
            f" a core, other processes about {others / seconds * 100:.0f}%; the kernel's"
            f" listen-queue overflows {tcp.get('ListenOverflows', 0)}, drops"
            f" {tcp.get('ListenDrops', 0)}, SYN retransmits {tcp.get('TCPSynRetrans', 0)}"
            " (whole machine)"
        )
        return seconds, reopened, notes

    # -- d: idle connections -------------------------------------------------------------

    def idle(self) -> Verdict:
        args = self.args
        nofile = raise_nofile_limit()
        if nofile < args.idle + 1000:
            raise RuntimeError(
                f"the open-files hard limit is {nofile}: {args.idle} connections need about"
                f" {args.idle + 1000} (raise it, e.g. `ulimit -Hn`, or lower --idle)"
            )
        server, instance_id, devices, read_token, _ = self.server("idle", 10)
        try:
            now = int(time.time())
            for index, device in enumerate(devices):
                server.ingest_one(device, now - 60, 51.5 + index * 1e-3)
            auth = realtime_auth(read_token, instance_id)
            holding = argparse.Namespace(
                connections=args.idle,
                client_processes=max(args.client_processes, args.idle // 1000),
                seconds=args.hold,
            )
            result = measure(
                "tracker: /ws/realtime idle",
                server.pid,
                server.port,
                lambda n: [WsSpec(f"{API_PREFIX}/ws/realtime", auth) for _ in range(n)],
                holding,
                self.children,
                self.client_cpus,
            )
        finally:
            server.stop()
        held = result["opened"]
        worst = max(result["after"], result["peak"])
        per = (result["after"] - result["before"]) / held if held else 0.0
        verdict = Verdict(
            f"d. {held:,} idle connections",
            f"RSS {worst / 1024:,.0f} MiB at most while held ({per:.1f} KiB per connection;"
            f" {result['before'] / 1024:.0f} MiB before)",
            f"< {IDLE_RSS_KIB / 1024:,.0f} MiB",
            "-",
            held == args.idle and worst < IDLE_RSS_KIB,
        )
        verdict.notes += result["notes"]
        verdict.notes.append(
            f"RSS after closing them all {result['closed'] / 1024:.0f} MiB; VmHWM"
            f" {result['hwm'] / 1024:.0f} MiB"
        )
        return verdict

    def profile(self, pid: int, name: str):
        """py-spy on the server until profiled() (--profile DIR), else None."""
        if not self.args.profile:
            return None
        out = Path(self.args.profile).resolve()
        out.mkdir(parents=True, exist_ok=True)
        bound = argparse.Namespace(seconds=CONNECT_TIMEOUT_SECONDS)
        return start_profiler(self.children, pid, out / f"{name}.txt", bound, self.client_cpus)

    def profiled(self, profiler, name: str) -> list[str]:
        """Stop py-spy (SIGINT: it writes its samples) and name the hottest functions."""
        if profiler is None:
            return []
        profiler.send_signal(signal.SIGINT)
        with contextlib.suppress(Exception):
            profiler.wait(timeout=30)
        self.children.stop(profiler)
        out = Path(self.args.profile).resolve() / f"{name}.txt"
        if not out.exists():
            return ["py-spy wrote no profile"]
        return [f"py-spy profile (collapsed stacks): {out}", *top_functions(out, 15)]

    @staticmethod
    def with_notes(verdict: Verdict, notes: list[str]) -> Verdict:
        verdict.notes += notes
        return verdict

    def run(self) -> list[Verdict]:
        return [getattr(self, phase)() for phase in self.args.phases]


def listen_counters() -> dict[str, int]:
    """The kernel's TcpExt counters of connections it could not queue (whole machine)."""
    counters: dict[str, int] = {}
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/netstat").read_text().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            if names.startswith("TcpExt:"):
                counters.update(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
    wanted = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")
    return {name: counters[name] for name in wanted if name in counters}


def cpu_or_zero(pid: int | None) -> float:
    """A process's CPU seconds so far, 0 when it is gone."""
    try:
        return process_cpu_seconds(pid) if pid else 0.0
    except OSError:
        return 0.0


# -- output ------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Scale points of issue #20: subscribers, share viewers, a reconnect"
        " storm and idle connections, each against its target."
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: a tenth of every count, 5 s windows"
    )
    parser.add_argument("--subscribers", type=int, help="a: /ws/realtime subscribers (1000)")
    parser.add_argument("--devices", type=int, help="a: devices at 1 position/s each (5)")
    parser.add_argument("--viewers", type=int, help="b: viewers of one share session (3000)")
    parser.add_argument("--reconnect", type=int, help="c: clients reconnecting at once (2000)")
    parser.add_argument("--idle", type=int, help="d: idle connections (10000)")
    parser.add_argument("--seconds", type=float, help="a, b: seconds of publishing (20)")
    parser.add_argument("--hold", type=float, help="d: seconds the connections are held (30)")
    parser.add_argument(
        "--tail", type=float, default=2.0, help="a, b: seconds left after the last send (2)"
    )
    parser.add_argument(
        "--client-processes", type=int, default=4, help="WebSocket client processes (4)"
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="b, c: skip the raw broadcaster beside it"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the server during the reconnect (pip install py-spy)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    tenth = 10 if args.quick else 1
    args.subscribers = args.subscribers or 1000 // tenth
    args.devices = args.devices or 5
    args.viewers = args.viewers or 3000 // tenth
    args.reconnect = args.reconnect or 2000 // tenth
    args.idle = args.idle or 10000 // tenth
    args.seconds = args.seconds or (5.0 if args.quick else 20.0)
    args.hold = args.hold if args.hold is not None else (5.0 if args.quick else 30.0)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases {sorted(unknown)}: choose from {','.join(PHASES)}")
    counts = (args.subscribers, args.devices, args.viewers, args.reconnect, args.idle)
    if min(*counts, args.seconds, args.client_processes) <= 0 or args.tail < 0:
        parser.error("counts, --seconds and --client-processes must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    nofile = raise_nofile_limit()
    started = time.time()

    def job(workdir: Path, children: Children) -> tuple[ScaleBench, list[Verdict]]:
        bench = ScaleBench(args, workdir, children)
        return bench, bench.run()

    outcome = in_workdir("tracker-bench-scale-", args.keep, job)
    if outcome is None:
        return 130
    bench, verdicts = outcome
    print(f"tracker scale points, {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}")
    print(f"command: python bench/scale.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(machine_line(bench.server_cpus, bench.client_cpus))
    print(f"stack: {versions()}")
    print(f"tree: {revision()}")
    print(
        f"parameters: --subscribers {args.subscribers} --devices {args.devices} --viewers"
        f" {args.viewers} --reconnect {args.reconnect} --idle {args.idle} --seconds"
        f" {args.seconds:g} --hold {args.hold:g} --tail {args.tail:g} --client-processes"
        f" {args.client_processes}; server env {SERVER_ENV}; open-files limit {nofile};"
        f" took {time.time() - started:.0f} s"
    )
    print()
    print(
        render_table(
            ["scale point", "figure", "target", "reference (same run)", "verdict"],
            [
                [v.name, v.figure, v.target, v.reference, "PASS" if v.passed else "FAIL"]
                for v in verdicts
            ],
        )
    )
    if bench.rows:
        print()
        print(fanout.table(bench.rows))
    print()
    print("a, b: latency = receipt - time the POST was written (one clock); every position")
    print("sent is in the window, so a delivery short of sent x clients is a lost position.")
    for v in verdicts:
        for note in v.notes:
            print(f"note: {v.name}: {note}")
    return 0 if all(v.passed for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
