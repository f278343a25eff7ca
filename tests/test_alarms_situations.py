"""One alarm per abnormal situation, states and priorities that follow the fault: the engine on streams shaped like
the detect station's (one evaluation per second, data-time stamps, a limit breach reported as value vs limit)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from factory_copilot.alarms import AlarmEngine, AlarmSettings, annunciated
from factory_copilot.alarms.grouping import fold
from factory_copilot.alarms.kpi import alarm_kpis
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.records import AlarmState, Anomaly, Mode, OperatorCommand, Priority

T0 = 1_800_000_000.0
PUMP = {"product_pump.discharge_pressure": 0.32, "product_pump.suction_pressure": 0.31,
        "product_pump.vibration": 0.2, "product_pump.flow": 0.09, "product_pump.motor_current": 0.08}


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def line():
    return load_line(SIMULATED_LINE)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def engine(line, clock, tmp_path):
    e = AlarmEngine(line, tmp_path / "alarms.db", AlarmSettings(), clock=clock)
    yield e
    e.close()


def departure(t, asset, score, fault="unknown", contributions=None, p=0.7):
    """The detector's multivariate evaluation, as DetectStation._multivariate makes it."""
    return Anomaly(ts=t, asset=asset, kind="multivariate", score=score, threshold=1.0,
                   contributions=dict(contributions or {}), fault_type=fault, fault_probability=p)


def breach(line, t, key, value):
    """A limit check's evaluation, as SignalChecks makes it: score = the value, threshold = the limit crossed."""
    asset, _, signal = key.partition(".")
    lo, hi = line.signal(key).limits
    return Anomaly(ts=t, asset=asset, kind="limit", score=value, threshold=hi if value > hi else lo, signal=signal,
                   value=value)


def run(engine, clock, seconds, step=1.0, at=None):
    """Advance the clock second by second: feed what ``at(t)`` returns for each second, tick; all events."""
    events = []
    start = clock.t
    n = int(round(seconds / step))
    for i in range(n):
        clock.t = start + (i + 1) * step
        for anomaly in (at(clock.t) if at else []):
            events += engine.ingest(anomaly)
        events += engine.tick()
    return events


def presented(events):
    """What an operator is shown: events leaving an alarm ringing (active, unacknowledged, annunciated)."""
    return alarm_kpis(events).alarms


def cavitation(line, onset=T0):
    """Pump cavitation as the detect station sees it on the simulated line (tests/test_alarms_sim.py replays the
    real thing): the departure grows from 1x to ~6000x its threshold; the classifier first says clogged filter; after
    seven minutes the filler's emptying tank dominates, so the detector names the filler; the pump's vibration
    crosses its limit on and off, the filler's tank level falls through its low limit."""

    def at(t):
        s = t - onset
        if s < 0:
            return []
        score = min(6000.0, 1.06 * math.exp(s / 48.0))
        fault = "clogged_filter" if s < 60 else "pump_cavitation"
        out = []
        if s < 420:
            out.append(departure(t, "product_pump", score, fault, PUMP))
        else:
            tank_share = min(0.8, 0.35 + (s - 420) / 1000)
            shares = {"filler.tank_level": tank_share, **{k: v * (1 - tank_share) for k, v in PUMP.items()}}
            out.append(departure(t, "filler", score, "pump_cavitation", shares))
        if s > 360 and int(s) % 40 < 12:
            out.append(breach(line, t, "product_pump.vibration", 7.4 + (s - 360) / 400))
        if s > 520:
            out.append(breach(line, t, "filler.tank_level", max(0.0, 14.9 - (s - 520) / 20)))
        return out

    return at


# -- one alarm per situation -----------------------------------------------------------------------


def test_cavitation_is_one_root_alarm_with_its_consequences_folded_under_it(engine, clock, line):
    events = run(engine, clock, 900, at=cavitation(line, T0 + 1))
    root = engine.get("product_pump.fault")
    assert presented(events) == 1  # what rings: the pump's fault, once
    assert [e.alarm_id for e in events if e.event == "raised" and annunciated(e.alarm)] == ["product_pump.fault"]
    folded = {e.alarm_id for e in events if e.alarm.parent_id == "product_pump.fault"}
    assert folded == {"filler.fault", "product_pump.vibration-limit", "filler.tank_level-limit"}
    for alarm in engine.consequences("product_pump.fault"):
        assert alarm.parent_id == "product_pump.fault" and alarm.suppressed and not annunciated(alarm)
    raised = [e for e in events if e.event == "raised" and e.alarm.parent_id]
    assert raised and all(e.comment == "consequence of product_pump.fault" for e in raised)
    assert root.parent_id is None and root.state is AlarmState.ACTIVE_UNACK and annunciated(root)
    # the low tank was alarmed at all (a low-limit breach is reported with score = value < threshold = limit)
    assert engine.get("filler.tank_level-limit").state.active
    # what a dashboard shows: one situation, three consequences to unfold
    situations = fold(engine.active())
    assert [(s.root.alarm_id, len(s.consequences)) for s in situations] == [
        ("product_pump.fault", len(engine.consequences("product_pump.fault")))]
    assert {a.alarm_id for a in engine.consequences("product_pump.fault")} >= {"filler.fault", "filler.tank_level-limit"}


def test_a_consequence_that_comes_and_goes_with_its_fault_stays_one_folded_alarm(engine, clock, line):
    """Issue 25: a folded consequence (the pump's flow limit) cleared and re-alarmed every ~20 s while its cause stood
    ("re-alarm #10" after 6 minutes), and the folded count flickered 1 -> 4 -> 3."""
    at = cavitation(line, T0 + 1)
    events, folded = [], []
    for _ in range(900):
        events += run(engine, clock, 1, at=at)
        folded.append(len(engine.consequences("product_pump.fault")))
    # the vibration crosses its limit 12 s of every 40: one folded alarm, standing while its cause does
    vibration = [e.event for e in events if e.alarm_id == "product_pump.vibration-limit"
                 and e.event in ("raised", "realarm", "returned", "cleared")]
    assert vibration == ["raised"], vibration
    assert folded == sorted(folded) and folded[-1] == 3  # it only grows while the situation does


def test_growing_fault_never_returns_and_escalates(engine, clock, line):
    events = run(engine, clock, 900, at=cavitation(line, T0 + 1))
    mine = [e for e in events if e.alarm_id == "product_pump.fault"]
    assert not [e for e in mine if e.event in ("returned", "cleared")]  # not even once the filler dominates
    escalations = [e for e in mine if e.event == "escalated"]
    assert [e.comment for e in escalations if not e.comment.startswith("priority")][:2] == [
        "slight -> moderate", "moderate -> severe"]
    severities = [e.alarm.severity for e in mine]
    assert severities[0] == "slight" and severities[-1] == "severe"
    assert severities == sorted(severities, key=["slight", "moderate", "severe"].index)  # never back down while growing
    assert not [e for e in mine if e.event == "deescalated"]
    root = engine.get("product_pump.fault")
    assert root.priority is Priority.HIGH and root.severity == "severe"
    assert root.message.startswith("Product transfer pump: likely pump cavitation, severe")
    assert "score" not in root.message
    # the rename held a minute before it came, and came once
    assert [e.comment for e in mine if e.event == "reclassified"] == ["clogged_filter -> pump_cavitation"]


def test_an_unrelated_fault_on_another_asset_gets_its_own_root_alarm(engine, clock, line):
    pump = cavitation(line, T0 + 1)

    def at(t):
        out = pump(t)
        s = t - T0
        if s > 600:  # an air leak: the compressor runs loaded past its limit (not in the pump's flow)
            out.append(breach(line, t, "air_compressor.load_duty", 93.0 + (s - 600) / 100))
        return out

    events = run(engine, clock, 900, at=at)
    leak = engine.get("air_compressor.load_duty-limit")
    assert leak.parent_id is None and annunciated(leak) and leak.state is AlarmState.ACTIVE_UNACK
    assert engine.get("product_pump.fault").parent_id is None
    assert presented(events) == 2
    assert {s.root.alarm_id for s in fold(engine.active())} == {"product_pump.fault", "air_compressor.load_duty-limit"}


def test_a_distinct_fault_the_classifier_keeps_naming_is_let_go_as_its_own_situation(engine, clock, line):
    pump = cavitation(line, T0 + 1)

    def at(t):
        out = pump(t)
        s = t - T0
        if s > 300:  # the detector also names the compressor, and the classifier an air leak there
            out.append(departure(t, "air_compressor", 40.0, "air_leak", {"air_compressor.air_flow": 0.7,
                                                                         "air_compressor.load_duty": 0.3}))
        return out

    events = run(engine, clock, 600, at=at)
    leak = [e for e in events if e.alarm_id == "air_compressor.fault"]
    assert [e.event for e in leak][:2] == ["raised", "ungrouped"]
    assert leak[0].alarm.parent_id == "product_pump.fault"  # one departure of the detector: folded at first ...
    assert leak[1].ts - leak[0].ts >= 120  # ... until the classifier held its own name for two minutes
    assert "air_leak" in leak[1].comment and annunciated(leak[1].alarm) and leak[1].state is AlarmState.ACTIVE_UNACK
    assert leak[1].alarm.parent_id is None


def test_a_fault_upstream_takes_in_the_alarms_it_explains(engine, clock, line):
    # the filler's tank runs low first; then the detector names the pump's cavitation upstream of it
    run(engine, clock, 30, at=lambda t: [breach(line, t, "filler.tank_level", 12.0)])
    assert annunciated(engine.get("filler.tank_level-limit"))
    events = run(engine, clock, 30, at=lambda t: [breach(line, t, "filler.tank_level", 11.0),
                                                  departure(t, "product_pump", 30.0, "pump_cavitation", PUMP)])
    grouped = [e for e in events if e.event == "grouped"]
    assert [(e.alarm_id, e.comment) for e in grouped] == [("filler.tank_level-limit", "consequence of product_pump.fault")]
    tank = engine.get("filler.tank_level-limit")
    assert tank.parent_id == "product_pump.fault" and not annunciated(tank)


def test_nothing_flows_upstream(engine, clock, line):
    run(engine, clock, 10, at=lambda t: [departure(t, "filler", 30.0, "stuck_sensor", {"filler.fill_weight": 1.0})])
    run(engine, clock, 10, at=lambda t: [breach(line, t, "product_pump.flow", 40.0)])
    pump = engine.get("product_pump.flow-limit")
    assert pump.parent_id is None and annunciated(pump)  # the pump feeds the filler, not the other way round


def test_an_instrument_fault_is_not_a_consequence_unless_its_signal_is_in_the_fault(engine, clock, line):
    stuck = lambda t, signal, v: Anomaly(ts=t, asset="heat_tunnel", kind="stuck", score=40, threshold=30,  # noqa: E731
                                         signal=signal, value=v)
    heater = {"heat_tunnel.heater_duty": 0.5, "heat_tunnel.heater_power": 0.3, "heat_tunnel.heater_current": 0.2}
    run(engine, clock, 10, at=lambda t: [departure(t, "heat_tunnel", 50.0, "heater_degradation", heater)])
    # a saturated controller output reads flat: part of the heater fault
    run(engine, clock, 10, at=lambda t: [departure(t, "heat_tunnel", 50.0, "heater_degradation", heater),
                                         stuck(t, "heater_duty", 100.0)])
    assert engine.get("heat_tunnel.heater_duty-stuck").parent_id == "heat_tunnel.fault"
    run(engine, clock, 10, at=lambda t: [departure(t, "heat_tunnel", 50.0, "heater_degradation", heater),
                                         stuck(t, "fan_speed", 1400.0)])
    assert engine.get("heat_tunnel.fan_speed-stuck").parent_id is None  # a sensor fault of its own


def test_a_consequence_outliving_its_root_rings_on_its_own(engine, clock, line):
    run(engine, clock, 30, at=lambda t: [breach(line, t, "product_pump.flow", 40.0),
                                         breach(line, t, "filler.tank_level", 10.0)])
    assert engine.get("filler.tank_level-limit").parent_id == "product_pump.flow-limit"
    # the flow recovers; the tank stays low
    events = run(engine, clock, 700, at=lambda t: [breach(line, t, "filler.tank_level", 10.0)])
    released = [e for e in events if e.event == "ungrouped"]
    assert [e.alarm_id for e in released] == ["filler.tank_level-limit"]
    assert released[0].comment.startswith("still active 600 s after its cause product_pump.flow-limit returned")
    tank = engine.get("filler.tank_level-limit")
    assert tank.parent_id is None and annunciated(tank) and tank.state is AlarmState.ACTIVE_UNACK


def test_consequences_that_return_need_no_acknowledgement(engine, clock, line):
    run(engine, clock, 30, at=lambda t: [breach(line, t, "product_pump.flow", 40.0),
                                         breach(line, t, "filler.tank_level", 10.0)])
    run(engine, clock, 30)
    assert engine.get("filler.tank_level-limit").state is AlarmState.NORMAL  # nobody was shown it
    assert engine.get("product_pump.flow-limit").state is AlarmState.RTN_UNACK
    assert engine.active() == [engine.get("product_pump.flow-limit")]


def test_taking_the_root_out_of_service_lets_its_consequences_ring(engine, clock, line):
    run(engine, clock, 30, at=lambda t: [breach(line, t, "product_pump.flow", 40.0),
                                         breach(line, t, "filler.tank_level", 10.0)])
    result, events = engine.command(OperatorCommand("out_of_service", "product_pump.flow-limit", "op.anna",
                                                    comment="flow meter replaced"))
    assert result.ok
    assert [(e.event, e.alarm_id) for e in events] == [("out_of_service", "product_pump.flow-limit"),
                                                       ("ungrouped", "filler.tank_level-limit")]
    assert annunciated(engine.get("filler.tank_level-limit"))


def test_grouping_survives_a_restart(line, clock, tmp_path):
    path = tmp_path / "restart.db"
    engine = AlarmEngine(line, path, AlarmSettings(), clock=clock)
    run(engine, clock, 30, at=lambda t: [breach(line, t, "product_pump.flow", 40.0),
                                         breach(line, t, "filler.tank_level", 10.0)])
    # the evidence snapshot is stored with each event, not with every evaluation
    before = [dataclasses.replace(a, anomaly=None) for a in engine.alarms()]
    engine.close()
    again = AlarmEngine(line, path, AlarmSettings(), clock=clock)
    try:
        assert [dataclasses.replace(a, anomaly=None) for a in again.alarms()] == before
        assert [a.alarm_id for a in again.consequences("product_pump.flow-limit")] == ["filler.tank_level-limit"]
        events = run(again, clock, 10, at=lambda t: [breach(line, t, "product_pump.flow", 40.0),
                                                     breach(line, t, "filler.tank_level", 10.0)])
        assert presented(events) == 0  # the same situation carries on, nothing new rings
    finally:
        again.close()


def test_grouping_can_be_switched_off(line, clock, tmp_path):
    engine = AlarmEngine(line, tmp_path / "a.db", AlarmSettings(group_consequences=False), clock=clock)
    try:
        events = run(engine, clock, 30, at=lambda t: [breach(line, t, "product_pump.flow", 40.0),
                                                      breach(line, t, "filler.tank_level", 10.0)])
        assert presented(events) == 2 and all(a.parent_id is None for a in engine.alarms())
    finally:
        engine.close()


# -- priority = consequence x urgency, severity that follows ------------------------------------------


def test_a_slow_drift_on_a_non_critical_asset_is_low(engine, clock, line):
    # the compressor (criticality medium) creeps past its discharge temperature limit by 0.004 degC per second
    run(engine, clock, 600, at=lambda t: [breach(line, t, "air_compressor.discharge_temperature",
                                                 105.2 + (t - T0) * 0.004)])
    alarm = engine.get("air_compressor.discharge_temperature-limit")
    assert alarm.priority is Priority.LOW and alarm.severity == "slight"


def test_a_fast_excursion_on_the_pump_is_high(engine, clock, line):
    # the pump's flow collapses through its low limit by 1 L/min per second
    events = run(engine, clock, 40, at=lambda t: [breach(line, t, "product_pump.flow", 59.0 - (t - T0))])
    alarm = engine.get("product_pump.flow-limit")
    assert alarm.priority is Priority.HIGH
    raised = next(e for e in events if e.event == "raised")
    assert raised.alarm.priority is Priority.MEDIUM  # no trend yet at the raise: prompt, not immediate
    assert [e.event for e in events if e.alarm_id == alarm.alarm_id][:2] == ["raised", "escalated"]


def test_the_same_excursion_steady_is_less_urgent(engine, clock, line):
    events = run(engine, clock, 400, at=lambda t: [breach(line, t, "product_pump.flow", 50.0)])
    alarm = engine.get("product_pump.flow-limit")
    assert alarm.severity == "moderate" and alarm.priority is Priority.LOW  # not getting worse: deferred
    # raised before any trend was known (prompt: medium), lowered once 'not getting worse' held five minutes
    assert [(e.event, e.alarm.priority) for e in events] == [("raised", Priority.MEDIUM),
                                                            ("deescalated", Priority.LOW)]


def test_priority_rise_after_acknowledgement_rings_again_and_lowering_waits(engine, clock, line):
    run(engine, clock, 60, at=lambda t: [breach(line, t, "product_pump.flow", 50.0)])
    alarm_id = "product_pump.flow-limit"
    assert engine.command(OperatorCommand("acknowledge", alarm_id, "op.anna"))[0].ok
    start = clock.t
    events = run(engine, clock, 60, at=lambda t: [breach(line, t, "product_pump.flow", 50.0 - 0.5 * (t - start))])
    escalated = [e for e in events if e.event == "escalated" and "priority" in e.comment]
    assert escalated and escalated[0].state is AlarmState.ACTIVE_UNACK and escalated[0].alarm.acked_by is None
    assert presented(engine.audit()) == 2
    # steady again: the alarm says it is less urgent only once that held for five minutes
    steady = clock.t
    events = run(engine, clock, 400, at=lambda t: [breach(line, t, "product_pump.flow", 40.0)])
    lowered = [e for e in events if e.event == "deescalated"]
    assert len(lowered) == 1 and lowered[0].ts - steady >= 300
    assert lowered[0].state is AlarmState.ACTIVE_UNACK  # lowering never asks the operator for anything


def test_severity_and_priority_fall_only_after_holding(engine, clock, line):
    run(engine, clock, 60, at=lambda t: [departure(t, "product_pump", 300.0, "pump_cavitation", PUMP)])
    assert engine.get("product_pump.fault").severity == "severe"
    events = run(engine, clock, 299, at=lambda t: [departure(t, "product_pump", 5.0, "pump_cavitation", PUMP)])
    assert [e.event for e in events] == [] and engine.get("product_pump.fault").severity == "severe"
    events = run(engine, clock, 2, at=lambda t: [departure(t, "product_pump", 5.0, "pump_cavitation", PUMP)])
    assert [(e.event, e.alarm.severity) for e in events] == [("deescalated", "moderate")]
    assert "moderate" in engine.get("product_pump.fault").message


def test_a_lower_severity_must_hold_without_a_break_before_the_alarm_says_so(engine, clock, line):
    run(engine, clock, 60, at=lambda t: [departure(t, "product_pump", 300.0, "pump_cavitation", PUMP)])
    run(engine, clock, 200, at=lambda t: [departure(t, "product_pump", 5.0, "pump_cavitation", PUMP)])
    # severe again for a moment, just as the alarm says: the wait for a lower severity starts anew after it
    events = run(engine, clock, 5, at=lambda t: [departure(t, "product_pump", 300.0, "pump_cavitation", PUMP)])
    assert events == [] and engine.get("product_pump.fault").severity == "severe"
    events = run(engine, clock, 200, at=lambda t: [departure(t, "product_pump", 5.0, "pump_cavitation", PUMP)])
    assert events == [] and engine.get("product_pump.fault").severity == "severe"
    events = run(engine, clock, 101, at=lambda t: [departure(t, "product_pump", 5.0, "pump_cavitation", PUMP)])
    assert [(e.event, e.alarm.severity) for e in events] == [("deescalated", "moderate")]


# -- data time ------------------------------------------------------------------------------------


def test_delays_follow_the_data_not_the_wall_clock(engine, clock, line):
    # a replay ten times faster than real time: 1 s of clock per 10 s of data
    events = []
    for i in range(60):
        clock.t = T0 + i * 0.1
        events += engine.ingest(breach(line, T0 + i, "product_pump.flow", 40.0))
    raised = [e for e in events if e.event == "raised"]
    assert len(raised) == 1 and raised[0].alarm.anomaly.ts == T0 + 2  # on-delay: 2 s of data
    for i in range(60, 70):  # the flow recovers in the data: the detector says so with normal evaluations
        clock.t = T0 + i * 0.1
        normal = breach(line, T0 + i, "product_pump.flow", 40.0)
        normal.score, normal.threshold = 1.0, 2.0
        events += engine.ingest(normal)
    returned = [e for e in events if e.event == "returned"]
    assert len(returned) == 1 and returned[0].ts == pytest.approx(T0 + 6.5)  # off-delay: 5 s of data, 0.5 s of clock


def test_a_source_clock_an_hour_off_changes_nothing(engine, clock, line):
    ahead = lambda t: [breach(line, t + 3600, "product_pump.flow", 40.0)]  # noqa: E731
    events = run(engine, clock, 30, at=ahead)
    assert [e.event for e in events] == ["raised"]  # and no return while anomalies keep coming
    events = run(engine, clock, 8)  # silence is measured on the engine's clock
    assert [e.event for e in events] == ["returned"]


def test_a_late_anomaly_does_not_move_a_condition_back_in_time(engine, clock, line):
    run(engine, clock, 10, at=lambda t: [breach(line, t, "product_pump.flow", 40.0)])
    clock.t += 1
    engine.ingest(breach(line, T0 - 3600, "product_pump.flow", 40.0))  # an hour late
    events = run(engine, clock, 3, at=lambda t: [breach(line, t, "product_pump.flow", 40.0)])
    assert events == [] and engine.get("product_pump.flow-limit").state is AlarmState.ACTIVE_UNACK


def test_mode_suppression_still_applies_to_a_root(engine, clock, line):
    idle = lambda t: [Anomaly(ts=t, asset="product_pump", kind="limit", score=0.0, threshold=60.0,  # noqa: E731
                              signal="flow", value=0.0, mode=Mode("idle"))]
    run(engine, clock, 10, at=idle)
    assert not annunciated(engine.get("product_pump.flow-limit"))
    assert engine.get("product_pump.flow-limit").parent_id is None


def test_alarms_list_folds_consequences_under_their_root(line, clock, tmp_path, capsys):
    from factory_copilot.cli import main

    path = tmp_path / "cli.db"
    engine = AlarmEngine(line, path, AlarmSettings(), clock=clock)
    run(engine, clock, 30, at=lambda t: [breach(line, t, "product_pump.flow", 40.0),
                                         breach(line, t, "filler.tank_level", 10.0)])
    engine.close()
    assert main(["alarms", "--db", str(path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "product_pump.flow-limit" in lines[0] and "└" not in lines[0]
    assert "  └ " in lines[1] and "filler.tank_level-limit" in lines[1] and "[suppressed]" not in lines[1]
    assert lines[2] == "2 alarm(s), 1 folded under their cause"


def test_lost_data_holds_the_situation_and_its_own_alarm_rings_apart(engine, clock, line):
    run(engine, clock, 30, at=lambda t: [breach(line, t, "product_pump.flow", 40.0),
                                         breach(line, t, "filler.tank_level", 10.0)])
    signals = ("product_pump.flow", "filler.tank_level")
    lost = lambda t: [Anomaly(ts=t, asset="sources", kind="source", score=2.0, threshold=1.0,  # noqa: E731
                              signal="opcua", stale=signals, message="disconnected since 08:00:31")]
    events = run(engine, clock, 120, at=lost)
    source = engine.get("sources.opcua-source")
    assert source.priority is Priority.HIGH and source.severity is None and source.parent_id is None
    assert annunciated(source) and source.message.startswith("Data lost: ")
    # no data is not normal data: neither the root nor its consequence returns while the source is gone
    assert not [e for e in events if e.event in ("returned", "cleared")]
    assert engine.get("product_pump.flow-limit").state.active
    assert engine.get("filler.tank_level-limit").parent_id == "product_pump.flow-limit"


def test_a_fault_let_go_takes_its_own_signal_alarms_with_it(engine, clock, line):
    pump = cavitation(line, T0 + 1)

    def at(t):
        out = pump(t)
        s = t - T0
        if s > 300:
            out.append(departure(t, "air_compressor", 40.0, "air_leak", {"air_compressor.air_flow": 0.7,
                                                                         "air_compressor.load_duty": 0.3}))
        if s > 330:
            out.append(breach(line, t, "air_compressor.load_duty", 93.0))
        return out

    events = run(engine, clock, 600, at=at)
    assert engine.get("air_compressor.load_duty-limit").parent_id == "air_compressor.fault"
    assert engine.get("air_compressor.fault").parent_id is None
    assert {s.root.alarm_id for s in fold(engine.active())} == {"product_pump.fault", "air_compressor.fault"}
    assert presented(events) == 3  # the pump, the compressor's limit when it came, the compressor's fault let go


PLANT = """
site: plant-7
line: bottling-2
assets:
- id: syrup_tank
  name: Syrup tank
  criticality: critical
  feeds: [dosing_valve]
  signals:
  - {name: level, unit: '%', normal: [40, 80], limits: [10, 95], physical: [0, 100], source: {opcua: 'ns=3;s=T1.L'}}
- id: dosing_valve
  name: Dosing valve
  signals:
  - {name: position, unit: '%', normal: [20, 60], limits: [5, 90], physical: [0, 100], source: {opcua: 'ns=3;s=V1.P'}}
- id: chiller
  name: Chiller
  priority: low
  signals:
  - {name: supply_temperature, unit: degC, normal: [4, 8], limits: [2, 12], source: {opcua: 'ns=3;s=C1.T'}}
mode_signal: null
"""


def test_a_plant_line_of_its_own_flow_and_fault_names(clock, tmp_path):
    import yaml

    from factory_copilot.config import parse_line

    plant = parse_line(yaml.safe_load(PLANT), "plant-7.yaml")
    engine = AlarmEngine(plant, tmp_path / "plant.db", AlarmSettings(), clock=clock, faults={})  # no catalogue
    try:
        tank = lambda t: departure(t, "syrup_tank", 40.0, "syrup_leak", {"syrup_tank.level": 1.0})  # noqa: E731
        events = run(engine, clock, 60, at=lambda t: [tank(t), breach(plant, t, "dosing_valve.position", 96.0),
                                                      breach(plant, t, "chiller.supply_temperature", 13.0)])
        root = engine.get("syrup_tank.fault")
        assert root.message.startswith("Syrup tank: likely syrup leak")  # the plant's own fault name, trusted
        assert engine.get("dosing_valve.position-limit").parent_id == "syrup_tank.fault"  # downstream: folded
        chiller = engine.get("chiller.supply_temperature-limit")
        assert chiller.parent_id is None and annunciated(chiller)  # not in the tank's flow: its own
        assert presented(events) == 2
        # criticality critical, severe (immediate): critical; the chiller's older 'priority: low' is its criticality
        run(engine, clock, 30, at=lambda t: [departure(t, "syrup_tank", 900.0, "syrup_leak", {"syrup_tank.level": 1.0})])
        assert engine.get("syrup_tank.fault").priority is Priority.CRITICAL
        assert chiller.priority is Priority.LOW
    finally:
        engine.close()


def test_evidence_that_is_not_a_number_judges_nothing(engine, clock, line):
    odd = lambda t: [departure(t, "product_pump", 30.0, "pump_cavitation",  # noqa: E731
                               {"product_pump.flow": float("nan"), "no_dot": 0.5})]
    run(engine, clock, 30, at=odd)
    alarm = engine.get("product_pump.fault")
    assert alarm.state is AlarmState.ACTIVE_UNACK  # the detector flagged it: it alarms
    run(engine, clock, 30, at=lambda t: [departure(t, "product_pump", 30.0, "pump_cavitation", PUMP)])
    assert engine.get("product_pump.fault").severity == "severe"  # and the trend was not poisoned


# -- a PLC's own alarm is the situation's root --------------------------------------------------------


def plc_alarm(t, asset="product_pump", *, active=True, acked=False, cid="ns=2;s=Pump1.HighVibration", severity=750):
    """One A&C event of a PLC's condition, as the OPC UA collector reads it (tests/test_opcua_alarms_in.py reads real
    ones from an asyncua server)."""
    from factory_copilot.records import PlcCondition
    return PlcCondition(cid, t, event_id=f"{int(t):x}", source_name=asset.title(), asset=asset, severity=severity,
                        message=f"{asset}: high vibration (PLC)", active=active, acked=acked,
                        retain=active or not acked, endpoint="opc.tcp://plc")


def _pump_fault(line, t):
    return [departure(t, "product_pump", 3.0, "pump_cavitation", PUMP)]


def test_the_copilots_standing_alarm_folds_under_the_plcs_alarm_of_its_situation(engine, clock, line):
    """The copilot saw the pump's fault first; when the PLC's own alarm on the pump rings, the situation rings once,
    by the PLC's name, with the copilot's alarm folded under it (not two alarms for one pump)."""
    events = run(engine, clock, 60, at=lambda t: _pump_fault(line, t))
    own = engine.get("product_pump.fault")
    assert own.state.active and own.parent_id is None and annunciated(own)
    events = engine.follow_plc(plc_alarm(clock.t))
    plc = next(e.alarm for e in events if e.event == "raised")
    assert plc.parent_id is None and annunciated(plc)
    grouped = [e for e in events if e.event == "grouped"]
    assert [e.alarm_id for e in grouped] == ["product_pump.fault"]
    assert grouped[0].comment == f"the situation of the PLC's alarm {plc.alarm_id}"
    own = engine.get("product_pump.fault")
    assert own.parent_id == plc.alarm_id and not annunciated(own)
    # the copilot's evidence keeps coming and its classifier names a pump fault: it stays folded (no "distinct"
    # situation split off, as it would be under a copilot root that names another fault)
    events = run(engine, clock, 600, at=lambda t: _pump_fault(line, t))
    assert not [e for e in events if e.event == "ungrouped"]
    assert engine.get("product_pump.fault").parent_id == plc.alarm_id
    assert [s.root.alarm_id for s in fold(engine.active())] == [plc.alarm_id]


def test_an_alarm_raised_while_the_plcs_alarm_stands_is_raised_folded_downstream_too(engine, clock, line):
    engine.follow_plc(plc_alarm(clock.t))
    plc_id = next(a.alarm_id for a in engine.active())
    events = run(engine, clock, 60, at=lambda t: _pump_fault(line, t) + [breach(line, t, "filler.tank_level", 3.0)])
    raised = {e.alarm_id: e for e in events if e.event == "raised"}
    assert set(raised) == {"product_pump.fault", "filler.tank_level-limit"}
    for e in raised.values():  # the filler is downstream of the pump: its low tank is the pump's situation
        assert e.alarm.parent_id == plc_id and not annunciated(e.alarm)
    assert presented(events) == 0  # nothing new rings: the PLC's alarm already did


def test_upstream_data_and_unmapped_plc_alarms_fold_nothing(engine, clock, line):
    """Nothing flows upstream, a sensor's or a source's alarm is about the data, and a PLC's alarm on a source the
    line file does not map to an asset cannot say whose situation it is: each of these rings on its own."""
    engine.follow_plc(plc_alarm(clock.t, "filler", cid="ns=2;s=Filler.Low"))
    engine.follow_plc(plc_alarm(clock.t, "Tank7", cid="ns=2;s=Tank7.High"))
    stuck = Anomaly(ts=0, asset="filler", kind="stuck", score=1.0, threshold=1.0, signal="tank_level")
    events = run(engine, clock, 90, at=lambda t: _pump_fault(line, t) + [dataclasses.replace(stuck, ts=t)])
    raised = {e.alarm_id: e.alarm for e in events if e.event == "raised"}
    assert "product_pump.fault" in raised and raised["product_pump.fault"].parent_id is None  # upstream of the filler
    stuck_alarm = next(a for k, a in raised.items() if "stuck" in k)
    assert stuck_alarm.parent_id is None and annunciated(stuck_alarm)
    assert not [e for e in events if e.event == "grouped"]


def test_the_plcs_alarm_is_never_folded_under_the_copilots_and_its_end_lets_the_copilots_ring(engine, clock, line):
    run(engine, clock, 60, at=lambda t: _pump_fault(line, t))
    # a PLC alarm downstream of the copilot's pump fault: the copilot's root does not take the plant's alarm in
    events = engine.follow_plc(plc_alarm(clock.t, "filler", cid="ns=2;s=Filler.Low"))
    filler = next(e.alarm for e in events if e.event == "raised")
    assert filler.parent_id is None and annunciated(filler)
    assert engine.get("product_pump.fault").parent_id is None  # the pump is upstream of the filler's PLC alarm
    # the PLC's pump alarm rings and then clears on the PLC while the copilot still sees the fault
    engine.follow_plc(plc_alarm(clock.t))
    plc_id = engine.get("product_pump.fault").parent_id
    assert plc_id is not None
    engine.follow_plc(plc_alarm(clock.t + 1, active=False, acked=True))
    release = engine.settings.release_after_s
    events = run(engine, clock, release + 30, at=lambda t: _pump_fault(line, t))
    ungrouped = [e for e in events if e.event == "ungrouped" and e.alarm_id == "product_pump.fault"]
    assert len(ungrouped) == 1 and plc_id in ungrouped[0].comment
    own = engine.get("product_pump.fault")
    assert own.parent_id is None and own.state is AlarmState.ACTIVE_UNACK and annunciated(own)
    # a situation of its own again, it takes in what it explains, but never the filler's PLC alarm
    assert engine.get(filler.alarm_id).parent_id is None and annunciated(engine.get(filler.alarm_id))


def test_a_plc_alarm_shelved_on_the_hmi_is_shelved_here_for_as_long_and_unshelved_with_it(engine, clock, line):
    events = engine.follow_plc(plc_alarm(clock.t))
    plc = next(e.alarm for e in events if e.event == "raised")
    shelved = dataclasses.replace(plc_alarm(clock.t + 5), shelved=True, unshelve_in_s=1800.0, user="hmi-3")
    events = engine.follow_plc(shelved)
    assert [e.event for e in events] == ["shelved"] and events[0].actor == "plc"
    alarm = engine.get(plc.alarm_id)
    assert alarm.shelved_until == pytest.approx(clock.t + 1800.0) and not annunciated(alarm)
    # a refresh tells the same shelving again, its countdown moved on: nothing new
    clock.t += 60
    assert engine.follow_plc(dataclasses.replace(shelved, unshelve_in_s=1740.0)) == []
    # the PLC unshelves: the alarm, still active, rings again
    events = engine.follow_plc(plc_alarm(clock.t))
    assert [e.event for e in events] == ["unshelved"]
    alarm = engine.get(plc.alarm_id)
    assert alarm.shelved_until is None and alarm.state is AlarmState.ACTIVE_UNACK and annunciated(alarm)
    # an operator's own shelving here is not ended by the PLC telling its (unshelved) state again
    result, _ = engine.command(OperatorCommand("shelve", plc.alarm_id, "op.anna", shelve_s=600))
    assert result.ok, result.message
    assert engine.follow_plc(plc_alarm(clock.t + 1, severity=760)) == []  # same priority band, same state
    assert engine.get(plc.alarm_id).shelved_by == "op.anna" and engine.get(plc.alarm_id).shelved_until
