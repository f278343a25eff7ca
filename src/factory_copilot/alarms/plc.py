"""A PLC's own alarms, followed: the state, priority, text and shelving its OPC UA A&C events say.

The PLC owns its alarm's state (no delays or deadband here): one alarm per ConditionId (condition
``plc:<ConditionId>``), so the events a ConditionRefresh sends again change nothing, and a refresh's end clears
what it did not send again. Shelved on the HMI is shelved here too, for as long as the PLC says; an unshelve on
the PLC ends only the PLC's shelving, not an operator's. ``Follower`` remembers each alarm's newest EventId
(what its Acknowledge must name) and the refresh in progress; its steps change the one alarm they are given and
return the event it makes (the engine creates alarms, folds the copilot's under a PLC's, emits and stores).
Times are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from factory_copilot.alarms import design, states
from factory_copilot.plumbing.opcua import priority_of
from factory_copilot.records import Alarm, AlarmState, PlcCondition, Priority

PREFIX = design.PLC_PREFIX  # the condition of a PLC's alarm: plc:<ConditionId>
ACTOR = "plc"  # who changed a PLC alarm's state when the PLC did
SHELVE_SLACK_S = 5.0  # a shelving told again whose end moved less than this is the same shelving


@dataclass(frozen=True, slots=True)
class Told:
    """What one A&C event says of its alarm."""

    asset: str
    condition: str
    state: AlarmState
    priority: Priority
    message: str
    where: str  # the event's origin, the comment of what it changes


def state_of(plc: PlcCondition) -> AlarmState:
    """The state a PLC's condition says its alarm is in."""
    if not plc.retain:
        return AlarmState.NORMAL
    if plc.active:
        return AlarmState.ACTIVE_ACK if plc.acked else AlarmState.ACTIVE_UNACK
    return AlarmState.NORMAL if plc.acked else AlarmState.RTN_UNACK


def told(plc: PlcCondition) -> Told:
    asset = plc.asset or plc.source_name or "plc"
    return Told(asset, PREFIX + plc.condition_id, state_of(plc), priority_of(plc.severity),
                plc.message or f"{asset}: PLC alarm {plc.source_name or plc.condition_id}",
                f"PLC {plc.endpoint} EventId {plc.event_id}" + (f", user {plc.user}" if plc.user else ""))


def new_alarm(plc: PlcCondition, said: Told, known: Iterable[str], now: float) -> Alarm:
    """The alarm of a condition first heard standing (its id unlike every one of ``known``)."""
    alarm_id = design.alarm_id(said.asset, "plc_" + (plc.source_name or plc.condition_id), known)
    return Alarm(alarm_id, said.asset, said.condition, said.state, said.priority, said.message, now, now)


def follow(alarm: Alarm, before: AlarmState, said: Told, now: float) -> str | None:
    """The PLC told ``alarm``'s condition again (its state was ``before``, its shelving followed since): the event
    that says how it moved (None: the same told again)."""
    if before is said.state and alarm.priority is said.priority and alarm.message == said.message:
        return None
    alarm.priority, alarm.message, alarm.state = said.priority, said.message, said.state
    if before is AlarmState.NORMAL and said.state.active:
        alarm.raised_at, alarm.acked_by, alarm.acked_at = now, None, None
        return "raised"
    if said.state.acknowledged and not before.acknowledged:
        alarm.acked_by, alarm.acked_at = ACTOR, now
        return "acknowledged" if said.state.active else "cleared"
    if before.active and not said.state.active:
        return "returned" if said.state is AlarmState.RTN_UNACK else "cleared"
    return "updated"


def shelving(alarm: Alarm, plc: PlcCondition, where: str, now: float, max_shelve_s: float) -> tuple[str, str] | None:
    """The PLC's shelving of its alarm, followed: (event, comment), or None when it changes nothing."""
    if plc.shelved and plc.retain:  # a gone condition's shelving means nothing
        until = now + (plc.unshelve_in_s or max_shelve_s)
        if alarm.shelved_until is not None and abs(alarm.shelved_until - until) < SHELVE_SLACK_S:
            return None  # the same shelving told again, its countdown moved on
        return states.shelve(alarm, until, ACTOR), f"{where}; until {until:.0f}"
    if alarm.shelved_until is not None and alarm.shelved_by == ACTOR:
        return states.unshelve(alarm), where
    return None


class Follower:
    """Each PLC alarm's newest EventId, and the ConditionIds a ConditionRefresh in progress sent again."""

    def __init__(self) -> None:
        self.event_ids: dict[str, str] = {}  # PLC alarm id -> its condition's newest EventId (hex)
        self._refreshed: set[str] | None = None

    def refresh_start(self) -> None:
        self._refreshed = set()

    def heard(self, plc: PlcCondition) -> None:
        if self._refreshed is not None:
            self._refreshed.add(plc.condition_id)

    def refresh_end(self, alarms: Iterable[Alarm]) -> Iterator[Alarm]:
        """The PLC's alarms standing that the refresh did not send again, each set NORMAL (lazily)."""
        seen, self._refreshed = self._refreshed, None
        if seen is None:
            return
        for alarm in alarms:
            if (alarm.condition.startswith(PREFIX) and alarm.state is not AlarmState.NORMAL
                    and alarm.condition[len(PREFIX):] not in seen):
                alarm.state = AlarmState.NORMAL
                yield alarm
