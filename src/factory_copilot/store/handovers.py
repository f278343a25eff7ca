"""The store's shift handovers: each handover as written at its shift change, and who acknowledged it (append-only)."""

from __future__ import annotations

import json

from factory_copilot.records import Handover, HandoverAck


class Handovers:
    """Handovers in and out (a part of ``Store``)."""

    def add_handover(self, handover: Handover) -> None:
        """Keep a handover; writing the same shift again replaces its body, never its acknowledgements."""
        with self._writing() as conn:
            conn.execute(
                'INSERT INTO handovers(handover_id, shift, date, start, "end", written_at, body) VALUES(?,?,?,?,?,?,?) '
                "ON CONFLICT(handover_id) DO UPDATE SET written_at=excluded.written_at, body=excluded.body",
                (handover.handover_id, handover.shift, handover.date, handover.start, handover.end,
                 handover.written_at, json.dumps(handover.body)))

    def acknowledge_handover(self, ack: HandoverAck) -> Handover | None:
        """Record who acknowledged a handover (an audit row); None when there is no such handover."""
        with self._writing() as conn:
            if conn.execute("SELECT 1 FROM handovers WHERE handover_id=?", (ack.handover_id,)).fetchone() is None:
                return None
            conn.execute("INSERT INTO handover_events(handover_id, ts, event, actor, comment) VALUES(?,?,?,?,?)",
                         (ack.handover_id, ack.ts, "acknowledged", ack.actor, ack.comment))
        return self.handover(ack.handover_id)

    def handover(self, handover_id: str) -> Handover | None:
        rows = self._rows('SELECT handover_id, shift, date, start, "end", written_at, body FROM handovers '
                          "WHERE handover_id=?", (handover_id,))
        return self._handover(rows[0]) if rows else None

    def handovers(self, since: float = 0.0, limit: int = 50) -> list[Handover]:
        """The newest handovers whose shift ended since ``since``, newest first."""
        rows = self._rows('SELECT handover_id, shift, date, start, "end", written_at, body FROM handovers '
                          'WHERE "end">=? ORDER BY "end" DESC LIMIT ?', (since, limit))
        return [self._handover(r) for r in rows]

    def handover_events(self, handover_id: str) -> list[dict]:
        """The handover's audit trail, oldest first."""
        rows = self._rows("SELECT id, ts, event, actor, comment FROM handover_events WHERE handover_id=? ORDER BY ts, id",
                          (handover_id,))
        return [{"id": r[0], "ts": r[1], "event": r[2], "actor": r[3], "comment": r[4]} for r in rows]

    def _handover(self, row) -> Handover:
        acks = [{"actor": e["actor"], "ts": e["ts"], "comment": e["comment"]}
                for e in self.handover_events(row[0]) if e["event"] == "acknowledged"]
        return Handover(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), acks)
