"""The store's incidents: diagnoses, conversations and operator feedback, and the incident memory built on them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence

from factory_copilot.records import (
    Alarm,
    Anomaly,
    Diagnosis,
    Feedback,
    Incident,
    MarkedAlarm,
    Turn,
    rank_incidents,
)

log = logging.getLogger(__name__)


# ``origin`` (model or runbook) keeps its column name "source" (diagnoses, conversations; a diagnosis body's key too)
# for existing databases: mapped here only, in the rows below, _diagnosis_body and _diagnosis_of
def _diagnosis_body(d: Diagnosis) -> str:
    """A diagnosis as its ``body`` column keeps it: the record's fields, its origin under the kept name."""
    return json.dumps({("source" if k == "origin" else k): v for k, v in d.to_dict().items()})


def _diagnosis_of(body: str) -> Diagnosis:
    return Diagnosis.from_dict({("origin" if k == "source" else k): v for k, v in json.loads(body).items()})


class IncidentRecords:
    """What the copilot said and what people said about it (a part of ``Store``)."""

    def add_diagnoses(self, diagnoses: Iterable[Diagnosis]) -> int:
        rows = [(d.alarm_id, d.created_at, d.origin, _diagnosis_body(d)) for d in diagnoses]
        self._write_many("INSERT INTO diagnoses(alarm_id, created_at, source, body) VALUES(?,?,?,?)", rows)
        return len(rows)

    def add_diagnosis(self, diagnosis: Diagnosis) -> None:
        self.add_diagnoses([diagnosis])

    def add_turns(self, turns: Iterable[Turn]) -> int:
        rows = [(t.alarm_id, t.ts, t.role, t.text, t.actor, t.request_id, t.origin) for t in turns]
        self._write_many(
            "INSERT INTO conversations(alarm_id, ts, role, text, actor, request_id, source) VALUES(?,?,?,?,?,?,?) "
            "ON CONFLICT DO NOTHING", rows
        )
        return len(rows)

    def add_turn(self, turn: Turn) -> None:
        self.add_turns([turn])

    def add_feedback(self, feedback: Feedback) -> int:
        """Record an operator's verdict; the alarm's asset, fault and signals are copied for incident memory."""
        alarm = self.alarm(feedback.alarm_id)
        asset = condition = fault_type = None
        signals: list[str] = []
        raised_at = cleared_at = None
        actual_cause = feedback.actual_cause
        if alarm is None:
            log.warning("feedback for unknown alarm %s is kept, but without asset or fault for incident memory",
                        feedback.alarm_id)
        else:
            asset, condition, raised_at = alarm.asset, alarm.condition, alarm.raised_at
            fault_type = _fault_of(alarm)
            signals = _signals_of(alarm)
            cleared_at = self._cleared_at(alarm.alarm_id, alarm.raised_at)
            if feedback.verdict == "confirmed" and not actual_cause:
                diagnosis = self.diagnosis(alarm.alarm_id)
                top = diagnosis.causes[0].fault_type if diagnosis and diagnosis.causes else fault_type
                actual_cause = top
        with self._db as conn:
            cur = conn.execute(
                "INSERT INTO feedback(alarm_id, ts, verdict, actual_cause, fix, actor, asset, condition, fault_type, "
                "signals, raised_at, cleared_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (feedback.alarm_id, feedback.ts, feedback.verdict, actual_cause, feedback.fix, feedback.actor, asset,
                 condition, fault_type, json.dumps(signals), raised_at, cleared_at),
            )
            return int(cur.fetchone()[0])

    def diagnosis(self, alarm_id: str) -> Diagnosis | None:
        """The newest diagnosis of an alarm."""
        rows = self._rows(
            "SELECT body FROM diagnoses WHERE alarm_id=? ORDER BY created_at DESC, id DESC LIMIT 1", (alarm_id,)
        )
        return _diagnosis_of(rows[0][0]) if rows else None

    def diagnoses_since(self, since: float = 0.0) -> list[Diagnosis]:
        """Every diagnosis written since ``since``, oldest first (runbook and model ones alike)."""
        rows = self._rows("SELECT body FROM diagnoses WHERE created_at>=? ORDER BY created_at, id", (since,))
        return [_diagnosis_of(r[0]) for r in rows]

    def conversation(self, alarm_id: str) -> list[Turn]:
        rows = self._rows(
            "SELECT alarm_id, role, text, ts, actor, request_id, source FROM conversations WHERE alarm_id=? "
            "ORDER BY ts, id",
            (alarm_id,),
        )
        return [Turn(r[0], r[1], r[2], r[3], r[4], r[5], origin=r[6]) for r in rows]

    def feedback(self, alarm_id: str | None = None, since: float = 0.0) -> list[Feedback]:
        sql, params = "SELECT alarm_id, verdict, actual_cause, fix, actor, ts FROM feedback WHERE ts>=?", [since]
        if alarm_id:
            sql += " AND alarm_id=?"
            params.append(alarm_id)
        return [Feedback(*tuple(r)) for r in self._rows(sql + " ORDER BY ts, id", params)]

    def false_alarms(self, since: float = 0.0) -> list[MarkedAlarm]:
        """Alarms marked false since ``since``, each with the anomalies of its condition while it stood."""
        return self.marked_alarms(("false_alarm",), since)

    def marked_alarms(self, verdicts: Sequence[str], since: float = 0.0) -> list[MarkedAlarm]:
        """Alarms given one of ``verdicts`` since ``since`` (latest verdict per alarm), with their anomalies."""
        rows = self._rows(
            "SELECT alarm_id, asset, condition, raised_at, cleared_at, ts, actor, verdict FROM feedback f "
            f"WHERE verdict IN ({','.join('?' * len(verdicts))}) AND ts>=? "
            "AND id=(SELECT max(id) FROM feedback g WHERE g.alarm_id=f.alarm_id) ORDER BY ts",
            (*verdicts, since),
        )
        out = []
        for alarm_id, asset, condition, raised_at, cleared_at, marked_at, actor, verdict in rows:
            if asset is None:
                continue  # the alarm was never stored: no window to give back
            start = raised_at
            end = cleared_at or self._cleared_at(alarm_id, raised_at) or marked_at
            anomaly_rows = self._rows(
                "SELECT body FROM anomalies WHERE asset=? AND condition=? AND ts>=? AND ts<=? ORDER BY ts",
                (asset, condition, start - self.bucket_s, end),
            )
            out.append(
                MarkedAlarm(alarm_id, asset, condition, start, end, marked_at, verdict, actor,
                            [Anomaly.from_dict(json.loads(r[0])) for r in anomaly_rows])
            )
        return out

    def similar(self, asset: str, fault_type: str | None, signals: Sequence[str] = (), limit: int = 3) -> list[Incident]:
        """Past alarms on this asset with an operator's verdict, most similar first (the copilot's IncidentMemory).

        Ranking is ``rank_incidents`` beside the Incident record (same asset, same fault type, overlap of
        the signals that stood out), so a store-backed copilot and an in-memory one agree; the store scores the
        newest 2,000 verdicts on the asset the same way in SQL and makes Incidents of the best ``limit`` only.
        """
        wanted = sorted(set(signals))
        # rank_incidents' score in SQL (the asset is the same: 1; the fault type: 2; the overlap of the signals
        # that stood out, shared over either's, up to 1), so only the best ``limit`` rows leave the database: 2,000
        # candidates made into Incidents on every look-up drove the service's process into full garbage
        # collections of 0.5-1.5 s, and scoring them in Python held the interpreter ~20 ms a look-up (issue 21)
        items = self._json_items("c.signals")
        rows = self._rows(
            "SELECT alarm_id, asset, fault_type, verdict, ts, condition, signals, actual_cause, fix, actor FROM ("
            f"SELECT *, CASE WHEN fault_type = ? THEN 3.0 ELSE 1.0 END + CASE WHEN {len(wanted)} + theirs - shared = 0 "
            f"THEN 0.0 ELSE CAST(shared AS DOUBLE PRECISION) / ({len(wanted)} + theirs - shared) END AS score FROM ("
            f"SELECT c.*, (SELECT count(DISTINCT value) FROM {items}) AS theirs, "
            f"(SELECT count(DISTINCT value) FROM {items} WHERE value IN ({','.join('?' * len(wanted)) or 'NULL'})) "
            "AS shared FROM (SELECT id, alarm_id, asset, fault_type, verdict, ts, condition, signals, actual_cause, "
            "fix, actor FROM feedback WHERE asset=? ORDER BY ts DESC LIMIT 2000) c) s) r "
            "ORDER BY score DESC, ts DESC, id DESC LIMIT ?",
            (fault_type, *wanted, asset, max(0, limit)),
        )
        candidates = [
            Incident(r[0], r[1], r[2], r[3], r[4], r[5] or "", json.loads(r[6]), r[7], r[8], r[9]) for r in rows
        ]
        # the best few ranked again as Incidents, so the similarity and the order are rank_incidents' own
        found = rank_incidents(candidates, asset, fault_type, list(signals), limit)
        for incident in found:
            d = self.diagnosis(incident.alarm_id)
            incident.diagnosis_summary = d.summary if d else None
        return found


def _fault_of(alarm: Alarm) -> str | None:
    return alarm.anomaly.fault_type if alarm.anomaly and alarm.anomaly.fault_type else None


def _signals_of(alarm: Alarm) -> list[str]:
    """The signal keys that stood out in the alarm's anomaly, largest share first."""
    a = alarm.anomaly
    if a is None:
        return []
    if a.contributions:
        return [k for k, _ in sorted(a.contributions.items(), key=lambda kv: -kv[1])][:5]
    return [f"{a.asset}.{a.signal}"] if a.signal else []
