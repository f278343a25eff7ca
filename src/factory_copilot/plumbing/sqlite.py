"""One home for SQLite: open a database in WAL mode and bring its schema up to date.

Every station that keeps state (the alarm engine, the store, the MQTT outbox)
opens its file through ``open_db`` with its own list of migrations, so each
table set has versioned migrations and concurrent writers wait instead of failing.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger(__name__)


def open_db(path: str | Path, migrations: Sequence[str], component: str) -> sqlite3.Connection:
    """Open (or create) ``path`` and apply the not yet applied ``migrations`` of ``component``.

    ``migrations[i]`` is the SQL script that takes the component's schema from
    version i to i+1; applied versions are recorded in ``schema_version``, so a
    migration runs once per database, in order, each in its own transaction.
    """
    path = str(path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version WHERE component=?", (component,)).fetchone()
    current = row[0] if row else 0
    if current > len(migrations):
        raise RuntimeError(
            f"{path}: {component} schema is version {current}, newer than this software knows ({len(migrations)})"
        )
    for version in range(current, len(migrations)):
        with transaction(conn):
            for statement in _statements(migrations[version]):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version(component, version) VALUES(?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version=excluded.version",
                (component, version + 1),
            )
        log.info("%s: %s schema migrated to version %d", path, component, version + 1)
    return conn


def open_reader(path: str | Path, known_versions: int, component: str) -> sqlite3.Connection:
    """A connection that only reads ``path`` (``PRAGMA query_only``), beside the process that writes it (WAL).

    Nothing is created or migrated: a file that does not exist is FileNotFoundError, one written by newer
    software than this (``known_versions``) a RuntimeError, each naming the file.
    """
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no {component} file here (has the service run with this state directory?)")
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA query_only=ON")
    try:
        row = conn.execute("SELECT version FROM schema_version WHERE component=?", (component,)).fetchone()
    except sqlite3.OperationalError:
        row = None
    if row is None:
        conn.close()
        raise FileNotFoundError(f"{path}: holds no {component} tables (is it the right file?)")
    if row[0] != known_versions:
        conn.close()
        newer = row[0] > known_versions
        raise RuntimeError(f"{path}: {component} schema is version {row[0]}, "
                           + (f"newer than this software knows ({known_versions})" if newer else
                              f"older than this software's {known_versions}: start the service once, it migrates the file"))
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: taken at once (IMMEDIATE, so concurrent writers wait their turn), committed, or rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit our transaction)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


class Locked:
    """A connection shared by threads, used under one lock (sqlite3 objects are not thread-safe)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.lock = threading.RLock()

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
