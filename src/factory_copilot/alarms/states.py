"""The ISA-18.2 state machine of one alarm: its transitions, whether it is annunciated, and when it is overdue.

NORMAL -> ACTIVE_UNACK (raised) -> ACTIVE_ACK (acknowledged) -> NORMAL (cleared), or ACTIVE_UNACK -> RTN_UNACK
(returned) -> NORMAL (acknowledged); shelved, suppressed and out-of-service alarms keep their state but are not
annunciated, and one that returns while not annunciated goes straight to NORMAL (nobody was shown it).
Each function changes the one alarm it is given and returns the event it makes (the engine emits and stores
it); none reads a clock: the time is passed in.
"""

from __future__ import annotations

from typing import Iterator

from factory_copilot.config import LineConfig
from factory_copilot.records import Alarm, AlarmState, PlcCondition, Priority


def annunciated(alarm: Alarm) -> bool:
    """Whether an operator is shown this alarm now (ISA-18.2: shelved, suppressed and out-of-service are not)."""
    return alarm.shelved_until is None and not alarm.suppressed and not alarm.out_of_service


def ring(alarm: Alarm) -> None:
    """Active and unacknowledged again: an operator must answer it (raised, re-annunciated, worse than acked)."""
    alarm.state = AlarmState.ACTIVE_UNACK
    alarm.acked_by = alarm.acked_at = None


def acknowledge(alarm: Alarm, actor: str, now: float) -> str:
    alarm.state = AlarmState.ACTIVE_ACK if alarm.state is AlarmState.ACTIVE_UNACK else AlarmState.NORMAL
    alarm.acked_by, alarm.acked_at = actor, now
    return "acknowledged"


def shelve(alarm: Alarm, until: float, actor: str) -> str:
    alarm.shelved_until, alarm.shelved_by = until, actor
    return "shelved"


def unshelve(alarm: Alarm) -> str:
    """A shelve ends: an alarm still active is annunciated again, one that returned meanwhile is normal."""
    alarm.shelved_until = alarm.shelved_by = None
    if alarm.state.active and annunciated(alarm):
        ring(alarm)
    elif alarm.state is AlarmState.RTN_UNACK:
        alarm.state = AlarmState.NORMAL
    return "unshelved"


def take_out_of_service(alarm: Alarm) -> str:
    alarm.out_of_service = True
    alarm.state, alarm.suppressed = AlarmState.NORMAL, False
    alarm.shelved_until = alarm.shelved_by = None
    return "out_of_service"


def return_to_service(alarm: Alarm) -> str:
    alarm.out_of_service = False
    return "return_to_service"


def returned(alarm: Alarm) -> tuple[str, str | None]:
    """Its condition returned to normal: (event, comment)."""
    if not annunciated(alarm):
        reason = ("grouped under its cause" if alarm.parent_id else "suppressed by mode" if alarm.suppressed
                  else "shelved")
        alarm.state = AlarmState.NORMAL
        alarm.suppressed = False if alarm.parent_id is None else alarm.suppressed
        return "cleared", f"returned to normal while {reason}"
    if alarm.state is AlarmState.ACTIVE_UNACK:
        alarm.state = AlarmState.RTN_UNACK
        return "returned", None
    alarm.state = AlarmState.NORMAL
    return "cleared", None


def plc_state(plc: PlcCondition) -> AlarmState:
    """The state a PLC's condition says its alarm is in (the PLC owns it: no delays or deadband)."""
    if not plc.retain:
        return AlarmState.NORMAL
    if plc.active:
        return AlarmState.ACTIVE_ACK if plc.acked else AlarmState.ACTIVE_UNACK
    return AlarmState.NORMAL if plc.acked else AlarmState.RTN_UNACK


def follow_plc(alarm: Alarm, before: AlarmState, state: AlarmState, actor: str, now: float) -> str:
    """The PLC moved its alarm from ``before`` to ``state``: the event that says how."""
    alarm.state = state
    if before is AlarmState.NORMAL and state.active:
        alarm.raised_at, alarm.acked_by, alarm.acked_at = now, None, None
        return "raised"
    if state.acknowledged and not before.acknowledged:
        alarm.acked_by, alarm.acked_at = actor, now
        return "acknowledged" if state.active else "cleared"
    if before.active and not state.active:
        return "returned" if state is AlarmState.RTN_UNACK else "cleared"
    return "updated"


def follow_unanswered(alarm: Alarm, now: float) -> None:
    """Keep the stretch the alarm has stood annunciated and unacknowledged (what ``overdue`` measures)."""
    if alarm.state.acknowledged or not annunciated(alarm):
        alarm.unacked_since, alarm.overdue = None, []  # the stretch nobody answered is over
    elif alarm.unacked_since is None:
        alarm.unacked_since = now


def overdue_rules(line: LineConfig, priority: Priority) -> list:
    """The line's escalation rules that apply to an alarm of ``priority`` (theirs or more urgent), soonest first."""
    return sorted((r for r in line.escalation if priority.value <= Priority.parse(r.priority).value),
                  key=lambda r: r.after_s)


def overdue(line: LineConfig, alarm: Alarm, now: float) -> Iterator[str]:
    """Who to tell now that the alarm is overdue, each once per unanswered stretch (the comment of its event);
    lazily, so that each is emitted before the next is judged."""
    if alarm.unacked_since is None:
        return
    waited = now - alarm.unacked_since
    for rule in overdue_rules(line, alarm.priority):
        if rule.after_s <= waited and rule.notify not in alarm.overdue:
            alarm.overdue = [*alarm.overdue, rule.notify]
            yield f"unacknowledged for {rule.after_s:g} s ({alarm.priority.name.lower()}): notify {rule.notify}"
