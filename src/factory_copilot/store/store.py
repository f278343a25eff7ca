"""The store: one SQLite file holding what the line did and what people said about it.

Readings are kept raw for a few minutes and downsampled into per-signal buckets
(mean/min/max) for trends; anomalies, alarms with their event history,
diagnoses, conversations and operator feedback sit beside them. Writes are
batched in transactions; every table has its own retention. The read side is
what the dashboard and the copilot's incident memory ask for.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory_copilot.records import (
    Alarm,
    AlarmEvent,
    AlarmState,
    Anomaly,
    Diagnosis,
    Feedback,
    Incident,
    MarkedAlarm,
    Priority,
    Quality,
    Reading,
    Turn,
)
from factory_copilot.plumbing.sqlite import Locked, open_db, transaction
from factory_copilot.store.schema import COMPONENT, MIGRATIONS

if TYPE_CHECKING:
    import pandas as pd

    from factory_copilot.config import LineConfig

log = logging.getLogger(__name__)

DAY = 86_400.0

# events after which an alarm's condition is no longer present
_CLEARING_EVENTS = ("returned", "cleared", "normal")


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


@dataclass(slots=True)
class AssetHealth:
    """How one asset is doing right now, for the line overview (worst first)."""

    asset: str
    name: str
    status: str  # "alarm", "warning", "stale", "ok", "no data"
    worst_priority: Priority | None = None
    active_alarms: int = 0
    unacknowledged: int = 0
    shelved: int = 0
    anomalies: int = 0  # in the recent window
    peak_ratio: float = 0.0  # largest score/threshold among recent anomalies
    last_reading: float | None = None
    bad_quality_share: float = 0.0

    @property
    def rank(self) -> tuple:
        """Sort key: alarms first by priority, then unacknowledged, anomalies, staleness."""
        order = {"alarm": 0, "warning": 1, "stale": 2, "no data": 3, "ok": 4}
        return (
            order[self.status],
            int(self.worst_priority) if self.worst_priority else 9,
            -self.unacknowledged,
            -self.active_alarms,
            -self.peak_ratio,
            self.asset,
        )


class Store:
    """SQLite store; thread-safe (one connection under a lock); open several on one file from several processes."""

    def __init__(self, path: str | Path, bucket_s: float = 5.0, retention: Retention | None = None):
        if bucket_s <= 0:
            raise ValueError("store bucket_s must be > 0")
        self.path = str(path)
        self.bucket_s = float(bucket_s)
        self.max_raw_points = 20_000  # above this many samples in a window, trend(resolution="auto") uses buckets
        self.retention = retention or Retention()
        self._db = Locked(open_db(self.path, MIGRATIONS, COMPONENT))

    def close(self) -> None:
        with self._db as conn:
            conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def add_readings(self, readings: Sequence[Reading]) -> int:
        """Write a batch of readings in one transaction: raw rows plus the merged trend buckets."""
        if not readings:
            return 0
        raw = []
        buckets: dict[tuple[str, str, float], list] = {}
        width = self.bucket_s
        for r in readings:
            quality = r.quality.value if isinstance(r.quality, Quality) else str(r.quality)
            raw.append((r.ts, r.asset, r.signal, r.value, quality))
            bucket = math.floor(r.ts / width) * width
            agg = buckets.get((r.asset, r.signal, bucket))
            if agg is None:
                agg = buckets[(r.asset, r.signal, bucket)] = [0, 0.0, None, None, 0]
            if r.is_process_value:
                v = float(r.value)  # type: ignore[arg-type]
                agg[0] += 1
                agg[1] += v
                agg[2] = v if agg[2] is None or v < agg[2] else agg[2]
                agg[3] = v if agg[3] is None or v > agg[3] else agg[3]
            else:
                agg[4] += 1
        rows = [(a, s, b, *agg) for (a, s, b), agg in buckets.items()]
        with self._db as conn, transaction(conn):
            conn.executemany("INSERT INTO readings_raw(ts, asset, signal, value, quality) VALUES(?,?,?,?,?)", raw)
            conn.executemany(
                "INSERT INTO trend(asset, signal, bucket, n, total, vmin, vmax, not_good) VALUES(?,?,?,?,?,?,?,?) "
                "ON CONFLICT(asset, signal, bucket) DO UPDATE SET n = n + excluded.n, total = total + excluded.total, "
                "vmin = CASE WHEN vmin IS NULL THEN excluded.vmin WHEN excluded.vmin IS NULL THEN vmin "
                "ELSE min(vmin, excluded.vmin) END, "
                "vmax = CASE WHEN vmax IS NULL THEN excluded.vmax WHEN excluded.vmax IS NULL THEN vmax "
                "ELSE max(vmax, excluded.vmax) END, "
                "not_good = not_good + excluded.not_good",
                rows,
            )
        return len(raw)

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
        with self._db as conn, transaction(conn):
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

    def add_diagnoses(self, diagnoses: Iterable[Diagnosis]) -> int:
        rows = [(d.alarm_id, d.created_at, d.source, json.dumps(d.to_dict())) for d in diagnoses]
        self._write_many("INSERT INTO diagnoses(alarm_id, created_at, source, body) VALUES(?,?,?,?)", rows)
        return len(rows)

    def add_diagnosis(self, diagnosis: Diagnosis) -> None:
        self.add_diagnoses([diagnosis])

    def add_turns(self, turns: Iterable[Turn]) -> int:
        rows = [(t.alarm_id, t.ts, t.role, t.text, t.actor, t.request_id, t.source) for t in turns]
        self._write_many(
            "INSERT OR IGNORE INTO conversations(alarm_id, ts, role, text, actor, request_id, source) VALUES(?,?,?,?,?,?,?)", rows
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
                "signals, raised_at, cleared_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                (feedback.alarm_id, feedback.ts, feedback.verdict, actual_cause, feedback.fix, feedback.actor, asset,
                 condition, fault_type, json.dumps(signals), raised_at, cleared_at),
            )
            return int(cur.lastrowid)

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

    # ------------------------------------------------------------------ reads

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._db as conn:
            return conn.execute(sql, params).fetchall()

    def trend(
        self,
        asset: str,
        since: float,
        until: float | None = None,
        signals: Sequence[str] | None = None,
        resolution: str = "auto",
    ) -> "pd.DataFrame":
        """Samples of an asset's signals in [since, until]: columns ts, signal, mean, min, max, n.

        ``resolution`` "raw" returns every stored sample (mean = min = max = value),
        "bucket" the downsampled buckets (ts = bucket start), "auto" raw when the
        window fits in the raw retention, raw rows cover it and there are at most
        ``max_raw_points`` of them, else buckets.
        """
        import pandas as pd

        until = time.time() if until is None else until
        if resolution not in ("auto", "raw", "bucket"):
            raise ValueError(f"trend resolution {resolution!r}: use auto, raw or bucket")
        sig_sql, sig_params = "", []
        if signals:
            sig_sql = f" AND signal IN ({','.join('?' * len(signals))})"
            sig_params = list(signals)
        use_raw = resolution == "raw"
        if resolution == "auto":
            keep = self.retention.readings_raw
            if keep is not None and until - since <= keep:
                oldest = self._rows("SELECT min(ts) FROM readings_raw WHERE asset=?", (asset,))[0][0]
                # raw only while a chart can show it: thousands of samples a second go through the buckets
                count = self._rows(
                    f"SELECT count(*) FROM readings_raw WHERE asset=? AND ts>=? AND ts<=?{sig_sql}",
                    [asset, since, until, *sig_params])[0][0]
                use_raw = oldest is not None and oldest <= since + self.bucket_s and count <= self.max_raw_points
        if use_raw:
            rows = self._rows(
                "SELECT ts, signal, value, value, value, CASE WHEN quality='good' AND value IS NOT NULL THEN 1 ELSE 0 END "
                f"FROM readings_raw WHERE asset=? AND ts>=? AND ts<=?{sig_sql} ORDER BY ts",
                [asset, since, until, *sig_params],
            )
            frame = pd.DataFrame([tuple(r) for r in rows], columns=["ts", "signal", "mean", "min", "max", "n"])
            # Bad/Uncertain samples are marked, never plotted as data
            frame.loc[frame["n"] == 0, ["mean", "min", "max"]] = float("nan")
        else:
            rows = self._rows(
                "SELECT bucket, signal, CASE WHEN n > 0 THEN total / n END, vmin, vmax, n FROM trend "
                f"WHERE asset=? AND bucket>=? AND bucket<=?{sig_sql} ORDER BY bucket",
                [asset, math.floor(since / self.bucket_s) * self.bucket_s, until, *sig_params],
            )
            frame = pd.DataFrame([tuple(r) for r in rows], columns=["ts", "signal", "mean", "min", "max", "n"])
        return frame.astype({"ts": float, "mean": float, "min": float, "max": float, "n": int})

    def latest_readings(self, asset: str | None = None) -> dict[str, tuple[float, float | None, str]]:
        """Newest raw sample per ``asset.signal``: (ts, value, quality)."""
        sql = "SELECT asset, signal, max(ts), value, quality FROM readings_raw"
        params: list[Any] = []
        if asset:
            sql += " WHERE asset=?"
            params.append(asset)
        rows = self._rows(sql + " GROUP BY asset, signal", params)
        return {f"{r[0]}.{r[1]}": (r[2], r[3], r[4]) for r in rows}

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

    def diagnosis(self, alarm_id: str) -> Diagnosis | None:
        """The newest diagnosis of an alarm."""
        rows = self._rows(
            "SELECT body FROM diagnoses WHERE alarm_id=? ORDER BY created_at DESC, id DESC LIMIT 1", (alarm_id,)
        )
        return Diagnosis.from_dict(json.loads(rows[0][0])) if rows else None

    def conversation(self, alarm_id: str) -> list[Turn]:
        rows = self._rows(
            "SELECT alarm_id, role, text, ts, actor, request_id, source FROM conversations WHERE alarm_id=? "
            "ORDER BY ts, id",
            (alarm_id,),
        )
        return [Turn(*tuple(r)) for r in rows]

    def diagnoses_since(self, since: float = 0.0) -> list[Diagnosis]:
        """Every diagnosis written since ``since``, oldest first (runbook and model ones alike)."""
        rows = self._rows("SELECT body FROM diagnoses WHERE created_at>=? ORDER BY created_at, id", (since,))
        return [Diagnosis.from_dict(json.loads(r["body"])) for r in rows]

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

        Ranking is the copilot's own (``InMemoryIncidents``: same asset, same fault
        type, overlap of the signals that stood out), so a store-backed copilot and
        an in-memory one agree; the store only supplies the candidates.
        """
        from factory_copilot.copilot.evidence import InMemoryIncidents  # ranking has one home: the copilot's

        rows = self._rows(
            "SELECT alarm_id, asset, fault_type, verdict, ts, condition, signals, actual_cause, fix, actor "
            "FROM feedback WHERE asset=? ORDER BY ts DESC LIMIT 2000",
            (asset,),
        )
        candidates = [
            Incident(r[0], r[1], r[2], r[3], r[4], r[5] or "", json.loads(r[6]), r[7], r[8], r[9]) for r in rows
        ]
        found = InMemoryIncidents(candidates, limit=limit).similar(asset, fault_type, list(signals))
        for incident in found:
            d = self.diagnosis(incident.alarm_id)
            incident.diagnosis_summary = d.summary if d else None
        return found

    def line_health(self, line: "LineConfig | None" = None, now: float | None = None, window_s: float = 300.0,
                    stale_s: float = 30.0) -> list[AssetHealth]:
        """Health of every asset, worst first: its active alarms, recent anomalies and data freshness."""
        now = time.time() if now is None else now
        names: dict[str, str] = {}
        if line is not None:
            names = {a.id: a.name for a in line.assets}
        health: dict[str, AssetHealth] = {a: AssetHealth(a, n, "no data") for a, n in names.items()}

        def of(asset: str) -> AssetHealth:
            if asset not in health:
                health[asset] = AssetHealth(asset, names.get(asset, asset), "no data")
            return health[asset]

        for alarm in self.active_alarms():
            h = of(alarm.asset)
            if alarm.shelved or alarm.out_of_service or alarm.suppressed:
                h.shelved += 1
                continue
            h.active_alarms += 1
            h.unacknowledged += not alarm.state.acknowledged
            if h.worst_priority is None or alarm.priority < h.worst_priority:
                h.worst_priority = alarm.priority
        for asset, count, peak in self._rows(
            "SELECT asset, count(*), max(CASE WHEN threshold > 0 THEN score / threshold ELSE 1 END) FROM anomalies "
            "WHERE ts>=? GROUP BY asset",
            (now - window_s,),
        ):
            h = of(asset)
            h.anomalies, h.peak_ratio = count, float(peak or 0.0)
        # from the buckets, not the raw rows: a few hundred rows instead of a million at 3,000 readings/s
        for asset, total, not_good in self._rows(
            "SELECT asset, sum(n) + sum(not_good), sum(not_good) FROM trend WHERE bucket>=? GROUP BY asset",
            (now - window_s,),
        ):
            h = of(asset)
            h.bad_quality_share = (not_good or 0) / total if total else 0.0
        for asset, last in self._rows(
            "SELECT asset, max(bucket) FROM trend WHERE bucket>=? GROUP BY asset", (now - 7 * DAY,)
        ):
            h = of(asset)
            # the newest raw sample is one index lookup per asset (asset, ts); buckets only bound it
            newest = self._rows("SELECT max(ts) FROM readings_raw WHERE asset=?", (asset,))[0][0]
            h.last_reading = newest if newest is not None else last + self.bucket_s
        for h in health.values():
            if h.active_alarms:
                h.status = "alarm"
            elif h.anomalies or h.shelved or h.bad_quality_share > 0.2:
                h.status = "warning"
            elif h.last_reading is None:
                h.status = "no data"
            elif now - h.last_reading > stale_s:
                h.status = "stale"
            else:
                h.status = "ok"
        return sorted(health.values(), key=lambda h: h.rank)

    def _cleared_at(self, alarm_id: str, raised_at: float) -> float | None:
        rows = self._rows(
            f"SELECT min(ts) FROM alarm_events WHERE alarm_id=? AND ts>=? AND event IN "
            f"({','.join('?' * len(_CLEARING_EVENTS))})",
            (alarm_id, raised_at, *_CLEARING_EVENTS),
        )
        return rows[0][0] if rows else None

    def counts(self) -> dict[str, int]:
        """Rows per table (for status pages and tests)."""
        tables = ["readings_raw", "trend", "anomalies", "alarms", "alarm_events", "diagnoses", "conversations",
                  "feedback"]
        return {t: self._rows(f"SELECT count(*) FROM {t}")[0][0] for t in tables}


def _fault_of(alarm: Alarm) -> str | None:
    if alarm.anomaly and alarm.anomaly.fault_type:
        return alarm.anomaly.fault_type
    if alarm.condition.startswith("fault:"):
        fault = alarm.condition.removeprefix("fault:")
        return None if fault == "unknown" else fault
    return None


def _signals_of(alarm: Alarm) -> list[str]:
    """The signal keys that stood out in the alarm's anomaly, largest share first."""
    a = alarm.anomaly
    if a is None:
        return []
    if a.contributions:
        return [k for k, _ in sorted(a.contributions.items(), key=lambda kv: -kv[1])][:5]
    return [f"{a.asset}.{a.signal}"] if a.signal else []
