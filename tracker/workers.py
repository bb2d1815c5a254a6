"""`tracker serve --workers N`: N server processes on one database, each on its own port.

Each worker is a plain `tracker serve` child with the same config, on
`server.port + i` (and `ingest.osmand_port + i` when the OsmAnd port is on),
so a reverse proxy balances over ports it can name (deploy/nginx-cluster.conf).
Several processes share live positions only through a broker, so more than one
worker needs `broker.url`. The supervisor applies the migrations before the
first worker starts, restarts a worker that dies (one second later, doubling up
to a minute while it keeps dying young), and on SIGTERM or SIGINT stops them
all with SIGTERM, so each finishes its requests and commits as a single server
does, and exits once they have.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

log = logging.getLogger("tracker")

RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 60.0
HEALTHY_AFTER_SECONDS = 30.0  # a worker that lived this long restarts after the shortest delay
STOP_TIMEOUT_SECONDS = 30.0


@dataclass
class Worker:
    number: int
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    delay: float = RESTART_DELAY_SECONDS
    restart_at: float | None = field(default=None)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env)
        self.started_at = time.monotonic()
        self.restart_at = None


def workers_for(
    config: str | None, host: str, port: int, osmand_port: int, count: int
) -> list[Worker]:
    """Worker i serves on port + i (and osmand_port + i when that port is on)."""
    workers = []
    for number in range(count):
        argv = [sys.executable, "-m", "tracker"]
        if config:
            argv += ["--config", config]
        argv += ["serve", "--host", host, "--port", str(port + number)]
        env = dict(os.environ)
        if osmand_port:  # the environment comes before the config file
            env["TRACKER_INGEST_OSMAND_PORT"] = str(osmand_port + number)
        workers.append(Worker(number + 1, argv, env))
    return workers


def supervise(workers: list[Worker]) -> int:
    """Run the workers until SIGTERM or SIGINT; 0 when they all stopped cleanly."""
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for worker in workers:
            worker.start()
        while not stopping:
            now = time.monotonic()
            for worker in workers:
                if worker.restart_at is not None:
                    if now >= worker.restart_at:
                        worker.start()
                    continue
                status = worker.process.poll()
                if status is None:
                    continue
                if now - worker.started_at >= HEALTHY_AFTER_SECONDS:
                    worker.delay = RESTART_DELAY_SECONDS
                log.error(
                    "worker %d (pid %d) exited with status %s; restarting it in %.0f s",
                    worker.number,
                    worker.process.pid,
                    status,
                    worker.delay,
                )
                worker.restart_at = now + worker.delay
                worker.delay = min(worker.delay * 2, MAX_RESTART_DELAY_SECONDS)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        running = [w.process for w in workers if w.process and w.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    failed = [w for w in workers if w.process is not None and w.process.returncode not in (0, None)]
    return 1 if failed else 0
