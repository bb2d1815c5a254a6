"""Real Redis and PostgreSQL for tests: Debian's servers as child processes in temp dirs.

Each engine listens on 127.0.0.1 on a free port, keeps its files in a
directory of its own, is waited for until it answers, and is stopped by its
PID. Nothing is started as a system service (.ci/run installs the packages
with a policy-rc.d that forbids it). A missing server binary fails the test
in CI (env CI set) and skips it elsewhere, naming the Debian package.

PostgreSQL refuses to run as root, and CI runs as root: then initdb and
postgres run as the `postgres` user (the package creates it), in a temp dir
owned by that user under /tmp (pytest's own tmp dirs are closed to others).

bench/cluster.py starts its engines with these classes too, through its own
`popen` (pinned to the server's core, stopped with the bench's children).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REDIS_SERVER = "/usr/bin/redis-server"
START_SECONDS = 30


def require(binary: str | None, package: str) -> str:
    """The binary's path; fail in CI when it is missing, skip elsewhere."""
    if binary and os.access(binary, os.X_OK):
        return binary
    import pytest  # only here: the bench imports this module without pytest's fixtures

    message = f"needs {binary or package} (Debian's {package}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen | None, signal_number: int) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal_number)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_until(answers, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited at start:\n{log.read_text(errors='replace')}")
        if answers():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not answer within {START_SECONDS} s")


class RedisServer:
    """redis-server of the test's own, without persistence; restartable on the same port."""

    def __init__(self, workdir: Path, popen: Callable[..., subprocess.Popen] = subprocess.Popen):
        self.binary = require(REDIS_SERVER, "redis-server")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.popen = popen
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        log = self.workdir / "redis.log"
        command = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(log),
        ]  # fmt: skip
        self.process = self.popen(command, cwd=self.workdir, stdout=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        try:
            _wait_until(answers, self.process, log, "redis-server")
        finally:
            client.close()

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)


def postgres_bin_dir() -> str | None:
    """The newest /usr/lib/postgresql/N/bin that has a server."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    found.sort(key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    return str(Path(found[-1]).parent) if found else None


class PostgresServer:
    """A PostgreSQL cluster of the test's own (initdb + postgres), trust auth on loopback;
    `settings` are more `-c name=value` for the server."""

    USER = "postgres"

    def __init__(
        self,
        popen: Callable[..., subprocess.Popen] = subprocess.Popen,
        settings: tuple[str, ...] = (),
    ) -> None:
        bin_dir = postgres_bin_dir()
        self.postgres = require(bin_dir and f"{bin_dir}/postgres", "postgresql")
        self.initdb = require(bin_dir and f"{bin_dir}/initdb", "postgresql")
        self.as_root = os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix="tracker-postgres-"))
        if self.as_root:
            owner = pwd.getpwnam(self.USER)
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        self.data = self.workdir / "data"
        self.popen = popen
        self.settings = settings
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{database}"

    def _run_as_owner(self) -> dict:
        """Popen arguments that drop root to the postgres user (nothing when not root)."""
        if not self.as_root:
            return {}
        return {"user": self.USER, "group": self.USER, "extra_groups": []}

    def start(self) -> None:
        log = self.workdir / "postgres.log"
        with open(log, "ab") as out:
            subprocess.run(
                [
                    self.initdb,
                    "--pgdata",
                    str(self.data),
                    "--username",
                    self.USER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C.UTF-8",
                    "--no-sync",
                ],  # fmt: skip
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=120,
                **self._run_as_owner(),
            )
        self.resume()

    def resume(self) -> None:
        """Start the server on the cluster's data (again, after halt()), wait until it answers."""
        import psycopg

        log = self.workdir / "postgres.log"
        with open(log, "ab") as out:
            self.process = self.popen(
                [
                    self.postgres,
                    "-D",
                    str(self.data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.workdir),  # the unix socket stays in the temp dir
                    "-c",
                    "fsync=off",  # a test never outlives its machine's power
                    *(arg for setting in self.settings for arg in ("-c", setting)),
                ],  # fmt: skip
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                **self._run_as_owner(),
            )

        def answers() -> bool:
            try:
                with psycopg.connect(self.url(), connect_timeout=1):
                    return True
            except psycopg.OperationalError:
                return False

        _wait_until(answers, self.process, log, "postgres")

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def halt(self) -> None:
        """Stop the server, keeping its data (resume() starts it again)."""
        _stop(self.process, signal.SIGINT)  # "fast shutdown": ends sessions, then exits

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)
