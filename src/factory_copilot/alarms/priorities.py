"""Severity and priority of an alarm: what its condition's evidence says now, and a root's for its whole situation.

A condition's own (severity, urgency, consequence) comes from its level and the trend of its recent evidence
(``design.py`` holds the tables); a root alarm is as severe and as urgent as the worst of its situation, and
never of lower priority than a consequence's own. ``judge`` says whether the alarm must say it is worse
(event ``escalated``, at once; an acknowledged alarm whose priority rises must be acknowledged again) or better
(``deescalated``, once that held for ``deescalate_after_s`` without a break); ``Priorities.follow`` keeps each
alarm's hold, on the engine's clock passed in.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from factory_copilot.alarms import design, grouping
from factory_copilot.catalogue import Fault
from factory_copilot.config import LineConfig
from factory_copilot.records import Alarm, Anomaly, Priority

Own = tuple  # (severity, urgency, consequence) of one condition at its last evidence


class Priorities:
    """Each alarm's own severity, urgency and consequence at its last evidence (what its root reads), and since
    when its evidence has said better than the alarm (the hold before it deescalates); consequences are cached:
    the line is fixed. Keyed by alarm id: this part's state, no other part's."""

    def __init__(self, line: LineConfig, faults: Mapping[str, Fault], min_trend_s: float, deescalate_after_s: float):
        self.line, self.faults, self.min_trend_s = line, faults, min_trend_s
        self.deescalate_after_s = deescalate_after_s
        self._consequence: dict[tuple, Priority] = {}  # (asset, kind, signal, fault) -> consequence
        self._own: dict[str, Own] = {}  # alarm id -> its condition's own at its last evidence
        self._lower_since: dict[str, float] = {}  # alarm id -> since when (clock) its evidence says better

    def own(self, alarm_id: str, anomaly: Anomaly, kind: str, level: float | None, trend: design.LevelSlope) -> Own:
        """The condition's own (severity, urgency, consequence), from its level and recent trend; kept for its
        root to read (``own_of``)."""
        severity = design.severity(kind, level)
        slope = trend.slope() if trend.span >= self.min_trend_s else None
        seconds = design.time_to_severe(kind, level, slope) if level is not None else None
        named = grouping.fault_at_home(self.line, self.faults, anomaly)
        key = (anomaly.asset, anomaly.kind, anomaly.signal, named)
        consequence = self._consequence.get(key)
        if consequence is None:
            consequence = self._consequence[key] = design.consequence(self.line, self.faults, anomaly, named)
        own = self._own[alarm_id] = severity, design.urgency(seconds), consequence
        return own

    def own_of(self, alarm_id: str) -> Own | None:
        return self._own.get(alarm_id)

    def follow(self, alarm: Alarm, severity: str | None, priority: Priority,
               now: float) -> tuple[str, str | None, Priority] | None:
        """What the alarm must say now that its evidence says (``severity``, ``priority``): (event, severity,
        priority) to restate it with, or None. Worse at once (``judge``), better once it held."""
        if severity == alarm.severity and priority is alarm.priority:  # the steady case, without judging
            if self._lower_since:
                self._lower_since.pop(alarm.alarm_id, None)
            return None
        event, severity, priority = judge(alarm, severity, priority)
        if event == "deescalated":
            since = self._lower_since.get(alarm.alarm_id)
            if since is None:
                self._lower_since[alarm.alarm_id] = now
                return None
            if now - since < self.deescalate_after_s:
                return None
        if self._lower_since:
            self._lower_since.pop(alarm.alarm_id, None)
        return None if event is None else (event, severity, priority)

    def steady(self, alarm_id: str) -> None:
        """The alarm (re)activated or returned: no hold before a deescalation counts from before."""
        if self._lower_since:
            self._lower_since.pop(alarm_id, None)


def situation(own: Own, kind: str, consequences: Iterable[tuple[Own, Priority]]) -> tuple[str | None, Priority]:
    """(severity, priority) of a condition of ``kind`` with its ``own``, and of its active consequences' (own,
    priority): the worst of the situation, at the cause's consequence."""
    severity, urgency, consequence = own
    priority = design.priority(consequence, urgency, kind)
    for (child_severity, child_urgency, _), child_priority in consequences:
        severity = design.worse_severity(severity, child_severity)
        urgency = min(urgency, child_urgency, key=design.URGENCIES.index)
        # the cause's consequence at the situation's urgency, and never below a consequence's own
        priority = min(priority, design.priority(consequence, urgency, kind), child_priority)
    return severity, priority


def judge(alarm: Alarm, severity: str | None, priority: Priority) -> tuple[str | None, str | None, Priority]:
    """(event, severity, priority) the alarm would take: "escalated" when anything is worse (keeping the worse of
    each), "deescalated" when better, None when it says what the evidence says."""
    worse = (design.severity_rank(severity) > design.severity_rank(alarm.severity)
             or priority.value < alarm.priority.value)
    if worse:
        return ("escalated", design.worse_severity(severity, alarm.severity),
                min(priority, alarm.priority, key=lambda p: p.value))
    better = (design.severity_rank(severity) < design.severity_rank(alarm.severity)
              or priority.value > alarm.priority.value)
    return ("deescalated" if better else None), severity, priority


def changes(alarm: Alarm, severity: str | None, priority: Priority) -> str:
    """What a restatement changes, in words (the comment of its event)."""
    said = []
    if severity != alarm.severity:
        said.append(f"{alarm.severity or 'no severity'} -> {severity}")
    if priority is not alarm.priority:
        said.append(f"priority {alarm.priority.name.lower()} -> {priority.name.lower()}")
    return "; ".join(said)
