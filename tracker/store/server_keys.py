"""Server-held secrets kept in the database (the generated JWT secret)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


def get_or_create(conn: sqlite3.Connection, name: str, make: Callable[[], str]) -> tuple[str, bool]:
    """The stored value of `name`, creating it with make() the first time; (value, created)."""
    row = conn.execute("SELECT value FROM server_keys WHERE name = ?", (name,)).fetchone()
    if row:
        return row["value"], False
    value = make()
    conn.execute("INSERT INTO server_keys (name, value) VALUES (?, ?)", (name, value))
    return value, True
