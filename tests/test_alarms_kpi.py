"""EEMUA 191 alarm KPIs from alarm events: rates, peaks, floods, bad actors, standing and stale alarms."""

from __future__ import annotations

import dataclasses

import pytest

from factory_copilot.alarms.kpi import alarm_kpis
from factory_copilot.publish import payloads
from factory_copilot.records import Alarm, AlarmEvent, AlarmState, Priority

T0 = 1_800_000_000.0
UNACK, ACK, RTN, NORMAL = AlarmState.ACTIVE_UNACK, AlarmState.ACTIVE_ACK, AlarmState.RTN_UNACK, AlarmState.NORMAL


def ev(t, alarm_id, event, state, priority=Priority.MEDIUM, **alarm):
    a = Alarm(alarm_id, alarm_id.partition(".")[0], "x:limit", state, priority, "msg", T0, T0 + t, **alarm)
    return AlarmEvent(alarm_id, T0 + t, event, state, a)


def cycle(t, alarm_id, **alarm):
    """Raised, acknowledged a minute later, cleared ten minutes later."""
    return [ev(t, alarm_id, "raised", UNACK, **alarm), ev(t + 60, alarm_id, "acknowledged", ACK, **alarm),
            ev(t + 600, alarm_id, "cleared", NORMAL, **alarm)]


def test_average_rate_and_top_ten():
    events = [e for i in range(12) for e in cycle(i * 600, f"pump.a{i % 3}")]
    k = alarm_kpis(events, T0, T0 + 7200)
    assert (k.alarms, k.hours, k.per_hour, k.peak_10min) == (12, 2.0, 6.0, 1)
    assert k.top == [("pump.a0", 4), ("pump.a1", 4), ("pump.a2", 4)] and k.top_share == 1.0
    assert k.standing == [] and k.flood_share == 0.0 and k.chattering == [] and k.manageable
    assert k.by_priority == {"medium": 12}


def test_peak_and_time_in_flood():
    # 11 alarms in 100 s: more than 10 within 10 minutes from the 11th until the first leaves the window
    events = [ev(i * 10, f"pump.a{i}", "raised", UNACK) for i in range(11)]
    k = alarm_kpis(events, T0, T0 + 3600)
    assert k.peak_10min == 11
    assert k.flood_share == pytest.approx((600 - 100) / 3600)
    assert not k.manageable and k.standing == [f"pump.a{i}" for i in sorted(range(11), key=str)]


def test_chattering_alarm_is_named():
    events = []
    for i in range(3):  # rings three times within 50 s
        events += [ev(i * 25, "pump.flow-limit", "raised" if i == 0 else "realarm", UNACK),
                   ev(i * 25 + 10, "pump.flow-limit", "returned", RTN)]
    events.append(ev(600, "pump.other-limit", "raised", UNACK))
    k = alarm_kpis(events, T0, T0 + 3600)
    assert k.chattering == ["pump.flow-limit"] and k.alarms == 4


def test_what_is_not_shown_is_not_counted():
    events = [
        ev(0, "pump.fault", "raised", UNACK, priority=Priority.HIGH),
        ev(5, "filler.tank-limit", "raised", UNACK, parent_id="pump.fault", suppressed=True),  # folded
        ev(6, "filler.mode-limit", "raised", UNACK, suppressed=True),  # designed suppression by mode
        ev(7, "filler.shelf-limit", "raised", UNACK, shelved_until=T0 + 900),
        ev(30, "pump.fault", "escalated", UNACK, priority=Priority.HIGH),  # still ringing: no new alarm
        ev(60, "pump.fault", "acknowledged", ACK, priority=Priority.HIGH),
        ev(90, "pump.fault", "escalated", UNACK, priority=Priority.CRITICAL),  # rose after the ack: rings again
        ev(900, "filler.shelf-limit", "unshelved", UNACK),  # shown once the shelve ended
    ]
    k = alarm_kpis(events, T0, T0 + 3600)
    assert k.alarms == 3 and k.folded == 1
    assert k.by_priority == {"high": 1, "critical": 1, "medium": 1}
    assert k.standing == ["filler.shelf-limit", "pump.fault"]


def test_standing_and_stale_at_the_end_of_the_period():
    events = [ev(0, "pump.old-limit", "raised", UNACK), ev(60, "pump.old-limit", "acknowledged", ACK),
              *cycle(3600, "pump.short-limit"), ev(90000, "pump.new-limit", "raised", UNACK)]
    k = alarm_kpis(events, T0 + 86400, T0 + 90600)
    assert k.standing == ["pump.new-limit", "pump.old-limit"] and k.stale == ["pump.old-limit"]
    assert k.alarms == 1  # only what was raised within the period counts towards the rates


def test_any_order_and_mqtt_payloads_give_the_same_figures():
    events = [e for i in range(6) for e in cycle(i * 200, f"pump.a{i % 2}")] + [ev(5000, "pump.z", "raised", UNACK)]
    k = alarm_kpis(events, T0, T0 + 7200)
    newest_first = list(reversed(events))  # as the store's alarm_history returns them
    assert alarm_kpis(newest_first, T0, T0 + 7200) == k
    bodies = [payloads.event(e, "demo-plant", "packaging-1") for e in events]
    for body in bodies:
        payloads.validate(body)
    assert alarm_kpis(bodies, T0, T0 + 7200) == k


def test_events_seen_mid_life_count_only_when_they_start_an_alarm():
    # the period starts while pump.a rings: its later events do not make it a new alarm
    events = [ev(10, "pump.a", "escalated", UNACK), ev(20, "pump.a", "acknowledged", ACK),
              ev(30, "pump.b", "realarm", UNACK)]
    assert alarm_kpis(events).alarms == 1


def test_empty_period():
    k = alarm_kpis([], T0, T0 + 3600)
    assert (k.alarms, k.per_hour, k.peak_10min, k.flood_share, k.standing) == (0, 0.0, 0, 0.0, [])
    assert k.to_dict()["manageable"] is True


def test_escalated_payload_of_a_consequence_validates():
    e = ev(0, "filler.tank-limit", "escalated", UNACK, parent_id="pump.fault", suppressed=True, severity="severe")
    payloads.validate(payloads.event(e, "demo-plant", "packaging-1"))
    payloads.validate(payloads.alarm_state(e.alarm, "demo-plant", "packaging-1"))
    bad = payloads.alarm_state(dataclasses.replace(e.alarm, severity="apocalyptic"), "demo-plant", "packaging-1")
    assert any(p.startswith("severity:") for p in payloads.problems(bad))
