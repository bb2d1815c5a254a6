"""The share_sessions table: create, look up by token hash, list, update, end, expire."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from tracker import jsoncodec
from tracker.domain import ACTIVE, EXPIRED, ShareSession

_COLUMNS = (
    "id, token_hash, instance_id, device_token, status, end_reason, created_at, expires_at,"
    " ended_at, recipient_name, notes, order_id, destination, share_config"
)


def _session(row: sqlite3.Row) -> ShareSession:
    values = dict(row)
    values["destination"] = jsoncodec.loads(row["destination"]) if row["destination"] else None
    values["share_config"] = jsoncodec.loads(row["share_config"])
    return ShareSession(**values)


def _json(value: object) -> str | None:
    return None if value is None else jsoncodec.dumps(value).decode()


def create(conn: sqlite3.Connection, session: ShareSession) -> None:
    conn.execute(
        f"INSERT INTO share_sessions ({_COLUMNS}) VALUES ({', '.join('?' * 14)})",
        (
            session.id,
            session.token_hash,
            session.instance_id,
            session.device_token,
            session.status,
            session.end_reason,
            session.created_at,
            session.expires_at,
            session.ended_at,
            session.recipient_name,
            session.notes,
            session.order_id,
            _json(session.destination),
            _json(session.share_config),
        ),
    )


def get(conn: sqlite3.Connection, session_id: str) -> ShareSession | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM share_sessions WHERE id = ?", (session_id,)
    ).fetchone()
    return _session(row) if row else None


def by_token_hash(conn: sqlite3.Connection, token_hash: str) -> ShareSession | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM share_sessions WHERE token_hash = ?", (token_hash,)
    ).fetchone()
    return _session(row) if row else None


def search(
    conn: sqlite3.Connection,
    instance_id: str,
    now: float,
    *,
    status: str | None = None,
    device_token: str | None = None,
    order_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[ShareSession], int]:
    """Sessions of an instance, newest first; `status` as a reader sees it (overdue = expired)."""
    where, params = ["instance_id = ?"], [instance_id]
    if status == ACTIVE:
        where.append("status = 'active' AND expires_at > ?")
        params.append(now)
    elif status == EXPIRED:
        where.append("(status = 'expired' OR (status = 'active' AND expires_at <= ?))")
        params.append(now)
    elif status is not None:
        where.append("status = ?")
        params.append(status)
    if device_token is not None:
        where.append("device_token = ?")
        params.append(device_token)
    if order_id is not None:
        where.append("order_id = ?")
        params.append(order_id)
    clause = " AND ".join(where)
    total = conn.execute(f"SELECT count(*) FROM share_sessions WHERE {clause}", params).fetchone()[
        0
    ]
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM share_sessions WHERE {clause}"
        " ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return [_session(row) for row in rows], total


def update(conn: sqlite3.Connection, session_id: str, now: float, changes: dict) -> bool:
    """Apply changes to an active, unexpired session; False when it is not (any more)."""
    columns = {
        "destination": _json(changes["destination"]) if "destination" in changes else None,
        "share_config": _json(changes.get("share_config")),
        "notes": changes.get("notes"),
        "recipient_name": changes.get("recipient_name"),
        "order_id": changes.get("order_id"),
    }
    names = [name for name in columns if name in changes]
    if not names:
        row = conn.execute(
            "SELECT 1 FROM share_sessions WHERE id = ? AND status = 'active' AND expires_at > ?",
            (session_id, now),
        ).fetchone()
        return row is not None
    assignments = ", ".join(f"{name} = ?" for name in names)
    cursor = conn.execute(
        f"UPDATE share_sessions SET {assignments}"
        " WHERE id = ? AND status = 'active' AND expires_at > ?",
        [*(columns[name] for name in names), session_id, now],
    )
    return cursor.rowcount > 0


def end(conn: sqlite3.Connection, session_id: str, status: str, reason: str, now: float) -> bool:
    """Move an active, unexpired session to an end status; False when it was not active."""
    cursor = conn.execute(
        "UPDATE share_sessions SET status = ?, end_reason = ?, ended_at = ?"
        " WHERE id = ? AND status = 'active' AND expires_at > ?",
        (status, reason, now, session_id, now),
    )
    return cursor.rowcount > 0


def expire_overdue(conn: sqlite3.Connection, now: float) -> list[str]:
    """Persist the expiry of every overdue active session; returns their ids."""
    rows = conn.execute(
        "SELECT id FROM share_sessions WHERE status = 'active' AND expires_at <= ?", (now,)
    ).fetchall()
    ids = [row[0] for row in rows]
    conn.executemany(
        "UPDATE share_sessions SET status = 'expired', end_reason = 'expired', ended_at = expires_at"
        " WHERE id = ?",
        [(session_id,) for session_id in ids],
    )
    return ids


def active_for_devices(
    conn: sqlite3.Connection, device_tokens: Iterable[str], now: float
) -> list[ShareSession]:
    tokens = list(device_tokens)
    if not tokens:
        return []
    marks = ", ".join("?" * len(tokens))
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM share_sessions WHERE device_token IN ({marks})"
        " AND status = 'active' AND expires_at > ?",
        [*tokens, now],
    ).fetchall()
    return [_session(row) for row in rows]


def count_active(conn: sqlite3.Connection, now: float) -> int:
    """Sessions active now, in every instance (for the metrics)."""
    return conn.execute(
        "SELECT count(*) FROM share_sessions WHERE status = 'active' AND expires_at > ?", (now,)
    ).fetchone()[0]
