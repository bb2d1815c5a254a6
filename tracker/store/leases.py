"""The leases table: which process holds each run-once job, and until when.

A lease is taken or renewed by one UPSERT, so two processes asking at once
cannot both get it: the row is written only when it is free (no row), lapsed
(`expires_at` passed) or already this holder's. Whoever asked then reads who
holds it. The statements are plain SQL that SQLite and PostgreSQL both accept
(tracker/leases.py says how the processes use them).
"""

from __future__ import annotations

import sqlite3

from tracker.domain import Lease


def acquire(
    conn: sqlite3.Connection,
    name: str,
    holder: str,
    now: float,
    ttl_seconds: float,
    take_over: bool = False,
) -> Lease:
    """Take or renew the lease until now + ttl if it is free, lapsed or ours (or
    `take_over`: whoever holds it); returns the lease as it now stands."""
    conn.execute(
        "INSERT INTO leases (name, holder, expires_at) VALUES (:name, :holder, :until)"
        " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
        " expires_at = excluded.expires_at"
        " WHERE leases.expires_at < :now OR leases.holder = :holder OR :take_over",
        {
            "name": name,
            "holder": holder,
            "until": now + ttl_seconds,
            "now": now,
            "take_over": bool(take_over),
        },
    )
    lease = current(conn, name)
    assert lease is not None
    return lease


def current(conn: sqlite3.Connection, name: str) -> Lease | None:
    """The lease as stored (perhaps lapsed), None if nobody ever held it or it was released."""
    row = conn.execute(
        "SELECT name, holder, expires_at FROM leases WHERE name = ?", (name,)
    ).fetchone()
    return Lease(*row) if row else None


def held_by(conn: sqlite3.Connection, name: str, holder: str) -> bool:
    """Whether holder still holds the lease: nobody took it over (call inside the
    transaction whose writes must be this holder's only)."""
    row = conn.execute(
        "SELECT 1 FROM leases WHERE name = ? AND holder = ?", (name, holder)
    ).fetchone()
    return row is not None


def release(conn: sqlite3.Connection, name: str, holder: str) -> bool:
    """Give the lease up (on a clean stop), if holder still holds it."""
    return (
        conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)).rowcount
        > 0
    )


def live_holders(conn: sqlite3.Connection, now: float) -> list[str]:
    """The holders of leases that have not lapsed: the processes running jobs now."""
    rows = conn.execute(
        "SELECT DISTINCT holder FROM leases WHERE expires_at >= ? ORDER BY holder", (now,)
    )
    return [row[0] for row in rows]
