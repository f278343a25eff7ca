"""The ISA-18.2 / OPC UA Part 9 alarm engine: anomalies and operator commands in, alarm events out.

Pure and clock-injected: nothing happens but in ``ingest``, ``command`` and
``tick``, each of which reads ``clock()`` once and returns the events it caused,
so a test drives it with a fake clock and no sleeps. State lives in SQLite
(``journal.py``), so a restarted engine resumes the same alarms.

Rules (the station relies on the detect station emitting an Anomaly for every
evaluation while a condition is abnormal; silence means normal):

* one alarm per condition (``asset`` + ``Anomaly.condition``), with a stable id;
* a condition is *abnormal* while ``score >= threshold``; once its alarm is active
  it stays abnormal until ``score < threshold * (1 - deadband)`` (deadband) or no
  anomaly arrives for ``silence_s`` (then normal counts from last anomaly + silence_s);
* on-delay: raised only after being abnormal continuously for ``on_delay_s``;
  off-delay: returns only after being normal continuously for ``off_delay_s``;
* states: NORMAL -> ACTIVE_UNACK (raised) -> ACTIVE_ACK (acknowledged) -> NORMAL (cleared),
  or ACTIVE_UNACK -> RTN_UNACK (returned) -> NORMAL (acknowledged);
* chattering: re-activation of an alarm that is RTN_UNACK, or that cleared less
  than ``chatter_window_s`` ago, is the same alarm again: event ``realarm``,
  ``realarm_count`` + 1, no new alarm and not counted towards a flood;
* shelved and mode-suppressed alarms keep their state but are not annunciated;
  if one returns while not annunciated it goes straight to NORMAL (nobody was
  shown it, so nobody must acknowledge it); when a shelve ends (unshelve or expiry)
  an alarm still active is annunciated again as ACTIVE_UNACK;
* lost data is a state, not a value: an anomaly names the signals whose data is lost
  (``stale``: a lost source, a silent signal); while a signal is stale, every alarm on it
  (its own checks, and its asset's fault alarm) keeps its state - it never returns on
  silence - and counts its silence again from when data flows;
* out of service: not evaluated at all, state NORMAL, until returned to service;
* flood: more than ``flood_count`` new annunciated alarms within ``flood_window_s``
  at one operator position starts a flood named after its first alarm
  (``flood_id``); it ends when fewer than ``flood_end_count`` remain in the window.

An event is annunciated (``annunciated(alarm)``) unless its alarm is shelved,
suppressed or out of service; consumers still get every event for their records.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from factory_copilot.alarms import design
from factory_copilot.alarms.journal import Entry, Journal, StoredAlarm
from factory_copilot.alarms.text import alarm_text
from factory_copilot.catalogue import Fault, faults_of
from factory_copilot.config import LineConfig
from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Anomaly, CommandResult, OperatorCommand

log = logging.getLogger(__name__)

COMMANDS = ("acknowledge", "shelve", "unshelve", "out_of_service", "return_to_service")
SYSTEM = "system"


@dataclass(frozen=True)
class AlarmSettings:
    on_delay_s: float = 2.0
    off_delay_s: float = 5.0
    on_delay_by_kind: Mapping[str, float] = field(default_factory=dict)  # e.g. {"multivariate": 0.0}
    deadband: float = 0.05  # fraction of the threshold the score must fall below it to count as cleared
    silence_s: float | None = None  # no anomaly for this long = normal; None: 2.5 x the line's sampling interval
    chatter_window_s: float = 60.0
    max_shelve_s: float = 8 * 3600.0
    flood_count: int = 10  # a flood is MORE than this many new alarms ...
    flood_window_s: float = 600.0  # ... within this window, at one operator position
    flood_end_count: int = 5  # the flood ends when fewer than this many remain in the window

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be >= 0, got {getattr(self, name)}"
            for name in ("on_delay_s", "off_delay_s", "chatter_window_s", "flood_window_s")
            if getattr(self, name) < 0
        ]
        if not 0 <= self.deadband < 1:
            problems.append(f"deadband must be in [0, 1), got {self.deadband}")
        if self.silence_s is not None and self.silence_s <= 0:
            problems.append(f"silence_s must be > 0, got {self.silence_s}")
        if self.max_shelve_s <= 0:
            problems.append(f"max_shelve_s must be > 0, got {self.max_shelve_s}")
        if problems:
            raise ValueError("alarm settings: " + "; ".join(problems))

    def on_delay(self, kind: str) -> float:
        return self.on_delay_by_kind.get(kind, self.on_delay_s)


def annunciated(alarm: Alarm) -> bool:
    """Whether an operator is shown this alarm now (ISA-18.2: shelved, suppressed and out-of-service are not)."""
    return alarm.shelved_until is None and not alarm.suppressed and not alarm.out_of_service


@dataclass(slots=True)
class _Condition:
    """What the engine follows between anomalies of one condition (kept in memory only)."""

    asset: str
    condition: str
    kind: str
    position: str
    alarm_id: str | None = None
    pending_since: float | None = None  # start of the current continuous abnormal stretch
    last_abnormal: float | None = None
    normal_since: float | None = None  # first below-deadband score after the last abnormal one
    returned_at: float | None = None
    signals: frozenset[str] = frozenset()  # the signal keys it is judged on (for lost data)


@dataclass(slots=True)
class _Flood:
    raises: deque = field(default_factory=deque)  # (ts, alarm_id) of new annunciated alarms
    flood_id: str | None = None
    started_at: float | None = None


class AlarmEngine:
    """One alarm per condition, ISA-18.2 states, SQLite-backed. Not thread-safe: call from one thread/loop."""

    def __init__(
        self,
        line: LineConfig,
        db_path: str | Path = ":memory:",
        settings: AlarmSettings | None = None,
        clock: Callable[[], float] = time.time,
        faults: Mapping[str, Fault] | None = None,
    ):
        self.line = line
        self.settings = settings or AlarmSettings()
        self.silence_s = self.settings.silence_s or 2.5 * line.sampling_interval_s
        self.clock = clock
        self.faults = faults_of(line) if faults is None else faults
        self.journal = Journal(db_path)
        self._alarms: dict[str, Alarm] = {}
        self._conditions: dict[tuple[str, str], _Condition] = {}
        self._floods: dict[str, _Flood] = {}
        self._unknown_assets: set[str] = set()
        # what the current step changed, written in one transaction at its end
        self._events: list[Entry] = []
        self._dirty: set[str] = set()
        self._flood_changes: dict[str, tuple[str, float] | None] = {}
        self._by_condition: dict[tuple[str, str], str] = {}
        self._unwritten: list[Entry] = []  # audit entries a failed write still owes the file
        self._stale_until: dict[str, float] = {}  # signal key -> until when its data counts as lost
        self._load()

    # -- queries -----------------------------------------------------------------------------------
    def get(self, alarm_id: str) -> Alarm | None:
        a = self._alarms.get(alarm_id)
        return _copy(a) if a else None

    def active(self) -> list[Alarm]:
        """Alarms not NORMAL, worst priority first, then unacknowledged first, then newest first."""
        alarms = [a for a in self._alarms.values() if a.state is not AlarmState.NORMAL]
        alarms.sort(key=lambda a: (a.priority.value, a.state.acknowledged, -a.raised_at))
        return [_copy(a) for a in alarms]

    def alarms(self) -> list[Alarm]:
        """Every alarm the engine knows, including NORMAL and out-of-service ones, by id."""
        return [_copy(a) for _, a in sorted(self._alarms.items())]

    def audit(self, alarm_id: str | None = None, since: float | None = None, limit: int | None = None) -> list[AlarmEvent]:
        """Every event and operator action (oldest first), optionally for one alarm and/or since a time."""
        return self.journal.audit(alarm_id, since, limit)

    def floods(self) -> dict[str, str]:
        """Operator position -> flood id of the floods in progress."""
        return {p: f.flood_id for p, f in self._floods.items() if f.flood_id}

    def close(self) -> None:
        self.journal.close()

    # -- inputs ------------------------------------------------------------------------------------
    def ingest(self, anomaly: Anomaly) -> list[AlarmEvent]:
        """Take one evaluation of an abnormal (or recovering) condition; return the events it caused."""
        now = self.clock()
        if not _finite(anomaly.score) or not _finite(anomaly.threshold):
            log.warning(
                "anomaly for %s %s ignored: score %r / threshold %r is not a finite number",
                anomaly.asset, anomaly.condition, anomaly.score, anomaly.threshold,
            )
            return []
        for key in anomaly.stale:
            self._stale_until[key] = now + self.silence_s
        if (anomaly.kind != "source" and design.find_asset(self.line, anomaly.asset) is None
                and anomaly.asset not in self._unknown_assets):
            self._unknown_assets.add(anomaly.asset)
            log.warning("anomaly for asset %r which the line file does not know; alarmed with default priority", anomaly.asset)
        cond = self._condition(anomaly)
        alarm = self._alarms.get(cond.alarm_id) if cond.alarm_id else None
        if alarm is not None and alarm.out_of_service:
            return []
        is_active = alarm is not None and alarm.state.active
        level = anomaly.threshold * (1 - self.settings.deadband) if is_active else anomaly.threshold
        if anomaly.score >= level:
            broken = (
                cond.pending_since is None
                or cond.normal_since is not None
                or (cond.last_abnormal is not None and now - cond.last_abnormal > self.silence_s)
            )
            if broken:
                cond.pending_since = now
            cond.last_abnormal, cond.normal_since = now, None
            if is_active:
                before = alarm.anomaly.fault_type if alarm.anomaly else None
                alarm.anomaly = anomaly
                if anomaly.fault_type not in (None, "unknown", before):
                    self._reclassify(alarm, anomaly, before, now)
                self._follow_suppression(alarm, cond, anomaly, now)
            elif now - cond.pending_since >= self.settings.on_delay(anomaly.kind):
                self._activate(cond, alarm, anomaly, now)
        else:
            cond.pending_since = None
            if cond.normal_since is None:
                cond.normal_since = now
            if is_active:
                self._check_return(alarm, cond, now)
        return self._commit()

    def tick(self, now: float | None = None) -> list[AlarmEvent]:
        """Let time pass: off-delays by silence, shelve expiry, flood end. Call a few times a second."""
        now = self.clock() if now is None else now
        for key, cond in list(self._conditions.items()):
            alarm = self._alarms.get(cond.alarm_id) if cond.alarm_id else None
            if alarm is not None and alarm.state.active:
                if self._frozen(cond, now):
                    # no data is not normal data: the alarm holds, and its silence counts from when data is back
                    cond.last_abnormal, cond.normal_since = now, None
                    continue
                self._check_return(alarm, cond, now)
            elif cond.last_abnormal is not None and now - cond.last_abnormal > self.silence_s:
                cond.pending_since = None
                if alarm is None:
                    del self._conditions[key]  # a blip that never became an alarm
        for alarm in list(self._alarms.values()):
            if alarm.shelved_until is not None and alarm.shelved_until <= now:
                self._unshelve(alarm, now, SYSTEM, "shelve expired")
        for position, flood in self._floods.items():
            self._prune(flood, now)
            if flood.flood_id and len(flood.raises) < self.settings.flood_end_count:
                self._end_flood(position, flood, now)
        return self._commit()

    def command(self, cmd: OperatorCommand) -> tuple[CommandResult, list[AlarmEvent]]:
        """Execute an operator command; an invalid one changes nothing and says why."""
        now = self.clock()
        problem = self._check(cmd)
        if problem:
            log.warning("rejected %s of %r by %r: %s", cmd.command, cmd.alarm_id, cmd.actor, problem)
            return CommandResult(cmd.request_id, False, problem, self.get(cmd.alarm_id)), []
        alarm = self._alarms[cmd.alarm_id]
        if cmd.command == "acknowledge":
            alarm.state = AlarmState.ACTIVE_ACK if alarm.state is AlarmState.ACTIVE_UNACK else AlarmState.NORMAL
            alarm.acked_by, alarm.acked_at = cmd.actor, now
            self._emit(alarm, "acknowledged", now, cmd.actor, cmd.comment)
            done = f"{alarm.alarm_id} acknowledged by {cmd.actor}"
        elif cmd.command == "shelve":
            alarm.shelved_until, alarm.shelved_by = now + float(cmd.shelve_s), cmd.actor  # type: ignore[arg-type]
            self._emit(alarm, "shelved", now, cmd.actor, cmd.comment or f"shelved for {cmd.shelve_s:g} s")
            done = f"{alarm.alarm_id} shelved by {cmd.actor} for {cmd.shelve_s:g} s"
        elif cmd.command == "unshelve":
            self._unshelve(alarm, now, cmd.actor, cmd.comment)
            done = f"{alarm.alarm_id} unshelved by {cmd.actor}"
        elif cmd.command == "out_of_service":
            alarm.out_of_service = True
            alarm.state, alarm.suppressed = AlarmState.NORMAL, False
            alarm.shelved_until = alarm.shelved_by = None
            self._reset_condition(alarm)
            self._emit(alarm, "out_of_service", now, cmd.actor, cmd.comment)
            done = f"{alarm.alarm_id} taken out of service by {cmd.actor}"
        else:  # return_to_service
            alarm.out_of_service = False
            self._reset_condition(alarm)
            self._emit(alarm, "return_to_service", now, cmd.actor, cmd.comment)
            done = f"{alarm.alarm_id} returned to service by {cmd.actor}"
        events = self._commit()
        return CommandResult(cmd.request_id, True, done, self.get(alarm.alarm_id)), events

    # -- transitions -------------------------------------------------------------------------------
    def _activate(self, cond: _Condition, alarm: Alarm | None, anomaly: Anomaly, now: float) -> None:
        suppressed = design.mode_suppressed(self.line, anomaly)
        text = alarm_text(self.line, self.faults, anomaly)
        chattering = alarm is not None and (
            alarm.state is AlarmState.RTN_UNACK
            or (cond.returned_at is not None and now - cond.returned_at < self.settings.chatter_window_s)
        )
        if alarm is not None and chattering:
            alarm.state = AlarmState.ACTIVE_UNACK
            alarm.realarm_count += 1
            alarm.acked_by = alarm.acked_at = None
            alarm.anomaly, alarm.message, alarm.suppressed = anomaly, text, suppressed
            self._emit(alarm, "realarm", now, comment=f"re-alarm #{alarm.realarm_count}")
            return
        if alarm is None:
            alarm_id = design.alarm_id(cond.asset, cond.condition, self._alarms.keys())
            cond.alarm_id = alarm_id
            self._by_condition[(cond.asset, cond.condition)] = alarm_id
            alarm = Alarm(alarm_id, cond.asset, cond.condition, AlarmState.NORMAL,
                          design.priority_for(self.line, self.faults, anomaly), text, now, now)
            self._alarms[alarm_id] = alarm
        alarm.state = AlarmState.ACTIVE_UNACK
        alarm.priority = design.priority_for(self.line, self.faults, anomaly)
        alarm.message, alarm.anomaly, alarm.suppressed = text, anomaly, suppressed
        alarm.raised_at, alarm.realarm_count = now, 0
        alarm.acked_by = alarm.acked_at = None
        alarm.flood_id = None
        if annunciated(alarm):
            self._count_towards_flood(cond.position, alarm, now)
        self._emit(alarm, "raised", now)

    def _check_return(self, alarm: Alarm, cond: _Condition, now: float) -> None:
        if cond.normal_since is not None:
            normal_from = cond.normal_since
        elif cond.last_abnormal is None:
            cond.last_abnormal = now  # no evidence either way yet: start the silence period now
            return
        elif now - cond.last_abnormal >= self.silence_s:
            normal_from = cond.last_abnormal + self.silence_s
        else:
            return
        if now - normal_from < self.settings.off_delay_s:
            return
        cond.returned_at = now
        cond.pending_since = cond.last_abnormal = cond.normal_since = None
        if not annunciated(alarm):
            reason = "suppressed by mode" if alarm.suppressed else "shelved"
            alarm.state, alarm.suppressed = AlarmState.NORMAL, False
            self._emit(alarm, "cleared", now, comment=f"returned to normal while {reason}")
        elif alarm.state is AlarmState.ACTIVE_UNACK:
            alarm.state = AlarmState.RTN_UNACK
            self._emit(alarm, "returned", now)
        else:
            alarm.state = AlarmState.NORMAL
            self._emit(alarm, "cleared", now)

    def _reclassify(self, alarm: Alarm, anomaly: Anomaly, before: str | None, now: float) -> None:
        """The classifier named the fault of an active alarm (or changed its mind): same alarm, new text and priority."""
        alarm.message = alarm_text(self.line, self.faults, anomaly)
        alarm.priority = design.priority_for(self.line, self.faults, anomaly)
        self._emit(alarm, "reclassified", now, comment=f"{before or 'unknown'} -> {anomaly.fault_type}")

    def _follow_suppression(self, alarm: Alarm, cond: _Condition, anomaly: Anomaly, now: float) -> None:
        suppressed = design.mode_suppressed(self.line, anomaly)
        if suppressed == alarm.suppressed:
            return
        alarm.suppressed = suppressed
        if suppressed:
            self._emit(alarm, "suppressed", now, comment=f"designed suppression in {anomaly.mode.value}")
        else:
            # still abnormal in a mode where it counts: the operator must see it now
            alarm.state = AlarmState.ACTIVE_UNACK
            alarm.message = alarm_text(self.line, self.faults, anomaly)
            self._emit(alarm, "unsuppressed", now, comment=f"active in {anomaly.mode.value}")

    def _unshelve(self, alarm: Alarm, now: float, actor: str, comment: str | None) -> None:
        alarm.shelved_until = alarm.shelved_by = None
        if alarm.state.active:
            alarm.state = AlarmState.ACTIVE_UNACK  # still active: annunciate again
            alarm.acked_by = alarm.acked_at = None
        elif alarm.state is AlarmState.RTN_UNACK:
            alarm.state = AlarmState.NORMAL
        self._emit(alarm, "unshelved", now, actor, comment)

    def _reset_condition(self, alarm: Alarm) -> None:
        cond = self._conditions.get((alarm.asset, alarm.condition))
        if cond is not None:
            cond.pending_since = cond.last_abnormal = cond.normal_since = None

    # -- floods ------------------------------------------------------------------------------------
    def _prune(self, flood: _Flood, now: float) -> None:
        while flood.raises and flood.raises[0][0] <= now - self.settings.flood_window_s:
            flood.raises.popleft()

    def _count_towards_flood(self, position: str, alarm: Alarm, now: float) -> None:
        flood = self._floods.setdefault(position, _Flood())
        self._prune(flood, now)
        flood.raises.append((now, alarm.alarm_id))
        if flood.flood_id:
            alarm.flood_id = flood.flood_id
            return
        if len(flood.raises) <= self.settings.flood_count:
            return
        first_id = flood.raises[0][1]
        flood.flood_id, flood.started_at = first_id, now
        self._flood_changes[position] = (first_id, now)
        alarm.flood_id = first_id
        first = self._alarms.get(first_id)
        if first is not None:
            first.flood_id = first_id
            self._emit(first, "flood_start", now, comment=(
                f"alarm flood at position {position}: {len(flood.raises)} new alarms within "
                f"{self.settings.flood_window_s:g} s; grouped under {first_id}"))
        # the earlier alarms of the window belong to the flood too; the new one says so in its own event
        for _, member_id in list(flood.raises)[1:-1]:
            member = self._alarms.get(member_id)
            if member is not None and member.flood_id != first_id:
                member.flood_id = first_id
                self._emit(member, "flood_grouped", now, comment=f"part of flood {first_id}")

    def _end_flood(self, position: str, flood: _Flood, now: float) -> None:
        first = self._alarms.get(flood.flood_id or "")
        if first is not None:
            self._emit(first, "flood_end", now, comment=(
                f"alarm flood at position {position} over: {len(flood.raises)} new alarms within "
                f"{self.settings.flood_window_s:g} s"))
        flood.flood_id = flood.started_at = None
        self._flood_changes[position] = None

    # -- bookkeeping -------------------------------------------------------------------------------
    def _frozen(self, cond: _Condition, now: float) -> bool:
        """Whether any signal the condition is judged on has lost its data."""
        if not self._stale_until:
            return False
        for key in [k for k, until in self._stale_until.items() if until <= now]:
            del self._stale_until[key]
        return any(k in self._stale_until for k in cond.signals)

    def _condition(self, anomaly: Anomaly) -> _Condition:
        key = (anomaly.asset, anomaly.condition)
        cond = self._conditions.get(key)
        if cond is None:
            cond = _Condition(anomaly.asset, anomaly.condition, anomaly.kind, design.operator_position(self.line, anomaly.asset),
                              signals=design.condition_signals(self.line, anomaly.asset, anomaly.condition))
            known = self._by_condition.get(key)
            cond.alarm_id = known
            self._conditions[key] = cond
        return cond

    def _check(self, cmd: OperatorCommand) -> str | None:
        if cmd.command not in COMMANDS:
            return f"unknown command {cmd.command!r}; use one of {', '.join(COMMANDS)}"
        if not (cmd.actor or "").strip():
            return f"{cmd.command} needs an actor: who is doing it"
        alarm = self._alarms.get(cmd.alarm_id)
        if alarm is None:
            return f"no alarm with id {cmd.alarm_id!r}"
        if cmd.command == "acknowledge":
            if alarm.out_of_service:
                return f"alarm {alarm.alarm_id} is out of service; nothing to acknowledge"
            if alarm.state.acknowledged:
                by = f" (by {alarm.acked_by})" if alarm.acked_by and alarm.state is AlarmState.ACTIVE_ACK else ""
                return f"alarm {alarm.alarm_id} is already acknowledged{by}; state {alarm.state.value}"
        elif cmd.command == "shelve":
            if alarm.out_of_service:
                return f"alarm {alarm.alarm_id} is out of service; return it to service before shelving"
            if cmd.shelve_s is None:
                return "shelve needs a duration: shelve_s (seconds)"
            if not _finite(cmd.shelve_s) or cmd.shelve_s <= 0:
                return f"shelve_s must be a positive number of seconds, got {cmd.shelve_s!r}"
            if cmd.shelve_s > self.settings.max_shelve_s:
                return f"shelve_s {cmd.shelve_s:g} is beyond the maximum of {self.settings.max_shelve_s:g} s"
        elif cmd.command == "unshelve":
            if alarm.shelved_until is None:
                return f"alarm {alarm.alarm_id} is not shelved"
        elif cmd.command == "out_of_service":
            if alarm.out_of_service:
                return f"alarm {alarm.alarm_id} is already out of service"
        elif cmd.command == "return_to_service":
            if not alarm.out_of_service:
                return f"alarm {alarm.alarm_id} is in service"
        return None

    def _emit(self, alarm: Alarm, event: str, now: float, actor: str | None = None, comment: str | None = None) -> None:
        alarm.updated_at = now
        self._dirty.add(alarm.alarm_id)
        position = design.operator_position(self.line, alarm.asset)
        ev = AlarmEvent(alarm.alarm_id, now, event, alarm.state, _copy(alarm), actor, comment)
        self._events.append(Entry(ev, position, annunciated(alarm)))

    def _commit(self) -> list[AlarmEvent]:
        """Write this step's alarms and audit entries; if the file fails, alarms still go out and the write is retried."""
        if not (self._events or self._dirty or self._flood_changes or self._unwritten):
            return []
        stored = []
        for alarm_id in sorted(self._dirty):
            alarm = self._alarms[alarm_id]
            cond = self._conditions.get((alarm.asset, alarm.condition))
            stored.append(StoredAlarm(_copy(alarm), design.operator_position(self.line, alarm.asset),
                                      cond.returned_at if cond else None))
        new, self._events = self._events, []
        try:
            self.journal.write(stored, self._unwritten + new, self._flood_changes)
        except sqlite3.Error as exc:
            # an operator must get the alarm even when the disk is full; state and trail follow when it is back
            if not self._unwritten:
                log.error("%s: cannot store alarm state (%s); alarms go on, retrying on every step",
                          self.journal.path, exc)
            self._unwritten += new
        else:
            if self._unwritten:
                log.warning("%s: alarm state stored again (%d delayed audit entries written)",
                            self.journal.path, len(self._unwritten))
            self._unwritten = []
            self._dirty.clear()
            self._flood_changes = {}
        for e in new:
            log.info("alarm %s %s -> %s%s", e.event.alarm_id, e.event.event, e.event.state.value,
                     f" by {e.event.actor}" if e.event.actor else "")
        return [e.event for e in new]

    def _load(self) -> None:
        now = self.clock()
        for s in self.journal.load_alarms():
            a = s.alarm
            self._alarms[a.alarm_id] = a
            self._by_condition[(a.asset, a.condition)] = a.alarm_id
            kind = a.anomaly.kind if a.anomaly else a.condition.rpartition(":")[2]
            cond = _Condition(a.asset, a.condition, kind, s.position, a.alarm_id, returned_at=s.returned_at,
                              signals=design.condition_signals(self.line, a.asset, a.condition))
            if a.state.active:
                # the evidence stopped with the old process; give the condition one silence period to show itself
                cond.pending_since = cond.last_abnormal = now
            self._conditions[(a.asset, a.condition)] = cond
        for position, ts, alarm_id in self.journal.recent_raises(now - self.settings.flood_window_s):
            self._floods.setdefault(position, _Flood()).raises.append((ts, alarm_id))
        for position, (flood_id, started_at) in self.journal.load_floods().items():
            flood = self._floods.setdefault(position, _Flood())
            flood.flood_id, flood.started_at = flood_id, started_at
        if self._alarms:
            log.info("resumed %d alarms (%d not normal) from %s", len(self._alarms), len(self.active()), self.journal.path)


def _copy(alarm: Alarm) -> Alarm:
    # anomalies are replaced, never mutated, so a shallow copy is a faithful snapshot
    return dataclasses.replace(alarm)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
