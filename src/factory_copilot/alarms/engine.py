"""The ISA-18.2 / OPC UA Part 9 alarm engine: anomalies and operator commands in, alarm events out.

Pure and clock-injected: nothing happens but in ``ingest``, ``follow_plc``, ``command``, ``feedback`` and
``tick``, each of which reads ``clock()`` once and returns the events it caused, so a test drives it with a fake
clock and no sleeps. State lives in SQLite (``journal.py``), so a restarted engine resumes the same alarms.

The engine is the one public face: it keeps the alarms and their conditions, runs each step and hands each part
what it needs; each part's docstring holds its rules:
``timing.py`` (one alarm per condition; abnormal, on-delay, off-delay, silence and lost data in data time),
``states.py`` (the ISA-18.2 transitions, shelving, re-alarms and chattering, designed suppression, overdue),
``situations.py`` over ``grouping.py`` (one annunciated alarm per situation), ``plc.py`` (a PLC's own alarms),
``naming.py`` (fault names), ``priorities.py`` (severity and priority), ``floods.py`` (EEMUA 191 floods),
``authority.py`` (who may do what) and ``journal.py`` (each step written in one transaction).

Two times: how long a condition has been abnormal or normal is measured in *data time* (the anomalies' ``ts``),
so a replay faster than real time behaves as live; silence (no anomaly at all) and everything an operator sees
(event times, shelving, chattering, floods) are measured on the engine's ``clock``. An event is annunciated
(``states.annunciated``) unless its alarm is shelved, suppressed or out of service; consumers still get every
event for their records.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from factory_copilot.alarms import authority, design, floods, grouping, naming, priorities, situations, states, timing
from factory_copilot.alarms import plc as plc_part
from factory_copilot.alarms.states import annunciated
from factory_copilot.alarms.journal import Entry, Journal, Step, StoredAlarm
from factory_copilot.alarms.text import alarm_text
from factory_copilot.plumbing.logs import Throttled, printable
from factory_copilot.catalogue import Fault, faults_of
from factory_copilot.config import LineConfig
from factory_copilot.records import (Alarm, AlarmEvent, AlarmState, Anomaly, CommandKind, CommandResult, Feedback,
                                    OperatorCommand, OperatorFeedback, PlcCondition, Priority)

log = logging.getLogger(__name__)

COMMANDS = authority.COMMANDS  # the commands an operator may send, as callers know them
SYSTEM = "system"


@dataclass(frozen=True)
class AlarmSettings:
    on_delay_s: float = 2.0
    off_delay_s: float = 5.0
    on_delay_by_kind: Mapping[str, float] = field(default_factory=dict)  # e.g. {"multivariate": 0.0}
    # a fault comes and goes while it grows (an intermittent slip, a bearing that rattles): its alarm waits longer
    off_delay_by_kind: Mapping[str, float] = field(default_factory=lambda: {"multivariate": 120.0})
    deadband: float = 0.05  # fraction of the threshold the level must fall below it to count as cleared
    silence_s: float | None = None  # no anomaly for this long = normal; None: 2.5 x the line's sampling interval
    chatter_window_s: float = 60.0
    chatter_count: int = 3  # this many re-alarms, each within chatter_window_s of returning, make it chattering ...
    chatter_off_delay_max_s: float = 600.0  # ... and its off-delay doubles with each further one, up to this
    max_shelve_s: float = 8 * 3600.0
    flood_count: int = 10  # a flood is MORE than this many new alarms ...
    flood_window_s: float = 600.0  # ... within this window, at one operator position
    flood_end_count: int = 5  # the flood ends when fewer than this many remain in the window
    group_consequences: bool = True  # one annunciated alarm per situation (off: every alarm rings on its own)
    group_window_s: float = 600.0  # a root explains alarms raised this long before it, and after it returned
    distinct_after_s: float = 120.0  # a folded fault alarm the classifier names otherwise this long rings on its own
    rename_after_s: float = 60.0  # the classifier must name another fault this long before a named alarm takes it
    release_after_s: float = 600.0  # a consequence still active this long after its root returned rings on its own
    trend_window_s: float = 120.0  # urgency: the trend over this much recent evidence ...
    min_trend_s: float = 20.0  # ... once it covers at least this long
    deescalate_after_s: float = 300.0  # a lower severity or priority must hold this long before the alarm says so

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be >= 0, got {getattr(self, name)}"
            for name in ("on_delay_s", "off_delay_s", "chatter_window_s", "chatter_off_delay_max_s", "flood_window_s",
                         "group_window_s",
                         "distinct_after_s", "rename_after_s", "release_after_s", "trend_window_s", "min_trend_s",
                         "deescalate_after_s")
            if getattr(self, name) < 0
        ]
        problems += [f"{table}[{kind!r}] must be >= 0, got {value}"
                     for table in ("on_delay_by_kind", "off_delay_by_kind")
                     for kind, value in getattr(self, table).items() if value < 0]
        if not 0 <= self.deadband < 1:
            problems.append(f"deadband must be in [0, 1), got {self.deadband}")
        if self.silence_s is not None and self.silence_s <= 0:
            problems.append(f"silence_s must be > 0, got {self.silence_s}")
        if self.chatter_count < 1:
            problems.append(f"chatter_count must be >= 1, got {self.chatter_count}")
        if self.max_shelve_s <= 0:
            problems.append(f"max_shelve_s must be > 0, got {self.max_shelve_s}")
        if problems:
            raise ValueError("alarm settings: " + "; ".join(problems))

    def on_delay(self, kind: str) -> float:
        return self.on_delay_by_kind.get(kind, self.on_delay_s)

    def off_delay(self, kind: str) -> float:
        return self.off_delay_by_kind.get(kind, self.off_delay_s)


class AlarmEngine:
    """One alarm per condition, one annunciated alarm per situation, ISA-18.2 states, SQLite-backed.
    Not thread-safe: call from one thread/loop."""

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
        self._conditions: dict[tuple[str, str], timing.Condition] = {}
        self._data_now = -math.inf  # the newest evidence of any condition: how far the data has got
        self._floods = floods.Floods(self.settings.flood_count, self.settings.flood_window_s,
                                     self.settings.flood_end_count)
        self._unknown_assets: set[str] = set()
        self._episode = timing.Episode()  # the line detector's current departure: its fault alarms are one situation
        self._step = Step(self.journal)  # what the current step changed, written in one transaction at its end
        self._by_condition: dict[tuple[str, str], str] = {}
        self._rejections = Throttled(log, 10.0)  # refused commands: each answered and audited, logged rate-limited
        self._naming = naming.Naming(line, self.faults, self.settings.rename_after_s)
        self._priorities = priorities.Priorities(line, self.faults, self.settings.min_trend_s,
                                                 self.settings.deescalate_after_s)
        self._situations = situations.Situations(line, self.faults, self.settings.group_consequences,
                                                 self.settings.group_window_s, self.settings.release_after_s,
                                                 self.settings.distinct_after_s)
        self._stale = timing.StaleData()
        self._plc = plc_part.Follower()  # the PLC alarms' EventIds, a ConditionRefresh in progress
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

    def consequences(self, alarm_id: str) -> list[Alarm]:
        """The alarms folded under a root alarm (not NORMAL), oldest first: what an operator unfolds."""
        found = [a for a in self._alarms.values() if a.parent_id == alarm_id and a.state is not AlarmState.NORMAL]
        return [_copy(a) for a in sorted(found, key=lambda a: a.raised_at)]

    def audit(self, alarm_id: str | None = None, since: float | None = None, limit: int | None = None) -> list[AlarmEvent]:
        """Every event and operator action (oldest first), optionally for one alarm and/or since a time."""
        return self.journal.audit(alarm_id, since, limit)

    def floods(self) -> dict[str, str]:
        """Operator position -> flood id of the floods in progress."""
        return self._floods.current()

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
        self._stale.mark(anomaly.stale, now + self.silence_s)
        if (anomaly.kind != "source" and design.find_asset(self.line, anomaly.asset) is None
                and anomaly.asset not in self._unknown_assets):
            self._unknown_assets.add(anomaly.asset)
            log.warning("anomaly for asset %r which the line file does not know; alarmed with default priority", anomaly.asset)
        cond = self._condition(anomaly)
        alarm = self._alarms.get(cond.alarm_id) if cond.alarm_id else None
        if alarm is not None and alarm.out_of_service:
            return []
        ts = anomaly.ts if _finite(anomaly.ts) else now
        t = timing.hear(cond, ts, now)
        self._data_now = max(self._data_now, t)
        if anomaly.kind == "multivariate":
            self._episode.follow(t, max(self.silence_s, self.settings.off_delay("multivariate")))
        is_active = alarm is not None and alarm.state.active
        ratio = design.ratio(self.line, anomaly)
        if ratio >= (1 - self.settings.deadband if is_active else 1.0):
            timing.abnormal(cond, t, design.level(self.line, anomaly), self.silence_s)
            if is_active:
                self._update(alarm, cond, anomaly, t, now)
            elif timing.abnormal_for(cond, t) >= self.settings.on_delay(anomaly.kind):
                # stamped when the condition met its on-delay in the data, not when this process got to it (a
                # replay runs many times faster than the line; live the two differ by the transport delay)
                self._activate(cond, alarm, anomaly, min(t, now))
        else:
            normal_for = timing.normal(cond, t)
            if is_active and normal_for >= self._off_delay(cond, alarm):
                self._return(alarm, cond, now)
        if anomaly.kind == "multivariate":
            self._sustain(anomaly, t, now)
        return self._commit()

    def follow_plc(self, plc: PlcCondition) -> list[AlarmEvent]:
        """Take one A&C event of a PLC's condition: the PLC's alarm raised, changed or gone as the PLC says
        (``plc.py``)."""
        now = self.clock()
        if plc.kind == "refresh_start":
            self._plc.refresh_start()
            return []
        if plc.kind == "refresh_end":
            for alarm in self._plc.refresh_end(list(self._alarms.values())):
                self._emit(alarm, "cleared", now, PLC_ACTOR, "not sent again by the PLC's ConditionRefresh")
            return self._commit()
        self._plc.heard(plc)
        said = plc_part.told(plc)
        alarm_id = self._by_condition.get((said.asset, said.condition))
        alarm = self._alarms.get(alarm_id) if alarm_id else None
        if alarm is None:
            if said.state is AlarmState.NORMAL:
                return []  # gone before we heard it stand: nothing to show
            alarm = plc_part.new_alarm(plc, said, self._alarms.keys(), now)
            self._alarms[alarm.alarm_id] = alarm
            self._by_condition[(said.asset, said.condition)] = alarm.alarm_id
            self._plc.event_ids[alarm.alarm_id] = plc.event_id
            self._emit(alarm, "raised", now, PLC_ACTOR, said.where)
            self._follow_plc_shelving(alarm, plc, said, now)
            self._fold_under_plc(alarm, now)
            return self._commit()
        self._plc.event_ids[alarm.alarm_id] = plc.event_id
        before = alarm.state
        shelving = self._follow_plc_shelving(alarm, plc, said, now)
        event = plc_part.follow(alarm, before, said, now)
        if event is None:
            return self._commit() if shelving else []  # the same state told again (a refresh): no duplicate
        self._emit(alarm, event, now, PLC_ACTOR, said.where)
        if event == "raised":
            self._fold_under_plc(alarm, now)
        return self._commit()

    def _follow_plc_shelving(self, alarm: Alarm, plc: PlcCondition, said: plc_part.Told, now: float) -> bool:
        shelving = plc_part.shelving(alarm, plc, said.where, now, self.settings.max_shelve_s)
        if shelving is not None:
            self._emit(alarm, shelving[0], now, PLC_ACTOR, shelving[1])
        return shelving is not None

    def plc_event_id(self, alarm_id: str) -> str | None:
        """The newest EventId (hex) of a PLC's alarm: what its Acknowledge must name."""
        return self._plc.event_ids.get(alarm_id)

    def tick(self, now: float | None = None) -> list[AlarmEvent]:
        """Let time pass: off-delays by silence, shelve expiry, consequences outliving their root, flood end.
        Call a few times a second."""
        now = self.clock() if now is None else now
        for key, cond in list(self._conditions.items()):
            alarm = self._alarms.get(cond.alarm_id) if cond.alarm_id else None
            if alarm is not None and alarm.state.active:
                if self._stale.frozen(cond.signals, now):
                    timing.hold(cond, now)  # no data is not normal data: the alarm holds
                    continue
                if timing.silent(cond, now, self.silence_s, self._off_delay(cond, alarm)):
                    self._return(alarm, cond, now)
            elif timing.quiet(cond, now, self._data_now, self.silence_s):
                cond.pending_since = None
                if alarm is None:
                    del self._conditions[key]  # a blip that never became an alarm
        for alarm in list(self._alarms.values()):
            if alarm.parent_id is not None and alarm.state.active:
                self._release_if_orphaned(alarm, now)
            if alarm.shelved_until is not None and alarm.shelved_until <= now:
                self._unshelve(alarm, now, SYSTEM, "shelve expired")
            if alarm.state is AlarmState.ACTIVE_UNACK:
                for comment in states.overdue(self.line, alarm, now):
                    self._emit(alarm, "overdue", now, SYSTEM, comment)
        for end in self._floods.ending(now):
            self._end_flood(end, now)
        return self._commit()

    def command(self, cmd: OperatorCommand) -> tuple[CommandResult, list[AlarmEvent]]:
        """Execute an operator command; an invalid one changes nothing and says why."""
        now = self.clock()
        refusal = authority.refusal(self.line, cmd)
        if refusal:
            self._audit_refusal(cmd, now, refusal)
            return CommandResult(cmd.request_id, False, f"refused: {refusal}", self.get(cmd.alarm_id)), []
        problem = authority.problem(cmd, self._alarms.get(cmd.alarm_id), self.settings.max_shelve_s)
        if problem:
            # each is answered; a flood of them is named here once per 10 s with the count of the others
            self._rejections.warning("rejected", "rejected %s of %s by %s: %s", cmd.command, printable(cmd.alarm_id),
                                     printable(cmd.actor), printable(problem))
            return CommandResult(cmd.request_id, False, problem, self.get(cmd.alarm_id)), []
        alarm, kind = self._alarms[cmd.alarm_id], CommandKind(cmd.command)  # problem() let only a known kind through
        if kind is CommandKind.ACKNOWLEDGE:
            self._emit(alarm, states.acknowledge(alarm, cmd.actor, now), now, cmd.actor, cmd.comment)
            done = f"{alarm.alarm_id} acknowledged by {cmd.actor}"
        elif kind is CommandKind.SHELVE:
            shelved = states.shelve(alarm, now + float(cmd.shelve_s), cmd.actor)  # type: ignore[arg-type]
            self._emit(alarm, shelved, now, cmd.actor, cmd.comment or f"shelved for {cmd.shelve_s:g} s")
            done = f"{alarm.alarm_id} shelved by {cmd.actor} for {cmd.shelve_s:g} s"
        elif kind is CommandKind.UNSHELVE:
            self._unshelve(alarm, now, cmd.actor, cmd.comment)
            done = f"{alarm.alarm_id} unshelved by {cmd.actor}"
        elif kind is CommandKind.OUT_OF_SERVICE:
            out = states.take_out_of_service(alarm)
            self._reset_condition(alarm)
            self._emit(alarm, out, now, cmd.actor, cmd.comment)
            alarm.parent_id = None
            for child in self._children(alarm.alarm_id):  # nobody watches the cause now: its consequences ring
                if child.state.active:
                    self._release(child, now, f"its cause {alarm.alarm_id} was taken out of service")
            done = f"{alarm.alarm_id} taken out of service by {cmd.actor}"
        else:  # CommandKind.RETURN_TO_SERVICE
            back = states.return_to_service(alarm)
            self._reset_condition(alarm)
            self._emit(alarm, back, now, cmd.actor, cmd.comment)
            done = f"{alarm.alarm_id} returned to service by {cmd.actor}"
        events = self._commit()
        return CommandResult(cmd.request_id, True, done, self.get(alarm.alarm_id)), events

    # -- evidence ----------------------------------------------------------------------------------
    def _off_delay(self, cond: timing.Condition, alarm: Alarm | None) -> float:
        """How long the condition must be normal before its alarm returns: its kind's off-delay, for a consequence
        folded under an active root at least the root's, for a chattering alarm what it earned (module docstring)."""
        delay = self.settings.off_delay(cond.kind)
        root = self._alarms.get(alarm.parent_id) if alarm is not None and alarm.parent_id else None
        if root is not None and root.state.active:
            root_cond = self._cond_of(root)
            delay = max(delay, self.settings.off_delay(root_cond.kind if root_cond else grouping.kind_of(root)))
        return max(delay, cond.hold_s)

    def _sustain(self, anomaly: Anomaly, t: float, now: float) -> None:
        """The detector's departure keeps other assets' active fault alarms abnormal while their signals' share of
        the score is past the threshold."""
        ratio = design.ratio(self.line, anomaly)
        for asset in {key.partition(".")[0] for key in anomaly.contributions} - {anomaly.asset}:
            if ratio * design.share(anomaly, asset) < 1 - self.settings.deadband:
                continue
            cond = self._conditions.get((asset, grouping.FAULT))
            alarm = self._alarms.get(cond.alarm_id) if cond and cond.alarm_id else None
            if alarm is None or not alarm.state.active or alarm.out_of_service:
                continue
            timing.abnormal(cond, timing.hear(cond, t, now), design.level(self.line, anomaly, asset), self.silence_s)
            self._assess(alarm, cond, now)

    # -- transitions -------------------------------------------------------------------------------
    def _activate(self, cond: timing.Condition, alarm: Alarm | None, anomaly: Anomaly, now: float) -> None:
        cond.mode_suppressed = design.mode_suppressed(self.line, anomaly)
        again = states.realarms(alarm, cond.returned_at, now, self.settings.chatter_window_s)
        if alarm is None:
            alarm_id = design.alarm_id(cond.asset, cond.condition, self._alarms.keys())
            cond.alarm_id = alarm_id
            self._by_condition[(cond.asset, cond.condition)] = alarm_id
            alarm = Alarm(alarm_id, cond.asset, cond.condition, AlarmState.NORMAL, Priority.MEDIUM, "", now, now)
            self._alarms[alarm_id] = alarm
        alarm.anomaly = self._naming.fitting(anomaly)
        states.ring(alarm)
        parent = self._cause_for(alarm, now)
        alarm.parent_id = parent.alarm_id if parent else None
        alarm.suppressed = cond.mode_suppressed or parent is not None
        why = f"consequence of {parent.alarm_id}" if parent else None
        if parent is not None:
            for child in self._children(alarm.alarm_id):  # one level: its own consequences go with it
                child.parent_id = parent.alarm_id
                self._emit(child, "grouped", now, comment=why)
        alarm.severity, alarm.priority = self._target(alarm, cond)
        alarm.message = self._text(alarm)
        self._priorities.steady(alarm.alarm_id)
        if again:  # chattering (states.realarm): the same alarm again, not a new one nor counted towards a flood
            settings = self.settings
            hold_s, events = states.realarm(alarm, why, self._off_delay(cond, alarm), settings.chatter_count,
                                            settings.chatter_window_s, settings.chatter_off_delay_max_s)
            if hold_s is not None:
                cond.hold_s = hold_s
            for event, comment in events:
                self._emit(alarm, event, now, comment=comment)
        else:
            cond.hold_s = 0.0
            alarm.raised_at, alarm.realarm_count = now, 0
            alarm.flood_id = None
            if annunciated(alarm):
                self._count_towards_flood(cond.position, alarm, now)
            self._emit(alarm, "raised", now, comment=why)
        if parent is not None:
            self._assess(parent, self._cond_of(parent), now)  # the situation may be worse now
        else:
            self._adopt(alarm, now)

    def _update(self, alarm: Alarm, cond: timing.Condition, anomaly: Anomaly, t: float, now: float) -> None:
        """Another abnormal evaluation of an active alarm: its evidence, name, suppression and severity follow."""
        fresh, renamed = self._naming.follow(alarm.alarm_id, alarm.anomaly, anomaly, t)
        alarm.anomaly = fresh
        if renamed is not None:
            self._reclassify(alarm, cond, *renamed, now)
        self._follow_suppression(alarm, cond, fresh, now)
        if alarm.parent_id is not None and grouping.is_fault_alarm(alarm):
            self._follow_distinct(alarm, grouping.fault_at_home(self.line, self.faults, anomaly), t, now)
        self._assess(alarm, cond, now)

    def _follow_distinct(self, alarm: Alarm, own: str | None, t: float, now: float) -> None:
        """A folded fault alarm named as a fault of its own asset, unlike its root's, for long enough is let go."""
        why = self._situations.distinct(alarm, self._alarms.get(alarm.parent_id or ""), own, t)
        if why:
            self._release(alarm, now, why)

    def _return(self, alarm: Alarm, cond: timing.Condition, now: float) -> None:
        timing.returned(cond, now)
        self._priorities.steady(alarm.alarm_id)
        event, comment = states.returned(alarm)
        self._emit(alarm, event, now, comment=comment)

    def _reclassify(self, alarm: Alarm, cond: timing.Condition, before: str | None, named: str, now: float) -> None:
        """The classifier named the fault of an active alarm (or changed its mind): same alarm, new text; its
        priority follows by the usual rules (_assess)."""
        alarm.message = self._text(alarm)
        self._emit(alarm, "reclassified", now, comment=f"{before or 'unknown'} -> {named}")

    def _follow_suppression(self, alarm: Alarm, cond: timing.Condition, anomaly: Anomaly, now: float) -> None:
        suppressed = design.mode_suppressed(self.line, anomaly)
        if suppressed == cond.mode_suppressed:
            return
        cond.mode_suppressed = suppressed
        event = states.mode_suppression(alarm, suppressed)
        if event == "suppressed":
            self._emit(alarm, event, now, comment=f"designed suppression in {anomaly.mode.value}")
        elif event == "unsuppressed":
            alarm.message = self._text(alarm)
            self._emit(alarm, event, now, comment=f"active in {anomaly.mode.value}")

    def _unshelve(self, alarm: Alarm, now: float, actor: str, comment: str | None) -> None:
        self._emit(alarm, states.unshelve(alarm), now, actor, comment)

    def _reset_condition(self, alarm: Alarm) -> None:
        cond = self._conditions.get((alarm.asset, alarm.condition))
        if cond is not None:
            timing.reset(cond)

    # -- severity and priority ---------------------------------------------------------------------
    def _target(self, alarm: Alarm, cond: timing.Condition) -> tuple[str | None, Priority]:
        """What the evidence says now: (severity, priority); a root's is its whole situation's."""
        own = self._priorities.own(alarm.alarm_id, alarm.anomaly, cond.kind, cond.level, cond.trend)
        consequences = []
        if alarm.parent_id is None:
            for child in self._children(alarm.alarm_id):
                child_own = self._priorities.own_of(child.alarm_id) if child.state.active else None
                if child_own is not None:
                    consequences.append((child_own, child.priority))
        return priorities.situation(own, cond.kind, consequences)

    def _assess(self, alarm: Alarm, cond: timing.Condition | None, now: float) -> None:
        """Follow the condition's severity and priority (a root: its whole situation's) with the hysteresis rules."""
        if cond is None or not alarm.state.active or alarm.anomaly is None:
            return
        before = self._priorities.own_of(alarm.alarm_id)
        restate = self._priorities.follow(alarm, *self._target(alarm, cond), now)
        if restate is not None:
            event, severity, priority = restate
            self._restate(alarm, severity, priority, event, now)
        if alarm.parent_id is not None and (
                (restate is not None and restate[0] == "escalated") or self._priorities.own_of(alarm.alarm_id) != before):
            parent = self._alarms.get(alarm.parent_id)  # its situation changed: the root follows
            if parent is not None:
                self._assess(parent, self._cond_of(parent), now)

    def _restate(self, alarm: Alarm, severity: str | None, priority: Priority, event: str, now: float) -> None:
        comment = priorities.changes(alarm, severity, priority)
        rises = priority.value < alarm.priority.value
        alarm.severity, alarm.priority = severity, priority
        alarm.message = self._text(alarm)
        if rises and alarm.state is AlarmState.ACTIVE_ACK and annunciated(alarm):
            states.ring(alarm)  # acknowledged at a lower priority: the operator must see that it matters more now
        self._emit(alarm, event, now, comment=comment)

    def _text(self, alarm: Alarm) -> str:
        return alarm_text(self.line, self.faults, alarm.anomaly, alarm.severity) if alarm.anomaly else alarm.message

    # -- situations --------------------------------------------------------------------------------
    def _cause_for(self, alarm: Alarm, now: float) -> Alarm | None:
        return self._situations.cause_for(alarm, self._alarms.values(), self._cond_of, self._same_episode, now)

    def _same_episode(self, a: Alarm, b: Alarm) -> bool:
        return situations.same_episode(self._episode, a, b, self._cond_of)

    def _fold_under_plc(self, plc: Alarm, now: float) -> None:
        """The PLC's alarm just rang: the copilot's standing alarms of its situation (and their consequences) fold
        under it, so the operator hears the situation once, by the name the HMI gives it."""
        for other in self._situations.under_plc(plc, list(self._alarms.values())):
            self._group(other, plc, now, f"the situation of the PLC's alarm {plc.alarm_id}")

    def _adopt(self, root: Alarm, now: float) -> None:
        """A new root takes the earlier roots of its window that it explains (and that do not explain it)."""
        if not self.settings.group_consequences:
            return
        for other in self._situations.adoptable(root, list(self._alarms.values()), self._same_episode):
            self._group(other, root, now, f"consequence of {root.alarm_id}")
        self._assess(root, self._cond_of(root), now)

    def _group(self, other: Alarm, root: Alarm, now: float, why: str) -> None:
        """Fold a standing root alarm, and the consequences it carries, under ``root``."""
        for member in [other, *self._children(other.alarm_id)]:
            member.parent_id = root.alarm_id
            member.suppressed = True
            self._emit(member, "grouped", now, comment=why)

    def _release_if_orphaned(self, alarm: Alarm, now: float) -> None:
        root = self._alarms.get(alarm.parent_id or "")
        why = self._situations.orphaned(alarm, root, self._cond_of(root) if root else None, now)
        if why:
            self._release(alarm, now, why)

    def _release(self, alarm: Alarm, now: float, why: str) -> None:
        """A consequence its cause no longer explains: annunciated on its own."""
        cond = self._cond_of(alarm)
        alarm.parent_id = None
        alarm.suppressed = bool(cond and cond.mode_suppressed)
        if not alarm.state.active:
            self._emit(alarm, "ungrouped", now, comment=why)
            return
        states.ring(alarm)
        if annunciated(alarm) and cond is not None:
            self._count_towards_flood(cond.position, alarm, now)
        self._emit(alarm, "ungrouped", now, comment=why)
        self._adopt(alarm, now)  # a situation of its own: what it explains goes with it

    def _children(self, alarm_id: str) -> list[Alarm]:
        return [a for a in self._alarms.values() if a.parent_id == alarm_id]

    def _cond_of(self, alarm: Alarm) -> timing.Condition | None:
        return self._conditions.get((alarm.asset, alarm.condition))

    # -- floods ------------------------------------------------------------------------------------
    def _count_towards_flood(self, position: str, alarm: Alarm, now: float) -> None:
        flood_id, start = self._floods.raised(position, alarm.alarm_id, now)
        if flood_id:
            alarm.flood_id = flood_id
        if start is None:
            return
        self._step.flood(position, (start.flood_id, now))
        first = self._alarms.get(start.flood_id)
        if first is not None:
            first.flood_id = start.flood_id
            self._emit(first, "flood_start", now, comment=(
                f"alarm flood at position {position}: {start.size} new alarms within "
                f"{self.settings.flood_window_s:g} s; grouped under {start.flood_id}"))
        # the earlier alarms of the window belong to the flood too; the new one says so in its own event
        for member_id in start.members:
            member = self._alarms.get(member_id)
            if member is not None and member.flood_id != start.flood_id:
                member.flood_id = start.flood_id
                self._emit(member, "flood_grouped", now, comment=f"part of flood {start.flood_id}")

    def _end_flood(self, end: floods.End, now: float) -> None:
        first = self._alarms.get(end.flood_id)
        if first is not None:
            self._emit(first, "flood_end", now, comment=(
                f"alarm flood at position {end.position} over: {end.size} new alarms within "
                f"{self.settings.flood_window_s:g} s"))
        self._step.flood(end.position, None)

    # -- bookkeeping -------------------------------------------------------------------------------
    def _condition(self, anomaly: Anomaly) -> timing.Condition:
        key = (anomaly.asset, anomaly.condition)
        cond = self._conditions.get(key)
        if cond is None:
            cond = timing.Condition(anomaly.asset, anomaly.condition, anomaly.kind, design.operator_position(self.line, anomaly.asset),
                              trend=design.LevelSlope(self.settings.trend_window_s),
                              signals=design.condition_signals(self.line, anomaly.asset, anomaly.condition))
            known = self._by_condition.get(key)
            cond.alarm_id = known
            self._conditions[key] = cond
        return cond

    def _audit_refusal(self, cmd: OperatorCommand, now: float, refusal: str) -> None:
        """A refused command leaves an audit row (who tried what), without touching the alarm."""
        self._rejections.warning("refused", "refused %s of %s by %s: %s", cmd.command, printable(cmd.alarm_id),
                                 printable(cmd.actor), printable(refusal))
        what = cmd.command + (f" for {cmd.shelve_s:g} s" if cmd.shelve_s is not None else "")
        comment = f"{what} refused: {refusal}" + (f" (comment: {cmd.comment})" if cmd.comment else "")
        self._audit_row(cmd.alarm_id, now, "refused", cmd.actor, comment)

    def _audit_row(self, alarm_id: str, now: float, event: str, actor: str | None, comment: str) -> None:
        """An audit row that changes nothing of the alarm (a refusal, a verdict), written now; nothing for an alarm
        the engine does not hold (the caller's log line is the trace)."""
        alarm = self._alarms.get(alarm_id)
        if alarm is None:
            return
        ev = AlarmEvent(alarm.alarm_id, now, event, alarm.state, _copy(alarm), actor, comment)
        self._step.write_alone(Entry(ev, design.operator_position(self.line, alarm.asset), False))

    def feedback(self, fb: OperatorFeedback) -> tuple[CommandResult, Feedback | None]:
        """An operator's verdict on an alarm: authorised under the line's roles, audited (a ``feedback`` row, or a
        ``refused`` one), and the ``Feedback`` the store writes (None when refused: then nothing is stored)."""
        now = self.clock()
        refusal = authority.feedback_refusal(self.line, fb)
        if refusal:
            self._rejections.warning("refused", "refused feedback on %s by %s: %s", printable(fb.alarm_id),
                                     printable(fb.actor), printable(refusal))
            self._audit_row(fb.alarm_id, now, "refused", fb.actor, f"feedback ({fb.verdict}) refused: {refusal}")
            return CommandResult(fb.request_id, False, f"refused: {refusal}"), None
        problem = authority.feedback_problem(fb, fb.alarm_id in self._alarms)
        if problem:
            self._rejections.warning("rejected", "rejected feedback on %s by %s: %s", printable(fb.alarm_id),
                                     printable(fb.actor), printable(problem))
            return CommandResult(fb.request_id, False, problem), None
        verdict = fb.verdict.replace("_", " ")
        said = "; ".join([verdict, *([f"cause: {fb.actual_cause}"] if fb.actual_cause else []),
                          *([f"fix: {fb.fix}"] if fb.fix else [])])
        self._audit_row(fb.alarm_id, now, "feedback", fb.actor, said)
        log.info("feedback on alarm %s by %s: %s", printable(fb.alarm_id), printable(fb.actor), printable(verdict))
        return (CommandResult(fb.request_id, True, f"feedback on {fb.alarm_id} recorded: {verdict}, by {fb.actor}",
                              self.get(fb.alarm_id)),
                Feedback(fb.alarm_id, fb.verdict, fb.actual_cause, fb.fix, fb.actor, now))

    def _emit(self, alarm: Alarm, event: str, now: float, actor: str | None = None, comment: str | None = None) -> None:
        alarm.updated_at = now
        states.follow_unanswered(alarm, now)
        position = design.operator_position(self.line, alarm.asset)
        ev = AlarmEvent(alarm.alarm_id, now, event, alarm.state, _copy(alarm), actor, comment)
        self._step.add(Entry(ev, position, annunciated(alarm)))

    def _commit(self) -> list[AlarmEvent]:
        """Write this step's alarms and audit entries; if the file fails, alarms still go out and the write is retried."""
        new = self._step.write(self._stored)
        for e in new:
            log.info("alarm %s %s -> %s%s", printable(e.event.alarm_id), e.event.event, e.event.state.value,
                     f" by {printable(e.event.actor)}" if e.event.actor else "")
        return [e.event for e in new]

    def _stored(self, alarm_id: str) -> StoredAlarm:
        alarm = self._alarms[alarm_id]
        cond = self._conditions.get((alarm.asset, alarm.condition))
        return StoredAlarm(_copy(alarm), design.operator_position(self.line, alarm.asset),
                           cond.returned_at if cond else None)

    def _load(self) -> None:
        now = self.clock()
        for s in self.journal.load_alarms():
            a = s.alarm
            self._alarms[a.alarm_id] = a
            self._by_condition[(a.asset, a.condition)] = a.alarm_id
            if a.condition.startswith(PLC_PREFIX):
                continue  # the PLC owns its state: its ConditionRefresh tells it again
            kind = a.anomaly.kind if a.anomaly else a.condition.rpartition(":")[2]
            cond = timing.Condition(a.asset, a.condition, kind, s.position, a.alarm_id, returned_at=s.returned_at,
                              trend=design.LevelSlope(self.settings.trend_window_s),
                              signals=design.condition_signals(self.line, a.asset, a.condition))
            cond.mode_suppressed = bool(a.anomaly) and design.mode_suppressed(self.line, a.anomaly)
            if a.state.active:
                # the evidence stopped with the old process; give the condition one silence period to show itself
                cond.heard_at = now
                cond.level = design.level(self.line, a.anomaly) if a.anomaly else None
            self._conditions[(a.asset, a.condition)] = cond
        for position, ts, alarm_id in self.journal.recent_raises(now - self.settings.flood_window_s):
            self._floods.restore_raise(position, ts, alarm_id)
        for position, (flood_id, started_at) in self.journal.load_floods().items():
            self._floods.restore(position, flood_id, started_at)
        if self._alarms:
            log.info("resumed %d alarms (%d not normal) from %s", len(self._alarms), len(self.active()), self.journal.path)


PLC_PREFIX, PLC_ACTOR = plc_part.PREFIX, plc_part.ACTOR  # as callers know them
overdue_rules = states.overdue_rules  # the line's escalation rules for a priority, as callers know them


def _copy(alarm: Alarm) -> Alarm:
    # anomalies are replaced, never mutated, so a shallow copy is a faithful snapshot
    return dataclasses.replace(alarm)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
