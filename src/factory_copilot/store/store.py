"""The store: one SQLite file holding what the line did and what people said about it.

Readings are kept raw for a few minutes and downsampled into per-signal buckets
(mean/min/max) for trends; anomalies, alarms with their event history,
diagnoses, conversations and operator feedback sit beside them. Writes are
batched in transactions; every table has its own retention. Each subject has its
own module: ``trends.py``, ``alarm_history.py``, ``incidents.py``, ``handovers.py``; ``Store`` is all
of them: writes on one connection, reads on a second (WAL), so a long batch or retention sweep never holds up
a look-up (``Store.reader`` only reads, beside the service that writes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory_copilot.plumbing.sqlite import Locked, open_db, open_reader, transaction
from factory_copilot.records import AlarmState
from factory_copilot.store.alarm_history import AlarmHistory
from factory_copilot.store.handovers import Handovers
from factory_copilot.store.incidents import IncidentRecords
from factory_copilot.store.schema import COMPONENT, MIGRATIONS
from factory_copilot.store.trends import Trends

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(slots=True)
class Retention:
    """How long each table keeps rows, in seconds; None keeps them for ever."""

    readings_raw: float | None = 15 * 60.0
    trend: float | None = 14 * DAY
    anomalies: float | None = 30 * DAY
    alarm_events: float | None = 180 * DAY
    alarms: float | None = 180 * DAY  # only alarms back to normal are removed
    diagnoses: float | None = 180 * DAY
    conversations: float | None = 180 * DAY
    feedback: float | None = None  # incident memory: kept unless asked otherwise
    handovers: float | None = 365 * DAY


class Store(Trends, AlarmHistory, IncidentRecords, Handovers):
    """SQLite store; thread-safe (a write connection and a read connection, each under its own lock); open several
    on one file from several processes."""

    def __init__(self, path: str | Path, bucket_s: float = 5.0, retention: Retention | None = None, *,
                 read_only: bool = False):
        if bucket_s <= 0:
            raise ValueError("store bucket_s must be > 0")
        self.path = str(path)
        self.bucket_s = float(bucket_s)
        self.max_raw_points = 20_000  # above this many samples in a window, trend(resolution="auto") uses buckets
        self.retention = retention or Retention()
        conn = open_reader(self.path, len(MIGRATIONS), COMPONENT) if read_only else open_db(self.path, MIGRATIONS, COMPONENT)
        self._db = Locked(conn)
        # reads see the last committed state (WAL) without waiting for the writer's lock; one in-memory database
        # cannot be opened twice, and a reader has nothing to wait for
        shared = read_only or self.path == ":memory:"
        self._reads = self._db if shared else Locked(open_reader(self.path, len(MIGRATIONS), COMPONENT))

    @classmethod
    def reader(cls, path: str | Path, bucket_s: float = 5.0) -> "Store":
        """A store that only reads (its own connection, ``query_only``), beside the service that writes the file."""
        return cls(path, bucket_s, read_only=True)

    def close(self) -> None:
        if self._reads is not self._db:
            with self._reads as conn:
                conn.close()
        with self._db as conn:
            conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._db as conn, transaction(conn):
            conn.executemany(sql, rows)

    def enforce_retention(self, now: float | None = None) -> dict[str, int]:
        """Delete rows older than each table's retention; returns rows deleted per table."""
        now = time.time() if now is None else now
        r = self.retention
        plan = [
            ("readings_raw", "ts", r.readings_raw, ""),
            ("trend", "bucket", r.trend, ""),
            ("anomalies", "ts", r.anomalies, ""),
            ("alarm_events", "ts", r.alarm_events, ""),
            ("alarms", "updated_at", r.alarms, f" AND state = '{AlarmState.NORMAL.value}'"),
            ("diagnoses", "created_at", r.diagnoses, ""),
            ("conversations", "ts", r.conversations, ""),
            ("feedback", "ts", r.feedback, ""),
            ("handovers", '"end"', r.handovers, ""),
        ]
        deleted: dict[str, int] = {}
        with self._db as conn:
            for table, column, keep_s, extra in plan:
                if keep_s is None:
                    continue
                cur = conn.execute(f"DELETE FROM {table} WHERE {column} < ?{extra}", (now - keep_s,))
                deleted[table] = cur.rowcount
        if any(deleted.values()):
            log.info("store retention removed %s", {k: v for k, v in deleted.items() if v})
        return deleted

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._reads as conn:
            return conn.execute(sql, params).fetchall()

    def counts(self) -> dict[str, int]:
        """Rows per table (for status pages and tests)."""
        tables = ["readings_raw", "trend", "anomalies", "alarms", "alarm_events", "diagnoses", "conversations",
                  "feedback", "handovers"]
        return {t: self._rows(f"SELECT count(*) FROM {t}")[0][0] for t in tables}
