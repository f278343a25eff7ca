"""The ISA-18.2 state machine of one alarm: its transitions, re-alarms, designed suppression, and when it is overdue.

* NORMAL -> ACTIVE_UNACK (raised) -> ACTIVE_ACK (acknowledged) -> NORMAL (cleared), or ACTIVE_UNACK -> RTN_UNACK
  (returned) -> NORMAL (acknowledged);
* shelved, suppressed and out-of-service alarms keep their state but are not annunciated (``annunciated``); one
  that returns while not annunciated goes straight to NORMAL (nobody was shown it, so nobody must acknowledge
  it); when a shelve ends (unshelve or expiry) an alarm still active is annunciated again as ACTIVE_UNACK;
* out of service: not evaluated at all, state NORMAL, until returned to service;
* chattering: re-activation of an alarm that is RTN_UNACK, or that returned less than ``chatter_window_s`` ago,
  is the same alarm again (``realarms``): event ``realarm``, ``realarm_count`` + 1, no new alarm and not counted
  towards a flood; the ``chatter_count``-th re-alarm names it chattering (event ``chattering``, rung or folded
  alike) and every re-alarm from then on doubles its off-delay (up to ``chatter_off_delay_max_s``), so it stands
  instead of blinking (``realarm``);
* designed suppression by the line's mode (``mode_suppression``): suppressed, not annunciated; unsuppressed while
  still abnormal, it rings again;
* overdue (the line file's ``escalation``): an annunciated alarm active and unacknowledged for a rule's ``after_s``
  (engine clock) since it rang, of the rule's priority or more urgent, is overdue: event ``overdue`` naming the
  group to tell, once per group per unacknowledged stretch (acknowledging, shelving, folding or clearing it ends
  the stretch; the stretch and who was told are kept on the alarm, so a restarted engine remembers).

Each function changes the one alarm it is given and returns the event it makes (the engine emits and stores
it); none reads a clock: the time is passed in.
"""

from __future__ import annotations

from typing import Iterator

from factory_copilot.config import LineConfig
from factory_copilot.records import Alarm, AlarmState, Priority


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


def realarms(alarm: Alarm | None, returned_at: float | None, now: float, window_s: float) -> bool:
    """Whether a condition activating now is its alarm again (a re-alarm): it is RTN_UNACK, or returned (at
    ``returned_at``) less than ``window_s`` ago."""
    return alarm is not None and (
        alarm.state is AlarmState.RTN_UNACK or (returned_at is not None and now - returned_at < window_s))


def realarm(alarm: Alarm, why: str | None, off_delay_s: float, chatter_count: int, window_s: float,
            max_hold_s: float) -> tuple[float | None, list[tuple[str, str]]]:
    """Count a re-alarm: (the off-delay it has earned, None: its kind's, and the events with their comments).
    The ``chatter_count``-th names it chattering; from then on each re-alarm doubles its off-delay
    (``off_delay_s`` now), up to ``max_hold_s``, so it stands instead of blinking."""
    alarm.realarm_count += 1
    events = [("realarm", f"re-alarm #{alarm.realarm_count}" + (f"; {why}" if why else ""))]
    if alarm.realarm_count < chatter_count:
        return None, events
    hold_s = min(max_hold_s, 2 * off_delay_s)
    if alarm.realarm_count == chatter_count:
        events.append(("chattering", f"re-alarmed {alarm.realarm_count} times, each within {window_s:g} s of "
                                     f"returning: off-delay now {hold_s:g} s, doubling with each re-alarm"))
    return hold_s, events


def mode_suppression(alarm: Alarm, suppressed: bool) -> str | None:
    """Its designed suppression changed with the line's mode: the event (None: folded under its cause either way).
    Unsuppressed while still abnormal, an operator must see it now."""
    if alarm.parent_id is not None:
        return None
    alarm.suppressed = suppressed
    if suppressed:
        return "suppressed"
    alarm.state = AlarmState.ACTIVE_UNACK
    return "unsuppressed"


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
