"""The webhooks table and each webhook's delivery log."""

from __future__ import annotations

import sqlite3

from tracker import jsoncodec
from tracker.domain import Delivery, Webhook

DELIVERY_LOG_KEPT = 500  # attempts kept per webhook (older ones are dropped)

_COLUMNS = (
    "id, instance_id, url, event_types, enabled, disabled_reason, secret, description,"
    " created_at, cursor, failing_since, next_attempt_at"
)


def _webhook(row: sqlite3.Row) -> Webhook:
    values = dict(row)
    values["event_types"] = jsoncodec.loads(row["event_types"])
    values["enabled"] = bool(row["enabled"])
    return Webhook(**values)


def create(conn: sqlite3.Connection, webhook: Webhook) -> None:
    conn.execute(
        f"INSERT INTO webhooks ({_COLUMNS}) VALUES ({', '.join('?' * 12)})",
        (
            webhook.id,
            webhook.instance_id,
            webhook.url,
            jsoncodec.dumps(webhook.event_types).decode(),
            int(webhook.enabled),
            webhook.disabled_reason,
            webhook.secret,
            webhook.description,
            webhook.created_at,
            webhook.cursor,
            webhook.failing_since,
            webhook.next_attempt_at,
        ),
    )


def get(conn: sqlite3.Connection, webhook_id: str) -> Webhook | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,)).fetchone()
    return _webhook(row) if row else None


def list_for_instance(conn: sqlite3.Connection, instance_id: str) -> list[Webhook]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM webhooks WHERE instance_id = ? ORDER BY created_at, id",
        (instance_id,),
    ).fetchall()
    return [_webhook(row) for row in rows]


def enabled(conn: sqlite3.Connection) -> list[Webhook]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM webhooks WHERE enabled = 1").fetchall()
    return [_webhook(row) for row in rows]


def update(conn: sqlite3.Connection, webhook_id: str, changes: dict) -> bool:
    """Change url, event_types, description or enabled (enabling clears the failure state)."""
    columns: dict[str, object] = {}
    for name, value in changes.items():
        if name == "event_types":
            columns[name] = jsoncodec.dumps(value).decode()
        elif name == "enabled":
            columns[name] = int(value)
            if value:
                columns.update(disabled_reason=None, failing_since=None, next_attempt_at=None)
        else:
            columns[name] = value
    if not columns:
        return get(conn, webhook_id) is not None
    assignments = ", ".join(f"{name} = ?" for name in columns)
    cursor = conn.execute(
        f"UPDATE webhooks SET {assignments} WHERE id = ?", [*columns.values(), webhook_id]
    )
    return cursor.rowcount > 0


def delete(conn: sqlite3.Connection, webhook_id: str) -> bool:
    return conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount > 0


def advance(conn: sqlite3.Connection, webhook_id: str, cursor: int) -> None:
    """Done with the event at `cursor`: the next one is tried at once."""
    conn.execute(
        "UPDATE webhooks SET cursor = CASE WHEN cursor > ? THEN cursor ELSE ? END,"
        " failing_since = NULL, next_attempt_at = NULL WHERE id = ?",
        (cursor, cursor, webhook_id),
    )


def retry_later(
    conn: sqlite3.Connection, webhook_id: str, failing_since: float, next_attempt_at: float
) -> None:
    conn.execute(
        "UPDATE webhooks SET failing_since = ?, next_attempt_at = ? WHERE id = ?",
        (failing_since, next_attempt_at, webhook_id),
    )


def disable(conn: sqlite3.Connection, webhook_id: str, reason: str) -> None:
    conn.execute(
        "UPDATE webhooks SET enabled = 0, disabled_reason = ?, next_attempt_at = NULL WHERE id = ?",
        (reason, webhook_id),
    )


def log_delivery(conn: sqlite3.Connection, delivery: Delivery) -> None:
    conn.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, attempt,"
        " attempted_at, duration_ms, status_code, error, outcome)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            delivery.webhook_id,
            delivery.event_id,
            delivery.event_type,
            delivery.attempt,
            delivery.attempted_at,
            delivery.duration_ms,
            delivery.status_code,
            delivery.error,
            delivery.outcome,
        ),
    )
    conn.execute(
        "DELETE FROM webhook_deliveries WHERE webhook_id = ? AND id <="
        " (SELECT id FROM webhook_deliveries WHERE webhook_id = ? ORDER BY id DESC"
        " LIMIT 1 OFFSET ?)",
        (delivery.webhook_id, delivery.webhook_id, DELIVERY_LOG_KEPT),
    )


def attempts_at(conn: sqlite3.Connection, webhook_id: str, event_id: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = ? AND event_id = ?",
        (webhook_id, event_id),
    ).fetchone()[0]


def deliveries(
    conn: sqlite3.Connection, webhook_id: str, limit: int, offset: int
) -> tuple[list[Delivery], int]:
    """A webhook's delivery attempts, newest first."""
    total = conn.execute(
        "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,)
    ).fetchone()[0]
    rows = conn.execute(
        "SELECT id, webhook_id, event_id, event_type, attempt, attempted_at, duration_ms,"
        " status_code, error, outcome FROM webhook_deliveries WHERE webhook_id = ?"
        " ORDER BY id DESC LIMIT ? OFFSET ?",
        (webhook_id, limit, offset),
    ).fetchall()
    return [Delivery(**dict(row)) for row in rows], total
