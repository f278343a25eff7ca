"""The SQLite outbox: every alert is written here first and leaves only when the broker acknowledged it (PUBACK).

It is the single path from the alarm station to the broker, so an alert
survives a broker outage and a process restart, and goes out in order per lane
(lane 0 alarms and events before lane 1 diagnoses). The publisher hands rows to
the MQTT client in id order and deletes a row when its PUBACK arrives.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory_copilot.plumbing.sqlite import open_db, transaction

log = logging.getLogger(__name__)

ALARM_LANE, DIAGNOSIS_LANE = 0, 1
LANES = (ALARM_LANE, DIAGNOSIS_LANE)

MIGRATIONS = [
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        lane INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        retain INTEGER NOT NULL,
        schema TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX outbox_lane ON outbox(lane, id);
    """,
]


@dataclass(slots=True)
class Message:
    """One MQTT message waiting in the outbox (``id`` 0 for messages that never touch the disk)."""

    topic: str
    payload: bytes
    retain: bool = False
    schema: str | None = None
    lane: int = ALARM_LANE
    id: int = 0
    created_at: float = field(default_factory=time.time)
    expiry_s: int | None = None  # MQTT 5 message expiry, for messages that are worthless when late
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. correlation data for an MQTT 5 reply


class Outbox:
    """Pending alerts on disk. Not thread-safe: the publisher uses it from its event loop only."""

    def __init__(self, path: str | Path, max_rows: int = 100_000):
        self.path = str(path)
        self.max_rows = max_rows
        self.conn: sqlite3.Connection = open_db(path, MIGRATIONS, component="publish_outbox")
        self.dropped = 0
        self._count = self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        if self._count:
            log.info("%s: %d alerts still pending from before; they go out first", self.path, self._count)

    def add(self, message: Message) -> int:
        if self._count >= self.max_rows:
            self._make_room()
        cur = self.conn.execute(
            "INSERT INTO outbox(lane, topic, payload, retain, schema, created_at) VALUES(?,?,?,?,?,?)",
            (message.lane, message.topic, message.payload, int(message.retain), message.schema, message.created_at),
        )
        self._count += 1
        message.id = cur.lastrowid
        return message.id

    def after(self, lane: int, last_id: int, limit: int) -> list[Message]:
        """Pending messages of ``lane`` with id above ``last_id``, oldest first."""
        rows = self.conn.execute(
            "SELECT id, lane, topic, payload, retain, schema, created_at FROM outbox WHERE lane=? AND id>? ORDER BY id LIMIT ?",
            (lane, last_id, limit),
        ).fetchall()
        return [
            Message(r["topic"], bytes(r["payload"]), bool(r["retain"]), r["schema"], r["lane"], r["id"], r["created_at"])
            for r in rows
        ]

    def done(self, ids: list[int]) -> None:
        """The broker acknowledged these: they leave the outbox."""
        if not ids:
            return
        with transaction(self.conn):
            self.conn.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])
        self._count = max(0, self._count - len(ids))

    def pending(self) -> int:
        return self._count

    def pending_by_lane(self) -> dict[int, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT lane, count(*) FROM outbox GROUP BY lane")}

    def _make_room(self) -> None:
        # a full outbox sheds the oldest diagnoses before it ever sheds an alarm
        for lane in sorted(LANES, reverse=True):
            row = self.conn.execute("SELECT id FROM outbox WHERE lane=? ORDER BY id LIMIT 1", (lane,)).fetchone()
            if row:
                self.conn.execute("DELETE FROM outbox WHERE id=?", (row[0],))
                self._count -= 1
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "%s: outbox full (%d alerts) while the broker is away; dropped %d oldest (lane %d first)",
                        self.path, self.max_rows, self.dropped, lane,
                    )
                return

    def close(self) -> None:
        self.conn.close()

    def __repr__(self) -> str:
        return f"Outbox({self.path!r}, pending={self._count})"


