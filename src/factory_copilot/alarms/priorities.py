"""Severity and priority of an alarm: what its condition's evidence says now, and a root's for its whole situation.

A condition's own (severity, urgency, consequence) comes from its level and the trend of its recent evidence
(``design.py`` holds the tables); a root alarm is as severe and as urgent as the worst of its situation, and
never of lower priority than a consequence's own. ``judge`` says whether the alarm must say it is worse
(event ``escalated``, at once; an acknowledged alarm whose priority rises must be acknowledged again) or better
(``deescalated``, once that held for ``deescalate_after_s``: the engine keeps the hold on its clock).
"""

from __future__ import annotations

from typing import Iterable, Mapping

from factory_copilot.alarms import design, grouping
from factory_copilot.catalogue import Fault
from factory_copilot.config import LineConfig
from factory_copilot.records import Alarm, Anomaly, Priority

Own = tuple  # (severity, urgency, consequence) of one condition at its last evidence


class Priorities:
    """A condition's own severity, urgency and consequence; consequences are cached: the line is fixed."""

    def __init__(self, line: LineConfig, faults: Mapping[str, Fault], min_trend_s: float):
        self.line, self.faults, self.min_trend_s = line, faults, min_trend_s
        self._consequence: dict[tuple, Priority] = {}  # (asset, kind, signal, fault) -> consequence

    def own(self, anomaly: Anomaly, kind: str, level: float | None, trend: design.LevelSlope) -> Own:
        """The condition's own (severity, urgency, consequence), from its level and recent trend."""
        severity = design.severity(kind, level)
        slope = trend.slope() if trend.span >= self.min_trend_s else None
        seconds = design.time_to_severe(kind, level, slope) if level is not None else None
        named = grouping.fault_at_home(self.line, self.faults, anomaly)
        key = (anomaly.asset, anomaly.kind, anomaly.signal, named)
        consequence = self._consequence.get(key)
        if consequence is None:
            consequence = self._consequence[key] = design.consequence(self.line, self.faults, anomaly, named)
        return severity, design.urgency(seconds), consequence


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
