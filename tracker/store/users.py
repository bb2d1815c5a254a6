"""The users table: console accounts, each of one instance (or of all) with a role.

Usernames are unique whatever their case (`COLLATE NOCASE`): "Alice" and
"alice" are one account. Only an Argon2id hash of the password is stored
(tracker/accounts.py makes and checks it).
"""

from __future__ import annotations

import sqlite3
import time
import uuid

from tracker.domain import User


class DuplicateUser(Exception):
    """A user with this username (in any case) already exists."""


_COLUMNS = "id, username, instance_id, role, password_hash, created_at"


def create(
    conn: sqlite3.Connection, username: str, instance_id: str | None, role: str, password_hash: str
) -> User:
    user = User(uuid.uuid4().hex, username, instance_id, role, password_hash, time.time())
    try:
        conn.execute(
            f"INSERT INTO users ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (user.id, username, instance_id, role, password_hash, user.created_at),
        )
    except sqlite3.IntegrityError:
        raise DuplicateUser(username) from None
    return user


def _named(conn: sqlite3.Connection) -> str:
    """The condition "username is ? in any case": SQLite's column is COLLATE NOCASE; on
    PostgreSQL a unique index on lower(username) (tracker/store/pg_schema.py) serves it."""
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        return "lower(username) = lower(?)"
    return "username = ?"


def by_username(conn: sqlite3.Connection, username: str) -> User | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM users WHERE {_named(conn)}", (username,)).fetchone()
    return User(**dict(row)) if row else None


def listed(conn: sqlite3.Connection, instance_id: str | None = None) -> list[User]:
    """Every user, or those of one instance, by username."""
    order = "username"
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        order = 'lower(username) COLLATE "C", username COLLATE "C"'
    if instance_id is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM users ORDER BY {order}").fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM users WHERE instance_id = ? ORDER BY {order}", (instance_id,)
        ).fetchall()
    return [User(**dict(row)) for row in rows]


def delete(conn: sqlite3.Connection, username: str) -> bool:
    return conn.execute(f"DELETE FROM users WHERE {_named(conn)}", (username,)).rowcount > 0


def set_password_hash(conn: sqlite3.Connection, username: str, password_hash: str) -> bool:
    cursor = conn.execute(
        f"UPDATE users SET password_hash = ? WHERE {_named(conn)}", (password_hash, username)
    )
    return cursor.rowcount > 0
