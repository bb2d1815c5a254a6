"""A consistent copy of the database, taken while the server runs and ingests.

SQLite's online backup API copies the pages of one read snapshot: in WAL mode
the server's writer goes on committing beside it, and the copy holds exactly
what was committed when the backup began. The pages are copied in one step,
because a backup copied in several steps starts over each time another
connection writes, and under steady ingest it would never end.

The copy is written under a temporary name beside the target, checked with
`PRAGMA integrity_check`, flushed to disk and only then renamed to the target,
so a file at the target's name is always a complete backup. The source is
opened read-only: a backup never changes the database it copies.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

BUSY_TIMEOUT_MS = 10_000


class BackupError(Exception):
    """The backup cannot be made; the message says why."""


@dataclass(frozen=True)
class Backup:
    path: Path
    size_bytes: int
    positions: int


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and os.path.samefile(a, b)


def backup_database(source: str | Path, target: str | Path, *, overwrite: bool = False) -> Backup:
    """Copy the database at `source` to `target`; check the copy; return what it holds."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if target.is_dir():
        raise BackupError(f"{target} is a directory; give a file name")
    if _same_file(source, target):
        raise BackupError(f"{target} is the database itself")
    if target.exists() and not overwrite:
        raise BackupError(f"{target} exists; pass --force to replace it")
    if not target.parent.is_dir():
        raise BackupError(f"no directory {target.parent}")

    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        positions = _copy(source, partial)
        with open(partial, "rb") as file:
            os.fsync(file.fileno())
        os.replace(partial, target)
    finally:
        for leftover in (partial, *(Path(f"{partial}{end}") for end in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)
    _fsync_directory(target.parent)
    return Backup(path=target, size_bytes=target.stat().st_size, positions=positions)


def _copy(source: Path, partial: Path) -> int:
    """Back up into `partial`; the number of positions in the copy."""
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        src.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # pages=-1: every page from one snapshot, in one step
            verdict = [row[0] for row in dst.execute("PRAGMA integrity_check")]
            if verdict != ["ok"]:
                raise BackupError("the copy failed its integrity check: " + "; ".join(verdict))
            return dst.execute("SELECT count(*) FROM positions").fetchone()[0]
        finally:
            dst.close()
    except sqlite3.Error as error:
        raise BackupError(f"cannot back up {source}: {error}") from None
    finally:
        src.close()


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
