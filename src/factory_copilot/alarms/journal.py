"""The alarm engine's SQLite file: current alarms, the audit trail of every event, and open floods.

Opened through ``open_db`` (component ``alarms``), so the file may be shared with
the store; the tables are prefixed to stay clear of the store's own ``alarms``.
Each engine step writes its changed alarms and its events in one transaction,
so a restart never sees an event without the state it led to.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Priority
from factory_copilot.plumbing.sqlite import open_db, open_reader, transaction

log = logging.getLogger(__name__)

COMPONENT = "alarms"
# audit rows that change nothing of the alarm: a refused command, an operator's verdict (its words are the store's)
UNCHANGED = frozenset({"refused", "feedback"})

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE alarm_engine_state (
        alarm_id TEXT PRIMARY KEY,
        asset TEXT NOT NULL,
        condition TEXT NOT NULL,
        position TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        returned_at REAL,
        body TEXT NOT NULL,
        UNIQUE (asset, condition)
    );

    -- every alarm event and operator action, append-only
    CREATE TABLE alarm_audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        alarm_id TEXT NOT NULL,
        event TEXT NOT NULL,
        state TEXT NOT NULL,
        actor TEXT,
        comment TEXT,
        position TEXT NOT NULL,
        annunciated INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX alarm_audit_alarm_ts ON alarm_audit(alarm_id, ts);
    CREATE INDEX alarm_audit_ts ON alarm_audit(ts);

    CREATE TABLE alarm_floods (
        position TEXT PRIMARY KEY,
        flood_id TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    """,
]


@dataclass(slots=True)
class StoredAlarm:
    alarm: Alarm
    position: str
    returned_at: float | None


@dataclass(slots=True)
class Entry:
    """One audit row to write: the event and what the engine knew about it."""

    event: AlarmEvent
    position: str
    annunciated: bool


class Journal:
    def __init__(self, path: str | Path, *, read_only: bool = False):
        """The engine's file; ``read_only`` for a reader beside the running engine (nothing created, nothing written)."""
        self.path = str(path)
        self.conn: sqlite3.Connection = (open_reader(path, len(MIGRATIONS), COMPONENT) if read_only
                                         else open_db(path, MIGRATIONS, COMPONENT))

    def close(self) -> None:
        self.conn.close()

    # -- reading -----------------------------------------------------------------------------------
    def load_alarms(self) -> list[StoredAlarm]:
        rows = self.conn.execute("SELECT body, position, returned_at FROM alarm_engine_state ORDER BY alarm_id")
        return [StoredAlarm(Alarm.from_dict(json.loads(r["body"])), r["position"], r["returned_at"]) for r in rows]

    def load_floods(self) -> dict[str, tuple[str, float]]:
        rows = self.conn.execute("SELECT position, flood_id, started_at FROM alarm_floods")
        return {r["position"]: (r["flood_id"], r["started_at"]) for r in rows}

    def recent_raises(self, since: float) -> list[tuple[str, float, str]]:
        """(position, ts, alarm_id) of annunciated new alarms since ``since``: what flood detection counts."""
        rows = self.conn.execute(
            "SELECT position, ts, alarm_id FROM alarm_audit WHERE event='raised' AND annunciated=1 AND ts>=? ORDER BY seq",
            (since,),
        )
        return [(r["position"], r["ts"], r["alarm_id"]) for r in rows]

    def audit(self, alarm_id: str | None = None, since: float | None = None, limit: int | None = None) -> list[AlarmEvent]:
        sql, args = "SELECT * FROM alarm_audit WHERE 1=1", []
        if alarm_id is not None:
            sql += " AND alarm_id=?"
            args.append(alarm_id)
        if since is not None:
            sql += " AND ts>=?"
            args.append(since)
        sql += " ORDER BY seq"
        if limit is not None:
            # the newest ``limit`` rows, still oldest first
            sql = f"SELECT * FROM ({sql.replace('ORDER BY seq', 'ORDER BY seq DESC')} LIMIT ?) ORDER BY seq"
            args.append(limit)
        return [_event(r) for r in self.conn.execute(sql, args)]

    def entries(self, alarm_id: str | None = None, since: float | None = None, until: float | None = None,
                limit: int | None = None, light: str | bool = False) -> list[tuple[int, AlarmEvent]]:
        """Audit rows with their sequence number (what a report cites), oldest first; ``limit`` keeps the newest.

        ``light``: each row's alarm without its anomaly (the evidence), which readers of the trail rarely need and
        which is most of a row's size; ``"kpi"``: only what ``kpi.alarm_kpis`` reads (state, priority, whether
        annunciated, the root), taken out of the JSON by SQLite: a month of rows reads many times faster.
        """
        sql, args = f"SELECT {_columns(light)} FROM alarm_audit WHERE 1=1", []
        for clause, value in (("alarm_id=?", alarm_id), ("ts>=?", since), ("ts<=?", until)):
            if value is not None:
                sql += f" AND {clause}"
                args.append(value)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [(r["seq"], _event(r)) for r in reversed(self.conn.execute(sql, args).fetchall())]

    def alarm_ids(self) -> list[str]:
        """Every alarm the engine has held (its state table keeps them, normal ones included)."""
        return [r[0] for r in self.conn.execute("SELECT alarm_id FROM alarm_engine_state ORDER BY alarm_id")]

    def state_at(self, ts: float, before: bool = False, light: str | bool = False) -> dict[str, tuple[int, AlarmEvent]]:
        """Each alarm's newest audit row at (or, ``before``, strictly before) ``ts``: how it stood then.

        One index lookup per alarm the engine has held, all in one statement.
        """
        op = "<" if before else "<="
        rows = self.conn.execute(
            f"SELECT {_columns(light)} FROM alarm_audit WHERE seq IN (SELECT (SELECT seq FROM alarm_audit a "
            f"WHERE a.alarm_id=s.alarm_id AND a.ts{op}? ORDER BY a.ts DESC, a.seq DESC LIMIT 1) "
            "FROM alarm_engine_state s)", (ts,))
        return {r["alarm_id"]: (r["seq"], _event(r)) for r in rows}

    def standing_at(self, ts: float, light: str | bool = False) -> dict[str, tuple[int, AlarmEvent]]:
        """``state_at(ts)`` of the alarms that stood then: not normal, shelved past ``ts``, or out of service."""
        rows = self.conn.execute(
            f"SELECT {_columns(light)} FROM alarm_audit WHERE seq IN (SELECT (SELECT seq FROM alarm_audit a "
            "WHERE a.alarm_id=s.alarm_id AND a.ts<=? ORDER BY a.ts DESC, a.seq DESC LIMIT 1) FROM alarm_engine_state s) "
            "AND (state != ? OR json_extract(alarm_audit.body, '$.out_of_service') "
            "OR json_extract(alarm_audit.body, '$.shelved_until') > ?)", (ts, AlarmState.NORMAL.value, ts))
        return {r["alarm_id"]: (r["seq"], _event(r)) for r in rows}

    def period(self, start: float, end: float, light: str | bool = False,
               cache: dict[int, AlarmEvent] | None = None) -> list[tuple[int, AlarmEvent]]:
        """The audit rows of [start, end] and what comes before them that a period's KPIs depend on, oldest first.

        ``kpi.alarm_kpis`` reads each alarm's state when the period begins from its earlier events: for an alarm
        active at ``start`` that is every row since its activity began, else its last row. With those, the
        figures equal those computed from the whole trail, without reading the whole trail. Rows never change
        once written, so a reader asking again may keep them in ``cache`` (seq -> event, of one ``light``).
        """
        seqs: set[int] = set()
        newest = self.conn.execute(
            "SELECT seq, alarm_id, state, ts FROM alarm_audit WHERE seq IN (SELECT (SELECT seq FROM alarm_audit a "
            "WHERE a.alarm_id=s.alarm_id AND a.ts<? ORDER BY a.ts DESC, a.seq DESC LIMIT 1) FROM alarm_engine_state s)",
            (start,)).fetchall()
        active = (AlarmState.ACTIVE_UNACK.value, AlarmState.ACTIVE_ACK.value)
        for seq, alarm_id, state, _ in newest:
            seqs.add(seq)
            if state not in active:
                continue
            began = self.conn.execute("SELECT max(ts) FROM alarm_audit WHERE alarm_id=? AND ts<? AND state NOT IN (?, ?)",
                                      (alarm_id, start, *active)).fetchone()[0]
            seqs.update(r[0] for r in self.conn.execute(
                "SELECT seq FROM alarm_audit WHERE alarm_id=? AND ts<? AND ts>=?",
                (alarm_id, start, began if began is not None else float("-inf"))))
        seqs.update(r[0] for r in self.conn.execute("SELECT seq FROM alarm_audit WHERE ts>=? AND ts<=?", (start, end)))
        return self._by_seq(sorted(seqs), light, cache)

    def _by_seq(self, seqs: list[int], light: str | bool, cache: dict[int, AlarmEvent] | None) -> list[tuple[int, AlarmEvent]]:
        known = cache if cache is not None else {}
        missing = [s for s in seqs if s not in known]
        found: dict[int, AlarmEvent] = {}
        for i in range(0, len(missing), 900):  # within SQLite's limit of bound parameters
            chunk = missing[i:i + 900]
            for r in self.conn.execute(f"SELECT {_columns(light)} FROM alarm_audit WHERE seq IN "
                                       f"({','.join('?' * len(chunk))})", chunk):
                found[r["seq"]] = _event(r)
        if cache is not None:
            cache.update(found)
        return [(s, known.get(s) or found[s]) for s in seqs if s in known or s in found]

    # -- writing -----------------------------------------------------------------------------------
    def write(
        self,
        alarms: Iterable[StoredAlarm],
        entries: Iterable[Entry],
        floods: dict[str, tuple[str, float] | None] | None = None,
    ) -> None:
        """Store changed alarms, new audit entries and flood changes in one transaction."""
        with transaction(self.conn) as conn:
            for s in alarms:
                a = s.alarm
                conn.execute(
                    "INSERT INTO alarm_engine_state(alarm_id, asset, condition, position, state, priority, returned_at, body) "
                    "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(alarm_id) DO UPDATE SET state=excluded.state, "
                    "priority=excluded.priority, returned_at=excluded.returned_at, body=excluded.body, position=excluded.position",
                    (a.alarm_id, a.asset, a.condition, s.position, a.state.value, a.priority.value, s.returned_at,
                     json.dumps(a.to_dict())),
                )
            for e in entries:
                ev = e.event
                conn.execute(
                    "INSERT INTO alarm_audit(ts, alarm_id, event, state, actor, comment, position, annunciated, body) "
                    "VALUES(?,?,?,?,?,?,?,?,?)",
                    (ev.ts, ev.alarm_id, ev.event, ev.state.value, ev.actor, ev.comment, e.position, int(e.annunciated),
                     json.dumps(ev.alarm.to_dict())),
                )
            for position, flood in (floods or {}).items():
                if flood is None:
                    conn.execute("DELETE FROM alarm_floods WHERE position=?", (position,))
                else:
                    conn.execute(
                        "INSERT INTO alarm_floods(position, flood_id, started_at) VALUES(?,?,?) "
                        "ON CONFLICT(position) DO UPDATE SET flood_id=excluded.flood_id, started_at=excluded.started_at",
                        (position, flood[0], flood[1]),
                    )


class Step:
    """What one engine step changed (alarms, audit entries, floods), written in one transaction at its end.

    If the file fails, the step's events still go out (an operator must get the alarm even when the disk is
    full) and what it owes the file is written with the next step that can.
    """

    def __init__(self, journal: Journal):
        self.journal = journal
        self._entries: list[Entry] = []
        self._changed: set[str] = set()  # alarm ids whose state to store
        self._floods: dict[str, tuple[str, float] | None] = {}  # position -> (flood id, started) or None: ended
        self._unwritten: list[Entry] = []  # audit entries a failed write still owes the file

    def add(self, entry: Entry) -> None:
        self._entries.append(entry)
        self._changed.add(entry.event.alarm_id)

    def flood(self, position: str, flood: tuple[str, float] | None) -> None:
        self._floods[position] = flood

    def write(self, stored: Callable[[str], StoredAlarm]) -> list[Entry]:
        """Store the step (``stored``: an alarm id's state as it is now); returns the step's new entries."""
        if not (self._entries or self._changed or self._floods or self._unwritten):
            return []
        alarms = [stored(alarm_id) for alarm_id in sorted(self._changed)]
        new, self._entries = self._entries, []
        try:
            self.journal.write(alarms, self._unwritten + new, self._floods)
        except sqlite3.Error as exc:
            # state and trail follow when the file is back
            if not self._unwritten:
                log.error("%s: cannot store alarm state (%s); alarms go on, retrying on every step",
                          self.journal.path, exc)
            self._unwritten += new
        else:
            if self._unwritten:
                log.warning("%s: alarm state stored again (%d delayed audit entries written)",
                            self.journal.path, len(self._unwritten))
            self._unwritten = []
            self._changed.clear()
            self._floods = {}
        return new

    def write_alone(self, entry: Entry) -> None:
        """Write one audit row that changes no alarm (a refused command, a verdict) now, or with the next write."""
        try:
            self.journal.write([], [entry])
        except sqlite3.Error as exc:
            self._unwritten.append(entry)
            log.error("%s: cannot write the %s row to the audit trail yet (%s); retried with the next write",
                      self.journal.path, entry.event.event, exc)


_KPI = ("seq, ts, alarm_id, event, state, actor, comment, json_extract(body, '$.priority') AS priority, "
        "json_extract(body, '$.shelved_until') AS shelved_until, json_extract(body, '$.suppressed') AS suppressed, "
        "json_extract(body, '$.out_of_service') AS out_of_service, json_extract(body, '$.parent_id') AS parent_id, "
        "NULL AS body")


def _columns(light: str | bool) -> str:
    if light == "kpi":
        return _KPI
    return "seq, ts, alarm_id, event, state, actor, comment, json_remove(body, '$.anomaly') AS body" if light else "*"


def _event(row: sqlite3.Row) -> AlarmEvent:
    if row["body"] is None:  # the KPI columns: an alarm with only what the figures read
        state = AlarmState(row["state"])
        alarm = Alarm(row["alarm_id"], "", "", state, Priority.parse(row["priority"]), "", row["ts"], row["ts"],
                      shelved_until=row["shelved_until"], suppressed=bool(row["suppressed"]),
                      out_of_service=bool(row["out_of_service"]), parent_id=row["parent_id"])
        return AlarmEvent(row["alarm_id"], row["ts"], row["event"], state, alarm, row["actor"], row["comment"])
    return AlarmEvent(
        alarm_id=row["alarm_id"],
        ts=row["ts"],
        event=row["event"],
        state=AlarmState(row["state"]),
        alarm=Alarm.from_dict(json.loads(row["body"])),
        actor=row["actor"],
        comment=row["comment"],
    )
