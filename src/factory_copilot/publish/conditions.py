"""One alarm as OPC UA Part 9 shows it: the fields of its AlarmConditionType event, from the engine's state.

Pure: no server here (``publish/opcua_server.py`` serves them). The mapping, also in docs/opcua.md:

* ActiveState/Id: the alarm is active (``active_unacknowledged``, ``active_acknowledged``);
* AckedState/Id: nothing waits for an acknowledgement (``normal``, ``active_acknowledged``), so a
  ``returned_unacknowledged`` alarm is inactive and unacknowledged;
* Retain: the alarm is not ``normal`` (an HMI must show it); a ``normal`` one is sent once with Retain false;
* Severity: the priority, through ``plumbing/opcua.severity_of`` (critical 900, high 700, medium 500, low 300);
* SuppressedState/Id: folded under its root (a consequence) or suppressed by the operating mode;
* ShelvingState: TimedShelved while shelved (with UnshelveTime left, ms), else Unshelved;
* OutOfServiceState/Id: taken out of service (the engine holds it ``normal`` until it is returned);
* Message: the alarm's text; ClientUserId: the user of the change that fired the event; Comment: its comment
  (the server keeps the last one when a change brings none, as Part 9 does, e.g. the copilot's diagnosis).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from asyncua import ua

from factory_copilot.plumbing.opcua import severity_of
from factory_copilot.records import Alarm, AlarmEvent, AlarmState

# the shelving state machine's states (Part 9, ShelvedStateMachineType): the engine shelves for a time only
TIMED_SHELVED = ua.NodeId(ua.ObjectIds.ShelvedStateMachineType_TimedShelved)
UNSHELVED = ua.NodeId(ua.ObjectIds.ShelvedStateMachineType_Unshelved)

LT, BOOL, DT, NODE, DOUBLE, U16, TEXT, STATUS = (ua.VariantType.LocalizedText, ua.VariantType.Boolean,
                                                 ua.VariantType.DateTime, ua.VariantType.NodeId, ua.VariantType.Double,
                                                 ua.VariantType.UInt16, ua.VariantType.String, ua.VariantType.StatusCode)

# fields an AlarmCondition event of asyncua lacks (the optional ShelvingState), declared on every event made here
EXTRA_FIELDS = {"ShelvingState": LT, "ShelvingState/CurrentState": LT, "ShelvingState/CurrentState/Id": NODE,
                "ShelvingState/UnshelveTime": DOUBLE, "ShelvingState/LastTransition": LT}


def _two(name: str, on: bool, true: str, false: str, since: datetime | None) -> dict[str, tuple[Any, ua.VariantType]]:
    """A TwoStateVariable as event fields: its text, Id, TransitionTime and the names of its two states."""
    return {name: (ua.LocalizedText(true if on else false), LT), f"{name}/Id": (on, BOOL),
            f"{name}/TransitionTime": (since, DT), f"{name}/TrueState": (ua.LocalizedText(true), LT),
            f"{name}/FalseState": (ua.LocalizedText(false), LT)}


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def condition_fields(alarm: Alarm, now: float, *, since: dict[str, float] | None = None,
                     event: AlarmEvent | None = None, max_shelve_s: float | None = None,
                     last_severity: int | None = None) -> dict[str, tuple[Any, ua.VariantType]]:
    """The event fields (name -> (value, variant type)) of ``alarm`` as it stands at ``now``.

    ``since`` holds, per two-state name (ActiveState, AckedState, ...), when it last changed (the caller
    follows the transitions); ``event`` is the change being told, for its comment and its user.
    """
    since = since or {}
    shelved = alarm.shelved_until is not None and alarm.shelved_until > now
    active, acked = alarm.state.active, alarm.state.acknowledged
    fields: dict[str, tuple[Any, ua.VariantType]] = {
        "Message": (ua.LocalizedText(alarm.message), LT),
        "Severity": (severity_of(alarm.priority), U16),
        "LastSeverity": (last_severity if last_severity is not None else severity_of(alarm.priority), U16),
        "ConditionName": (alarm.condition, TEXT),
        "ConditionClassId": (ua.NodeId(ua.ObjectIds.ProcessConditionClassType), NODE),
        "ConditionClassName": (ua.LocalizedText("Process"), LT),
        "BranchId": (ua.NodeId(), NODE),  # no branches: one state per alarm, as ISA-18.2 keeps it
        "Retain": (alarm.state is not AlarmState.NORMAL, BOOL),
        "Quality": (ua.StatusCode(ua.StatusCodes.Good), STATUS),
        "SuppressedOrShelved": (alarm.suppressed or shelved, BOOL),
        "Comment": (ua.LocalizedText((event.comment if event else None) or ""), LT),
        "ClientUserId": ((event.actor if event else None) or "", TEXT),
        "ShelvingState": (ua.LocalizedText("TimedShelved" if shelved else "Unshelved"), LT),
        "ShelvingState/CurrentState": (ua.LocalizedText("TimedShelved" if shelved else "Unshelved"), LT),
        "ShelvingState/CurrentState/Id": (TIMED_SHELVED if shelved else UNSHELVED, NODE),
        "ShelvingState/UnshelveTime": (max(0.0, (alarm.shelved_until - now) * 1000.0) if shelved else 0.0, DOUBLE),
    }
    if max_shelve_s is not None:
        fields["MaxTimeShelved"] = (max_shelve_s * 1000.0, DOUBLE)
    t = lambda name: utc(since[name]) if name in since else utc(alarm.raised_at)  # noqa: E731 - one line per state
    fields |= _two("EnabledState", True, "Enabled", "Disabled", utc(alarm.raised_at))
    fields |= _two("ActiveState", active, "Active", "Inactive", t("ActiveState"))
    fields |= _two("AckedState", acked, "Acknowledged", "Unacknowledged", t("AckedState"))
    fields |= _two("SuppressedState", alarm.suppressed, "Suppressed", "Unsuppressed", t("SuppressedState"))
    fields |= _two("OutOfServiceState", alarm.out_of_service, "Out of Service", "In Service", t("OutOfServiceState"))
    return fields


def two_states(alarm: Alarm, now: float) -> dict[str, bool]:
    """The two-state values of ``alarm`` whose changes the server follows (for their TransitionTime)."""
    return {"ActiveState": alarm.state.active, "AckedState": alarm.state.acknowledged,
            "SuppressedState": alarm.suppressed, "OutOfServiceState": alarm.out_of_service,
            "ShelvingState": alarm.shelved_until is not None and alarm.shelved_until > now}
