"""The store's alarm history: anomalies, every alarm transition, and each alarm's newest state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Anomaly

# events after which an alarm's condition is no longer present
CLEARING_EVENTS = ("returned", "cleared", "normal")


class AlarmHistory:
    """Anomalies and alarm transitions in, history and current states out (a part of ``Store``)."""

    def add_anomalies(self, anomalies: Iterable[Anomaly]) -> int:
        rows = [
            (a.ts, a.asset, a.kind, a.signal, a.condition, a.score, a.threshold, a.fault_type, json.dumps(a.to_dict()))
            for a in anomalies
        ]
        self._write_many(
            "INSERT INTO anomalies(ts, asset, kind, signal, condition, score, threshold, fault_type, body) "
            "VALUES(?,?,?,?,?,?,?,?,?)",
            rows,
        )
        return len(rows)

    def add_alarm_events(self, events: Iterable[AlarmEvent]) -> int:
        """Append each transition to the history and keep the alarm's newest state."""
        events = list(events)
        history = []
        latest = []
        for e in events:
            body = json.dumps(e.alarm.to_dict())
            history.append((e.alarm_id, e.ts, e.event, e.state.value, e.actor, e.comment, body))
            a = e.alarm
            latest.append((a.alarm_id, a.asset, a.condition, a.state.value, int(a.priority), a.raised_at, a.updated_at, body))
        with self._writing() as conn:
            conn.executemany(
                "INSERT INTO alarm_events(alarm_id, ts, event, state, actor, comment, alarm) VALUES(?,?,?,?,?,?,?)",
                history,
            )
            # an event that arrives late must not roll the alarm back to an older state
            conn.executemany(
                "INSERT INTO alarms(alarm_id, asset, condition, state, priority, raised_at, updated_at, body) "
                "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(alarm_id) DO UPDATE SET asset=excluded.asset, "
                "condition=excluded.condition, state=excluded.state, priority=excluded.priority, "
                "raised_at=excluded.raised_at, updated_at=excluded.updated_at, body=excluded.body "
                "WHERE excluded.updated_at >= alarms.updated_at",
                latest,
            )
        return len(events)

    def add_alarm_event(self, event: AlarmEvent) -> None:
        self.add_alarm_events([event])

    def anomalies(self, asset: str | None = None, since: float = 0.0, until: float | None = None) -> list[Anomaly]:
        until = time.time() if until is None else until
        sql, params = "SELECT body FROM anomalies WHERE ts>=? AND ts<=?", [since, until]
        if asset:
            sql += " AND asset=?"
            params.append(asset)
        return [Anomaly.from_dict(json.loads(r[0])) for r in self._rows(sql + " ORDER BY ts", params)]

    def alarm(self, alarm_id: str) -> Alarm | None:
        rows = self._rows("SELECT body FROM alarms WHERE alarm_id=?", (alarm_id,))
        return Alarm.from_dict(json.loads(rows[0][0])) if rows else None

    def active_alarms(self, asset: str | None = None) -> list[Alarm]:
        """Alarms that need the operator: active, or returned but not yet acknowledged; most urgent first."""
        sql, params = "SELECT body FROM alarms WHERE state != ?", [AlarmState.NORMAL.value]
        if asset:
            sql += " AND asset=?"
            params.append(asset)
        rows = self._rows(sql + " ORDER BY priority, raised_at DESC", params)
        return [Alarm.from_dict(json.loads(r[0])) for r in rows]

    def standing_alarms(self, now: float, asset: str | None = None) -> list[Alarm]:
        """Alarms not normal, and every shelved or out-of-service one (those are normal while not watched)."""
        sql = (f"SELECT body FROM alarms WHERE (state != ? OR {self._json('body', 'out_of_service', 'boolean')} "
               f"OR {self._json('body', 'shelved_until', 'number')} > ?)")
        params: list = [AlarmState.NORMAL.value, now]
        if asset:
            sql += " AND asset=?"
            params.append(asset)
        rows = self._rows(sql + " ORDER BY priority, raised_at DESC", params)
        return [Alarm.from_dict(json.loads(r[0])) for r in rows]

    def consequences(self, alarm_id: str) -> list[Alarm]:
        """The alarms folded under ``alarm_id`` that are not normal, oldest first."""
        rows = self._rows(f"SELECT body FROM alarms WHERE state != ? AND {self._json('body', 'parent_id')} = ? "
                          "ORDER BY raised_at", (AlarmState.NORMAL.value, alarm_id))
        return [Alarm.from_dict(json.loads(r[0])) for r in rows]

    def recent_alarms(self, since: float, asset: str | None = None, limit: int = 100) -> list[Alarm]:
        """Alarms that changed since ``since`` (active, returned or cleared), the latest change first."""
        sql, params = "SELECT body FROM alarms WHERE updated_at>=?", [since]
        if asset:
            sql += " AND asset=?"
            params.append(asset)
        rows = self._rows(sql + " ORDER BY updated_at DESC LIMIT ?", [*params, limit])
        return [Alarm.from_dict(json.loads(r[0])) for r in rows]

    def alarm_history(
        self, alarm_id: str | None = None, since: float = 0.0, asset: str | None = None, limit: int = 500
    ) -> list[AlarmEvent]:
        """Alarm transitions, newest first."""
        sql, params = "SELECT alarm_id, ts, event, state, actor, comment, alarm FROM alarm_events WHERE ts>=?", [since]
        if alarm_id:
            sql += " AND alarm_id=?"
            params.append(alarm_id)
        rows = self._rows(sql + " ORDER BY ts DESC, id DESC LIMIT ?", [*params, limit * (4 if asset else 1)])
        events = [
            AlarmEvent(r[0], r[1], r[2], AlarmState(r[3]), Alarm.from_dict(json.loads(r[6])), r[4], r[5]) for r in rows
        ]
        if asset:
            events = [e for e in events if e.alarm.asset == asset][:limit]
        return events

    def anomaly_summary(self, since: float) -> dict[str, tuple[int, float]]:
        """Per asset since ``since``: how many anomalies, and the largest score/threshold among them."""
        rows = self._rows(
            "SELECT asset, count(*), max(CASE WHEN threshold > 0 THEN score / threshold ELSE 1 END) FROM anomalies "
            "WHERE ts>=? GROUP BY asset", (since,))
        return {asset: (count, float(peak or 0.0)) for asset, count, peak in rows}

    def _cleared_at(self, alarm_id: str, raised_at: float) -> float | None:
        rows = self._rows(
            f"SELECT min(ts) FROM alarm_events WHERE alarm_id=? AND ts>=? AND event IN "
            f"({','.join('?' * len(CLEARING_EVENTS))})",
            (alarm_id, raised_at, *CLEARING_EVENTS),
        )
        return rows[0][0] if rows else None
