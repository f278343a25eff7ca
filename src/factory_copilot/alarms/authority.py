"""Command authorisation: whether an operator's command may be done to an alarm, and if not, why in words.

Two questions, both pure (nothing here changes an alarm): may this actor do it by the line's roles
(``refusal``: who may acknowledge, shelve for how long, take out of service), and does the command make sense
for the alarm as it stands (``problem``: a known command, an actor, an alarm that exists and is in the state
the command needs); the same two for an operator's verdict on an alarm (``feedback_refusal``,
``feedback_problem``). The engine answers every refused or rejected command and audits the refusals.
"""

from __future__ import annotations

import math

from factory_copilot.config import LineConfig
from factory_copilot.records import Alarm, AlarmState, CommandKind, OperatorCommand, OperatorFeedback

COMMANDS = tuple(k.value for k in CommandKind)


def refusal(line: LineConfig, cmd: OperatorCommand) -> str | None:
    """Why the line's roles do not let this actor do this (None: they do, or the line names no roles)."""
    roles, kind = line.roles, CommandKind.named(cmd.command)
    if roles is None or kind is None or kind is CommandKind.UNSHELVE and roles.of(cmd.actor or ""):
        return None
    return roles.refusal(cmd.actor or "", kind, cmd.shelve_s)


def problem(cmd: OperatorCommand, alarm: Alarm | None, max_shelve_s: float) -> str | None:
    """Why the command cannot be done to ``alarm`` (the alarm it names, None if there is none); None: it can."""
    kind = CommandKind.named(cmd.command)
    if kind is None:
        return f"unknown command {cmd.command!r}; use one of {', '.join(COMMANDS)}"
    if not (cmd.actor or "").strip():
        return f"{cmd.command} needs an actor: who is doing it"
    if alarm is None:
        return f"no alarm with id {cmd.alarm_id!r}"
    if kind is CommandKind.ACKNOWLEDGE:
        if alarm.out_of_service:
            return f"alarm {alarm.alarm_id} is out of service; nothing to acknowledge"
        if alarm.state.acknowledged:
            by = f" (by {alarm.acked_by})" if alarm.acked_by and alarm.state is AlarmState.ACTIVE_ACK else ""
            return f"alarm {alarm.alarm_id} is already acknowledged{by}; state {alarm.state.value}"
    elif kind is CommandKind.SHELVE:
        if alarm.out_of_service:
            return f"alarm {alarm.alarm_id} is out of service; return it to service before shelving"
        if cmd.shelve_s is None:
            return "shelve needs a duration: shelve_s (seconds)"
        if not isinstance(cmd.shelve_s, (int, float)) or not math.isfinite(cmd.shelve_s) or cmd.shelve_s <= 0:
            return f"shelve_s must be a positive number of seconds, got {cmd.shelve_s!r}"
        if cmd.shelve_s > max_shelve_s:
            return f"shelve_s {cmd.shelve_s:g} is beyond the maximum of {max_shelve_s:g} s"
    elif kind is CommandKind.UNSHELVE:
        if alarm.shelved_until is None:
            return f"alarm {alarm.alarm_id} is not shelved"
    elif kind is CommandKind.OUT_OF_SERVICE:
        if alarm.out_of_service:
            return f"alarm {alarm.alarm_id} is already out of service"
    elif kind is CommandKind.RETURN_TO_SERVICE:
        if not alarm.out_of_service:
            return f"alarm {alarm.alarm_id} is in service"
    return None


def feedback_refusal(line: LineConfig, fb: OperatorFeedback) -> str | None:
    """Why the line's roles do not let this actor give a verdict on an alarm (None: they do, or no roles)."""
    return line.roles.feedback_refusal(fb.actor or "") if line.roles is not None else None


def feedback_problem(fb: OperatorFeedback, known: bool) -> str | None:
    """Why the verdict cannot be taken (``known``: the engine holds the alarm it names); None: it can."""
    if not (fb.actor or "").strip():
        return "feedback needs an actor: who is giving it"
    return None if known else f"no alarm with id {fb.alarm_id!r}"
