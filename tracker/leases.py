"""Leases: each run-once job runs in one process at a time, whichever holds its lease.

Several `tracker serve` processes on one database must not each expire share
sessions, prune positions and deliver webhooks. Each of those jobs runs under
a named lease, a row of the `leases` table (tracker/store/leases.py) naming
its holder (a random id per process, with host and pid for humans) and until
when it holds it. `LeaseHolder.run` asks for the lease at once and then every
TTL/3; while the process holds it, the job runs and the lease is renewed
every TTL/3. A process that dies stops renewing: its lease lapses after the
TTL and the next process to ask (within TTL/3) takes it over and starts the
job, so the job resumes at most TTL + TTL/3 after the death. A clean stop
releases the lease, so another process takes over at its next ask.

The holder stops its job before its lease can lapse: the job runs in a
cancel scope whose deadline is the start of the last successful renewal plus
`VALID_FOR` of the TTL (the stored expiry counts from a clock read at that
same start, so the job stops a margin before anyone else may take over), and
a renewal that finds another holder cancels the job at once. A renewal that
fails (the database busy past its timeout) is tried again TTL/3 later; the
deadline stops the job if none succeeds in time. So two live processes never
run a job at once; a process whose event loop is frozen past its lease (a
stopped VM) could, which is why the webhook dispatcher also checks, in the
transaction that records a delivery, that its process still holds the lease.

One process alone (no `broker.url`) starts every job at once, as before
leases existed, and takes each lease beside it whoever held it (it can only
be an earlier run of itself, killed before it released); from then on it
renews like any holder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

import trio

from tracker.domain import Lease
from tracker.errors import StorageUnavailable
from tracker.store import Database
from tracker.store import leases as leases_store

log = logging.getLogger("tracker.leases")

LEASE_TTL_SECONDS = 15.0
VALID_FOR = 5 / 6  # of the TTL: the job stops this long after a renewal started, unless renewed
RELEASE_TIMEOUT_SECONDS = 5.0


def other_live_processes(db: Database) -> list[str]:
    """Other processes that hold a lease now ("host:pid:..."), for the start-up check that
    several processes have a broker. A holder on this host whose pid is gone was killed
    before it could release (its lease lapses within the TTL): it does not count."""
    here = socket.gethostname()
    alive = []
    for holder in db.read_sync(leases_store.live_holders, time.time()):
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == here and pid.isdigit() and not _pid_alive(int(pid)):
            continue  # killed before it could release
        alive.append(holder)
    return alive


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a dead process's leases: this pid was its, and is now this one's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def new_holder() -> str:
    """This process's holder id: host and pid for humans, random bits for uniqueness."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseHolder:
    """One process's side of the leases: runs each job while it holds that job's lease."""

    def __init__(
        self,
        db: Database,
        holder: str,
        ttl_seconds: float = LEASE_TTL_SECONDS,
        take_over_at_start: bool = False,
    ):
        self.db = db
        self.holder = holder
        self.ttl_seconds = ttl_seconds
        self.renew_every = ttl_seconds / 3
        self.valid_for = ttl_seconds * VALID_FOR
        self.take_over_at_start = take_over_at_start

    async def run(self, name: str, job: Callable[[], Awaitable[object]]) -> None:
        """Run job() whenever this process holds the lease `name`, a fresh call each time it
        takes the lease; returns when a job returns by itself. Releases the lease on the way out."""
        try:
            # Alone: the job starts at once, as it did before leases, and the lease is
            # taken beside it.
            if self.take_over_at_start and await self._run_while_held(
                name, job, trio.current_time(), take_over=True
            ):
                return
            while True:
                asked_at = trio.current_time()
                lease = await self._ask(name)
                if lease is not None and lease.holder == self.holder:
                    log.info("lease %r taken: %s runs here (%s)", name, name, self.holder)
                    if await self._run_while_held(name, job, asked_at):
                        return
                    continue  # ask again at once: the lease may be free again
                await trio.sleep_until(asked_at + self.renew_every)
        finally:
            with trio.move_on_after(RELEASE_TIMEOUT_SECONDS) as cleanup:
                cleanup.shield = True
                with contextlib.suppress(StorageUnavailable):  # then it lapses after the TTL
                    await self.db.write(leases_store.release, name, self.holder)

    async def _ask(self, name: str, take_over: bool = False) -> Lease | None:
        """Take or renew the lease; the lease as it stands, None when the database cannot say."""
        try:
            return await self.db.write(
                leases_store.acquire, name, self.holder, time.time(), self.ttl_seconds, take_over
            )
        except StorageUnavailable:
            return None

    async def _run_while_held(
        self,
        name: str,
        job: Callable[[], Awaitable[object]],
        renewed_at: float,
        take_over: bool = False,
    ) -> bool:
        """Run the job, renewing the lease, until the job returns (True) or the lease is lost
        or could not be renewed in time (False). `take_over`: the lease is taken (whoever
        holds it) at once, beside the job, rather than renewed TTL/3 after renewed_at."""
        finished = False
        async with trio.open_nursery() as nursery:
            job_scope = trio.CancelScope(deadline=renewed_at + self.valid_for)

            async def run_job() -> None:
                nonlocal finished
                with job_scope:
                    await job()
                    finished = True
                nursery.cancel_scope.cancel()  # stop renewing

            nursery.start_soon(run_job)
            next_at = renewed_at if take_over else renewed_at + self.renew_every
            while True:
                await trio.sleep_until(next_at)
                asked_at = trio.current_time()
                next_at = asked_at + self.renew_every
                lease = await self._ask(name, take_over)
                take_over = False
                if lease is None:
                    continue  # the deadline stops the job if no renewal succeeds in time
                if lease.holder != self.holder:
                    log.warning("lease %r lost to %s: %s stopped here", name, lease.holder, name)
                    nursery.cancel_scope.cancel()
                    break
                job_scope.deadline = asked_at + self.valid_for
        if not finished and job_scope.cancelled_caught:
            log.warning("lease %r not renewed in time: %s stopped here", name, name)
        return finished
