"""The alarm engine on the simulated packaging line, driven by hand-made anomalies and a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from factory_copilot.alarms import AlarmEngine, AlarmSettings, annunciated
from factory_copilot.alarms.design import alarm_id
from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.records import AlarmState, Anomaly, OperatorCommand, Priority

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> float:
        self.t += s
        return self.t


@pytest.fixture(scope="module")
def line():
    return load_line(SIMULATED_LINE)


@pytest.fixture
def clock():
    return Clock()


SETTINGS = AlarmSettings(on_delay_s=2.0, off_delay_s=5.0, deadband=0.1, silence_s=2.5, chatter_window_s=60.0)
# for tests of one mechanism on alarms of related assets, which would otherwise be folded into one situation
UNGROUPED = dataclasses.replace(SETTINGS, group_consequences=False)


@pytest.fixture
def make(line, clock, tmp_path):
    engines = []

    def _make(settings: AlarmSettings = SETTINGS, path=None):
        e = AlarmEngine(line, path or tmp_path / "alarms.db", settings, clock=clock)
        engines.append(e)
        return e

    yield _make
    for e in engines:
        e.close()


@pytest.fixture
def engine(make):
    return make()


def limit(asset="product_pump", signal="flow", value=40.0, score=2.0, threshold=1.0, mode="running"):
    return Anomaly(ts=0, asset=asset, kind="limit", signal=signal, value=value, score=score, threshold=threshold, mode=mode)


def fault(fault_type="bearing_wear", asset="product_pump", p=0.87, score=20.0, mode="running", **kw):
    return Anomaly(ts=0, asset=asset, kind="multivariate", score=score, threshold=10.0, fault_type=fault_type,
                   fault_probability=p, mode=mode, **kw)


def at(clock, anomaly):
    """The anomaly as the detect station sends it: stamped with the (data) time it was evaluated."""
    return dataclasses.replace(anomaly, ts=clock.t)


def feed(engine, clock, anomaly, seconds, step=1.0):
    """The detect station's stream: one anomaly per second for ``seconds`` (first at now), clock left after the last."""
    events = []
    n = int(round(seconds / step))
    for i in range(n):
        if i:
            clock.advance(step)
        events += engine.ingest(at(clock, anomaly))
    return events


def raise_alarm(engine, clock, anomaly):
    """Feed until raised (on-delay 2 s = 3 samples); returns the raised alarm."""
    events = feed(engine, clock, anomaly, 3)
    assert [e.event for e in events] == ["raised"]
    return events[0].alarm


def silence(engine, clock, seconds, step=0.25):
    events = []
    for _ in range(int(round(seconds / step))):
        clock.advance(step)
        events += engine.tick()
    return events


def cmd(engine, command, alarm_id, actor="op.anna", **kw):
    return engine.command(OperatorCommand(command, alarm_id, actor, **kw))


# -- state transitions -------------------------------------------------------------------------------


def test_raise_ack_clear(engine, clock):
    a = raise_alarm(engine, clock, limit())
    assert a.alarm_id == "product_pump.flow-limit"
    assert a.state is AlarmState.ACTIVE_UNACK and a.raised_at == clock.t
    result, events = cmd(engine, "acknowledge", a.alarm_id, comment="checking the strainer")
    assert result.ok and result.alarm.state is AlarmState.ACTIVE_ACK
    assert [(e.event, e.state, e.actor) for e in events] == [("acknowledged", AlarmState.ACTIVE_ACK, "op.anna")]
    assert engine.get(a.alarm_id).acked_by == "op.anna"
    events = silence(engine, clock, 10)
    assert [(e.event, e.state) for e in events] == [("cleared", AlarmState.NORMAL)]
    assert engine.active() == []


def test_raise_return_then_ack(engine, clock):
    a = raise_alarm(engine, clock, limit())
    events = silence(engine, clock, 10)
    assert [(e.event, e.state) for e in events] == [("returned", AlarmState.RTN_UNACK)]
    assert [x.alarm_id for x in engine.active()] == [a.alarm_id]  # still needs the operator
    result, events = cmd(engine, "acknowledge", a.alarm_id)
    assert result.ok and [(e.event, e.state) for e in events] == [("acknowledged", AlarmState.NORMAL)]
    assert engine.active() == []


def test_one_alarm_per_condition(engine, clock):
    raise_alarm(engine, clock, limit())
    feed(engine, clock, limit(), 30)
    feed(engine, clock, limit(signal="suction_pressure", value=0.2), 3)
    feed(engine, clock, fault(), 3)
    ids = sorted(a.alarm_id for a in engine.active())
    assert ids == ["product_pump.fault", "product_pump.flow-limit", "product_pump.suction_pressure-limit"]
    assert [e.event for e in engine.audit("product_pump.flow-limit")] == ["raised"]


def test_fault_named_later_updates_the_same_alarm_not_a_second_one(engine, clock):
    first = raise_alarm(engine, clock, fault("unknown", p=0.3))
    assert first.alarm_id == "product_pump.fault" and "unusual" in first.message.lower()
    events = feed(engine, clock, fault("pump_cavitation", p=0.9), 3)
    assert [e.event for e in events] == ["reclassified"]  # once, not on every evaluation
    alarm = engine.get("product_pump.fault")
    assert alarm.state is AlarmState.ACTIVE_UNACK and "cavitation" in alarm.message.lower()
    assert events[0].comment == "unknown -> pump_cavitation"
    # an 'unknown' evaluation later does not take the name away again
    assert feed(engine, clock, fault("unknown", p=0.3), 3) == []
    assert [a.alarm_id for a in engine.active()] == ["product_pump.fault"]


def test_active_sorted_worst_priority_first(make, clock):
    engine = make(UNGROUPED)
    # severe conditions (urgency immediate): the priority is the consequence's
    raise_alarm(engine, clock, limit(asset="filler", signal="fill_weight", value=480, score=6))  # medium
    raise_alarm(engine, clock, fault("motor_overload", asset="infeed_conveyor", score=300))  # critical
    raise_alarm(engine, clock, limit(score=6))  # high (asset)
    assert [a.priority for a in engine.active()] == [Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM]


# -- delays and deadband -----------------------------------------------------------------------------


def test_on_delay_needs_continuous_abnormal(engine, clock):
    assert feed(engine, clock, limit(), 2) == []  # 0 s and 1 s: not yet 2 s abnormal
    clock.advance(4)  # a gap longer than silence_s: the stretch is broken
    assert feed(engine, clock, limit(), 2) == []
    clock.advance(1)
    assert [e.event for e in engine.ingest(at(clock, limit()))] == ["raised"]


def test_blip_shorter_than_on_delay_never_alarms(engine, clock):
    feed(engine, clock, limit(), 2)
    assert silence(engine, clock, 30) == []
    assert engine.alarms() == [] and engine.audit() == []


def test_on_delay_per_kind(make, clock):
    engine = make(AlarmSettings(on_delay_s=5, on_delay_by_kind={"multivariate": 0.0}, silence_s=2.5))
    assert [e.event for e in engine.ingest(at(clock, fault()))] == ["raised"]
    assert feed(engine, clock, limit(), 5) == []


def test_off_delay_after_silence(engine, clock):
    raise_alarm(engine, clock, limit())
    # normal counts from last anomaly + silence 2.5 s; off-delay 5 s -> returns at +7.5 s, not before
    assert silence(engine, clock, 7.25) == []
    assert [e.event for e in silence(engine, clock, 0.25)] == ["returned"]


def test_off_delay_after_explicit_normal_score(engine, clock):
    raise_alarm(engine, clock, limit())
    low = limit(score=0.5)
    assert feed(engine, clock, low, 5) == []  # normal for 4 s
    clock.advance(1)
    assert [e.event for e in engine.ingest(at(clock, low))] == ["returned"]  # 5 s normal


def test_abnormal_sample_restarts_off_delay(engine, clock):
    raise_alarm(engine, clock, limit())
    feed(engine, clock, limit(score=0.5), 4)
    clock.advance(1)
    engine.ingest(at(clock, limit()))  # back above the threshold before the off-delay ran out
    feed(engine, clock, limit(score=0.5), 5)
    assert engine.get("product_pump.flow-limit").state is AlarmState.ACTIVE_UNACK


def test_deadband_holds_alarm_until_score_clearly_below(engine, clock):
    raise_alarm(engine, clock, limit())
    # threshold 1.0, deadband 10%: 0.95 is below the threshold but inside the deadband -> still abnormal
    feed(engine, clock, limit(score=0.95), 20)
    assert engine.get("product_pump.flow-limit").state is AlarmState.ACTIVE_UNACK
    feed(engine, clock, limit(score=0.89), 6)
    assert engine.get("product_pump.flow-limit").state is AlarmState.RTN_UNACK


def test_deadband_does_not_lower_the_raise_level(engine, clock):
    assert feed(engine, clock, limit(score=0.95), 10) == []


# -- chattering ------------------------------------------------------------------------------------


def test_chattering_counts_realarms_on_one_alarm(engine, clock):
    a = raise_alarm(engine, clock, limit())
    for n in (1, 2, 3):
        silence(engine, clock, 8)  # returned (unacknowledged)
        events = feed(engine, clock, limit(), 3)
        assert [(e.event, e.alarm.realarm_count) for e in events] == [("realarm", n)] + [("chattering", 3)] * (n == 3)
    assert [x.alarm_id for x in engine.alarms()] == [a.alarm_id]
    assert engine.get(a.alarm_id).raised_at == a.raised_at  # the first raise stands
    assert [e.event for e in engine.audit(a.alarm_id)].count("raised") == 1


def test_an_alarm_that_keeps_re_alarming_is_named_chattering_and_its_off_delay_grows(make, clock):
    """ISA-18.2's chattering alarm: 3 s past the limit, 9 s back, again and again. It re-alarmed every 12 s for as long
    as it went on; now the third re-alarm names it chattering and lengthens its off-delay, so it holds."""
    engine = make(UNGROUPED)
    events = []
    for _ in range(30):  # six minutes
        events += feed(engine, clock, limit(), 3)
        events += silence(engine, clock, 9)
    assert [e.event for e in events].count("realarm") == 3
    chattering = [e for e in events if e.event == "chattering"]
    assert len(chattering) == 1 and "off-delay" in chattering[0].comment
    assert engine.get("product_pump.flow-limit").state is AlarmState.ACTIVE_UNACK  # standing, not blinking
    events += silence(engine, clock, 60)  # back inside its limit for good: it returns after the longer off-delay
    assert engine.get("product_pump.flow-limit").state is AlarmState.RTN_UNACK


def test_a_folded_consequence_that_chatters_is_counted_as_chattering(make, clock):
    """Issue 25: the chattering figure stayed 0 while a folded consequence re-alarmed: it was never rung."""
    from factory_copilot.alarms.kpi import alarm_kpis

    engine = make(SETTINGS)
    events = feed(engine, clock, limit(), 3)  # the pump's flow is low: the root
    for _ in range(10):  # the filler's tank, downstream, dips past its limit 3 s of every 12
        for i in range(12):
            events += engine.ingest(at(clock, limit()))
            if i < 3:
                events += engine.ingest(at(clock, limit("filler", "tank_level", 12.0, 12.0, 15.0)))
            clock.advance(1)
            events += engine.tick()
    tank = [e for e in events if e.alarm_id == "filler.tank_level-limit"]
    assert tank[0].alarm.parent_id == "product_pump.flow-limit" and not annunciated(tank[0].alarm)
    assert alarm_kpis(events).chattering == ["filler.tank_level-limit"]
    assert alarm_kpis(events).alarms == 1  # still: only the root was shown


def test_realarm_within_window_after_clear_is_counted_after_window_is_new(engine, clock):
    a = raise_alarm(engine, clock, limit())
    cmd(engine, "acknowledge", a.alarm_id)
    silence(engine, clock, 8)  # cleared
    assert [e.event for e in feed(engine, clock, limit(), 3)] == ["realarm"]
    cmd(engine, "acknowledge", a.alarm_id)
    silence(engine, clock, 8)
    clock.advance(120)  # well past the chatter window
    events = feed(engine, clock, limit(), 3)
    assert [(e.event, e.alarm.realarm_count, e.alarm.acked_by) for e in events] == [("raised", 0, None)]
    assert engine.get(a.alarm_id).raised_at == clock.t


# -- shelving --------------------------------------------------------------------------------------


def test_shelve_hides_alarm_and_expiry_annunciates_it_again(engine, clock):
    a = raise_alarm(engine, clock, limit())
    cmd(engine, "acknowledge", a.alarm_id)
    result, events = cmd(engine, "shelve", a.alarm_id, shelve_s=60, comment="maintenance on strainer")
    assert result.ok and events[0].event == "shelved" and not annunciated(events[0].alarm)
    assert result.alarm.shelved_until == clock.t + 60 and result.alarm.shelved_by == "op.anna"
    # still tracked while shelved
    feed(engine, clock, limit(), 30)
    assert engine.get(a.alarm_id).state.active
    events = []
    for _ in range(32):  # ticks up to shelve time + 60 s
        events += engine.ingest(at(clock, limit()))
        events += engine.tick()
        clock.advance(1)
    assert [(e.event, e.state, e.actor, e.comment) for e in events] == [
        ("unshelved", AlarmState.ACTIVE_UNACK, "system", "shelve expired")
    ]
    assert annunciated(events[0].alarm) and events[0].alarm.shelved_until is None


def test_shelved_alarm_that_returns_goes_to_normal_unannounced(engine, clock):
    a = raise_alarm(engine, clock, limit())
    cmd(engine, "shelve", a.alarm_id, shelve_s=600)
    events = silence(engine, clock, 10)
    assert [(e.event, e.state) for e in events] == [("cleared", AlarmState.NORMAL)]
    assert not annunciated(events[0].alarm)
    events = silence(engine, clock, 600)
    assert [(e.event, e.state) for e in events] == [("unshelved", AlarmState.NORMAL)]


def test_unshelve_by_operator(engine, clock):
    a = raise_alarm(engine, clock, limit())
    cmd(engine, "shelve", a.alarm_id, shelve_s=600)
    result, events = cmd(engine, "unshelve", a.alarm_id, actor="op.ben")
    assert result.ok and [(e.event, e.actor) for e in events] == [("unshelved", "op.ben")]
    assert engine.get(a.alarm_id).shelved_until is None


# -- out of service ----------------------------------------------------------------------------------


def test_out_of_service_is_not_evaluated(engine, clock):
    a = raise_alarm(engine, clock, limit())
    result, events = cmd(engine, "out_of_service", a.alarm_id, comment="flow meter replaced")
    assert result.ok and [(e.event, e.state) for e in events] == [("out_of_service", AlarmState.NORMAL)]
    assert engine.active() == []
    assert feed(engine, clock, limit(), 20) == [] and silence(engine, clock, 20) == []
    assert engine.get(a.alarm_id).out_of_service
    result, events = cmd(engine, "return_to_service", a.alarm_id)
    assert result.ok and [e.event for e in events] == ["return_to_service"]
    events = feed(engine, clock, limit(), 3)  # evaluated again, from scratch (on-delay)
    assert [e.event for e in events] == ["raised"]


# -- mode suppression --------------------------------------------------------------------------------


def test_limit_alarm_of_mode_banded_signal_suppressed_outside_running(engine, clock):
    idle_flow = limit(value=0.0, mode="idle")  # flow has an idle band: no flow is the design
    events = feed(engine, clock, idle_flow, 3)
    assert [e.event for e in events] == ["raised"] and events[0].alarm.suppressed
    assert not annunciated(events[0].alarm)
    # the line starts running while flow is still low: now it counts
    clock.advance(1)
    events = engine.ingest(at(clock, limit(value=40.0, mode="running")))
    assert [(e.event, e.state) for e in events] == [("unsuppressed", AlarmState.ACTIVE_UNACK)]
    assert annunciated(events[0].alarm)


def test_no_suppression_for_signals_without_mode_band_or_fault_alarms(make, clock):
    engine = make(UNGROUPED)
    temp = limit(asset="filler", signal="product_temperature", value=35.0, mode="changeover")
    assert not raise_alarm(engine, clock, temp).suppressed
    assert not raise_alarm(engine, clock, fault(mode="startup")).suppressed
    stuck = Anomaly(ts=0, asset="product_pump", kind="stuck", signal="flow", value=100.0, score=5, threshold=1,
                    mode="idle")
    assert not raise_alarm(engine, clock, stuck).suppressed


def test_suppressed_alarm_that_returns_needs_no_ack(engine, clock):
    raise_alarm(engine, clock, limit(value=0.0, mode="changeover"))
    events = silence(engine, clock, 10)
    assert [(e.event, e.state) for e in events] == [("cleared", AlarmState.NORMAL)]
    assert engine.active() == []


# -- floods ----------------------------------------------------------------------------------------


SIGNALS = [("product_pump", s) for s in ("flow", "speed", "suction_pressure", "discharge_pressure", "filter_dp",
                                          "motor_current", "vibration", "bearing_temperature")] + [
    ("filler", s) for s in ("fill_weight", "tank_level", "nozzle_pressure", "valve_air_pressure")]


def test_flood_groups_under_first_alarm_and_ends(make, clock):
    engine = make(AlarmSettings(on_delay_s=0, off_delay_s=0, silence_s=2.5, group_consequences=False))
    raised = []
    for asset, signal in SIGNALS[:10]:
        raised += engine.ingest(at(clock, limit(asset=asset, signal=signal)))
        clock.advance(30)
    assert engine.floods() == {} and all(e.alarm.flood_id is None for e in raised)
    first = raised[0].alarm_id
    events = engine.ingest(at(clock, limit(asset=SIGNALS[10][0], signal=SIGNALS[10][1])))  # the 11th within 10 min
    kinds = [e.event for e in events]
    assert kinds[0] == "flood_start" and events[0].alarm_id == first
    assert kinds.count("flood_grouped") == 9 and kinds[-1] == "raised"
    assert events[-1].alarm.flood_id == first
    assert engine.floods() == {"main": first}
    assert {a.flood_id for a in engine.active()} == {first}
    clock.advance(1)
    assert engine.ingest(at(clock, limit(asset=SIGNALS[11][0], signal=SIGNALS[11][1])))[-1].alarm.flood_id == first
    # ten minutes on, fewer than 5 new alarms remain in the window -> the flood ends, named by its first alarm
    events = engine.tick(clock.advance(600))
    assert [(e.event, e.alarm_id) for e in events if e.event.startswith("flood")] == [("flood_end", first)]
    assert engine.floods() == {}


def test_flood_counts_per_operator_position(clock, tmp_path):
    import yaml

    from factory_copilot.config import parse_line

    data = yaml.safe_load(SIMULATED_LINE.read_text())
    for asset in data["assets"]:
        if asset["id"] == "filler":
            asset["operator_position"] = "filling"
    engine = AlarmEngine(parse_line(data), tmp_path / "positions.db",
                         AlarmSettings(on_delay_s=0, off_delay_s=0, silence_s=2.5, group_consequences=False), clock=clock)
    try:
        pump = [s for a, s in SIGNALS if a == "product_pump"]  # 8 at position main
        filler = ["fill_weight", "tank_level", "nozzle_pressure", "valve_air_pressure", "reject_rate"]  # 5 at filling
        for signal in pump:
            engine.ingest(at(clock, limit(signal=signal)))
        for signal in filler:
            engine.ingest(at(clock, limit(asset="filler", signal=signal)))
        assert len(engine.active()) == 13 and engine.floods() == {}
        for signal in ("belt_speed", "motor_speed", "vibration"):  # 11 at main now
            engine.ingest(at(clock, limit(asset="infeed_conveyor", signal=signal)))
        assert engine.floods() == {"main": "product_pump.flow-limit"}
        assert all(a.flood_id is None for a in engine.active() if a.asset == "filler")
    finally:
        engine.close()


def test_chattering_and_shelved_alarms_do_not_make_a_flood(make, clock):
    engine = make(AlarmSettings(on_delay_s=0, off_delay_s=0, silence_s=2.5))
    for _ in range(15):  # one chattering alarm
        engine.ingest(at(clock, limit()))
        engine.tick(clock.advance(5))
    assert engine.floods() == {} and engine.get("product_pump.flow-limit").realarm_count == 14


# -- operator commands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, kw, expected",
    [
        ("acknowledge", {"alarm_id": "product_pump.nope"}, "no alarm with id 'product_pump.nope'"),
        ("shelve", {}, "shelve needs a duration"),
        ("shelve", {"shelve_s": -5}, "positive number of seconds"),
        ("shelve", {"shelve_s": 9 * 3600}, "beyond the maximum of 28800 s"),
        ("unshelve", {}, "is not shelved"),
        ("return_to_service", {}, "is in service"),
        ("reset", {}, "unknown command 'reset'"),
        ("acknowledge", {"actor": " "}, "needs an actor"),
    ],
)
def test_bad_commands_are_rejected_and_change_nothing(engine, clock, command, kw, expected):
    a = raise_alarm(engine, clock, limit())
    before, audit_before = engine.get(a.alarm_id), engine.audit()
    clock.advance(1)
    kw = {"alarm_id": a.alarm_id, "actor": "op.anna", **kw}
    result, events = engine.command(OperatorCommand(command, request_id="r-1", **kw))
    assert not result.ok and expected in result.message and result.request_id == "r-1"
    assert events == [] and engine.get(a.alarm_id) == before and engine.audit() == audit_before


def test_ack_of_acknowledged_alarm_rejected(engine, clock):
    a = raise_alarm(engine, clock, limit())
    assert cmd(engine, "acknowledge", a.alarm_id)[0].ok
    result, events = cmd(engine, "acknowledge", a.alarm_id, actor="op.ben")
    assert not result.ok and "already acknowledged (by op.anna)" in result.message and events == []
    assert engine.get(a.alarm_id).acked_by == "op.anna"


# -- audit trail -------------------------------------------------------------------------------------


def test_audit_trail_records_events_and_operator_actions(engine, clock):
    a = raise_alarm(engine, clock, limit())
    other = raise_alarm(engine, clock, fault())
    t_ack = clock.advance(5)
    cmd(engine, "acknowledge", a.alarm_id, comment="seen")
    clock.advance(5)
    cmd(engine, "shelve", a.alarm_id, actor="op.ben", shelve_s=120, comment="strainer swap")
    silence(engine, clock, 130)
    trail = [(e.event, e.actor, e.comment, e.state) for e in engine.audit(alarm_id=a.alarm_id)]
    assert trail == [
        ("raised", None, None, AlarmState.ACTIVE_UNACK),
        ("acknowledged", "op.anna", "seen", AlarmState.ACTIVE_ACK),
        ("shelved", "op.ben", "strainer swap", AlarmState.ACTIVE_ACK),
        ("cleared", None, "returned to normal while shelved", AlarmState.NORMAL),
        ("unshelved", "system", "shelve expired", AlarmState.NORMAL),
    ]
    acked = engine.audit(alarm_id=a.alarm_id)[1]
    assert acked.ts == t_ack and acked.alarm.acked_at == t_ack
    assert [e.alarm_id for e in engine.audit()][:2] == [a.alarm_id, other.alarm_id]
    assert [e.event for e in engine.audit(since=t_ack)][:2] == ["acknowledged", "shelved"]
    assert engine.audit(limit=1)[0].event == "unshelved"


# -- restart -----------------------------------------------------------------------------------------


def test_restart_resumes_same_alarms(make, clock, tmp_path):
    path = tmp_path / "restart.db"
    engine = make(UNGROUPED, path=path)
    acked = raise_alarm(engine, clock, limit())
    cmd(engine, "acknowledge", acked.alarm_id)
    chatter = raise_alarm(engine, clock, limit(asset="filler", signal="tank_level", value=10))
    silence(engine, clock, 8)  # both return; flow-limit clears (acked), tank level waits for ack
    feed(engine, clock, limit(asset="filler", signal="tank_level", value=10), 3)  # realarm
    shelved = raise_alarm(engine, clock, fault())
    cmd(engine, "shelve", shelved.alarm_id, shelve_s=300)
    oos = raise_alarm(engine, clock, limit(signal="vibration", value=9))
    cmd(engine, "out_of_service", oos.alarm_id)
    before = engine.alarms()
    assert engine.get(chatter.alarm_id).realarm_count == 1
    engine.close()

    clock.advance(1)
    again = make(UNGROUPED, path=path)
    assert again.alarms() == before
    assert [a.alarm_id for a in again.active()] == [shelved.alarm_id, chatter.alarm_id]
    # the same condition continues the same alarm, no duplicate
    assert feed(again, clock, limit(asset="filler", signal="tank_level", value=10), 5) == []
    assert len(again.alarms()) == 4
    # shelving expires on schedule after the restart
    events = silence(again, clock, 300)
    assert ("unshelved", shelved.alarm_id) in [(e.event, e.alarm_id) for e in events]
    assert again.get(oos.alarm_id).out_of_service
    trail = [e.event for e in again.audit(alarm_id=chatter.alarm_id)]
    assert trail == ["raised", "returned", "realarm", "returned"]  # the trail carries on across the restart


def test_restart_keeps_flood(make, clock, tmp_path):
    path = tmp_path / "flood.db"
    settings = AlarmSettings(on_delay_s=0, off_delay_s=0, silence_s=2.5, group_consequences=False)
    engine = make(settings, path)
    for asset, signal in SIGNALS[:11]:
        engine.ingest(at(clock, limit(asset=asset, signal=signal)))
        clock.advance(10)
    flood = engine.floods()
    assert flood
    engine.close()
    again = make(settings, path)
    assert again.floods() == flood
    events = again.ingest(at(clock, limit(asset=SIGNALS[11][0], signal=SIGNALS[11][1])))
    assert events[-1].alarm.flood_id == flood["main"]


# -- design: priority, ids, text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "anomaly, priority",
    [
        # severe process conditions are urgent ('immediate'): their priority is their consequence
        (fault("bearing_wear", score=300), Priority.HIGH),  # catalogue
        (fault("motor_overload", asset="infeed_conveyor", score=300), Priority.CRITICAL),
        (fault("sensor_drift", asset="heat_tunnel", score=300), Priority.LOW),
        (fault("unknown", asset="filler", score=300), Priority.MEDIUM),  # no fault type -> asset criticality
        (limit(asset="infeed_conveyor", signal="motor_current", score=6), Priority.HIGH),  # signal priority
        (limit(asset="infeed_conveyor", signal="vibration", score=6), Priority.MEDIUM),  # asset criticality
        (limit(signal="flow", score=6), Priority.HIGH),  # asset product_pump is critical: high
        # instrument faults are one step below their consequence, whatever the reading
        (Anomaly(0, "heat_tunnel", "stuck", 5, 1, signal="zone1_temperature", value=180), Priority.MEDIUM),
        (Anomaly(0, "filler", "quality", 5, 1, signal="fill_weight"), Priority.LOW),
        (Anomaly(0, "line", "range", 5, 1, signal="speed_setpoint", value=900), Priority.LOW),  # low stays low
        # not severe and no trend known yet ('prompt'): one step below the consequence
        (fault("bearing_wear"), Priority.MEDIUM),
        (fault("motor_overload", asset="infeed_conveyor"), Priority.HIGH),
        (limit(asset="infeed_conveyor", signal="vibration", score=1.1), Priority.LOW),
    ],
)
def test_priority_rule(engine, clock, anomaly, priority):
    assert raise_alarm(engine, clock, anomaly).priority is priority


def test_alarm_ids_are_topic_safe_and_distinct():
    a = alarm_id("pump", "flow/in+#:limit")
    b = alarm_id("pump", "flow in++:limit", taken={a})
    assert a == "pump.flow_in_-limit" and not set("/+# ") & set(a + b) and a != b
    assert alarm_id("pump", "fault:bearing_wear") == "pump.fault-bearing_wear"


def test_alarm_text_reads_like_an_operator_alarm(make, clock):
    engine = make(UNGROUPED)
    a = raise_alarm(engine, clock, fault(signal="vibration", value=5.2))
    assert a.message == "Product transfer pump: likely bearing wear, slight — vibration 5.2 mm/s (normal 1.0–3.5 mm/s)"
    # as the detect station reports a limit: the value, and the limit it crossed
    b = raise_alarm(engine, clock, limit(value=42, score=42, threshold=60))
    assert b.message == "Product transfer pump: flow low, moderate — 42.0 L/min (normal 95–125 L/min, limits 60–150 L/min)"
    c = raise_alarm(engine, clock, fault("air_leak", asset="air_compressor", p=0.6, score=150,
                                         contributions={"filler.valve_air_pressure": 0.7, "air_compressor.air_flow": 0.3},
                                         values={"filler.valve_air_pressure": 5.1, "air_compressor.air_flow": 97.0}))
    # the alarm is the compressor's: its text names the compressor's own signal, with the value it reads
    assert c.message == ("Compressed-air compressor: likely air leak, moderate — "
                         "mostly air flow at 97.0 Nm3/h (normal 55–90 Nm3/h)")
    d = raise_alarm(engine, clock, Anomaly(0, "filler", "stuck", 5, 1, signal="fill_weight", value=501))
    assert d.message == "Rotary filler: fill weight sensor stuck at 501 g"
    e = raise_alarm(engine, clock, Anomaly(0, "product_pump", "rate", 58.4, 45, signal="flow", value=72))
    assert e.message == ("Product transfer pump: flow changing too fast, slight — 58.4 L/min per second "
                         "(credible at most 45.0 L/min per second), now 72.0 L/min")
    f = raise_alarm(engine, clock, fault("pump_cavitation", asset="filler", score=400,
                                         contributions={"filler.tank_level": 1.0}))
    # an anomaly without the signals' values (an older record) still names the band, with its unit
    assert f.message == ("Rotary filler: unusual behaviour, severe, likely from pump cavitation upstream "
                         "(Product transfer pump) — mostly tank level (normal 45–75 %)")
    assert "score" not in " ".join(x.message for x in (a, b, c, d, e, f))


def test_a_fault_alarm_names_a_signal_of_its_own_asset_the_telltale_of_the_named_fault(line):
    """Issue 25: the tunnel's sensor-drift alarm read "mostly Compressed-air compressor discharge temperature": the
    detector's top contributor across the whole line, on a machine that does not feed the tunnel."""
    from factory_copilot.alarms.text import alarm_text
    from factory_copilot.catalogue import faults_of

    drift = Anomaly(ts=0, asset="heat_tunnel", kind="multivariate", score=40.0, threshold=1.0, fault_type="sensor_drift",
                    fault_probability=0.8, contributions={"air_compressor.discharge_temperature": 0.34,
                                                          "heat_tunnel.zone1_temperature": 0.3,
                                                          "heat_tunnel.heater_duty": 0.2,
                                                          "heat_tunnel.zone2_temperature": 0.02},
                    values={"air_compressor.discharge_temperature": 78.0, "heat_tunnel.zone1_temperature": 171.0,
                            "heat_tunnel.heater_duty": 38.0, "heat_tunnel.zone2_temperature": 214.3})
    text = alarm_text(line, faults_of(line), drift, "severe")
    # the drifting sensor: the catalogue's telltale of the fault the classifier named, with what it reads now
    assert text == "Shrink heat tunnel: likely sensor drift, severe — mostly zone2 temperature at 214 degC (normal 180–195 degC)"
    # nothing named: the tunnel's own largest contributor, never another asset's
    unknown = dataclasses.replace(drift, fault_type="unknown", fault_probability=0.0)
    assert alarm_text(line, faults_of(line), unknown, "severe") == (
        "Shrink heat tunnel: unusual behaviour, severe — mostly zone1 temperature at 171 degC (normal 175–190 degC)")


def test_bad_anomaly_ignored_unknown_asset_still_alarmed(engine, clock, caplog):
    assert feed(engine, clock, limit(score=float("nan")), 5) == []
    assert "not a finite number" in caplog.text
    a = raise_alarm(engine, clock, limit(asset="palletiser", signal="torque", value=3))
    assert a.priority is Priority.MEDIUM and a.message.startswith("palletiser: torque")
    assert "palletiser" in caplog.text


# -- the alarms sub-command --------------------------------------------------------------------------


def test_cli_lists_alarms_and_audit(make, clock, tmp_path, capsys):
    from factory_copilot.cli import main

    path = tmp_path / "cli.db"
    engine = make(path=path)
    a = raise_alarm(engine, clock, fault(signal="vibration", value=5.2, score=300))  # severe: high now
    cmd(engine, "acknowledge", a.alarm_id, comment="on my way")
    assert main(["alarms", "--db", str(path), "list"]) == 0
    out = capsys.readouterr().out
    assert "HIGH" in out and "active_acknowledged" in out and "likely bearing wear" in out and "1 alarm(s)" in out
    assert main(["alarms", "--db", str(path), "audit", "--alarm", a.alarm_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "acknowledged" in lines[1] and "by op.anna — on my way" in lines[1]
    assert main(["alarms", "--db", str(tmp_path / "missing.db"), "list"]) == 2
    assert "no alarm engine file" in capsys.readouterr().err


def test_alarms_list_finds_the_lines_state_and_says_which_file_it_read(line, clock, tmp_path, monkeypatch, capsys):
    """Issue 25: `alarms list` read var/alarms.db while the demo writes var/demo/alarms.db (and a line's service
    its state folder): "no alarm engine file here" where the alarms were."""
    import yaml

    from factory_copilot.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACTORY_COPILOT_ALARMS_DB", raising=False)
    monkeypatch.delenv("FACTORY_COPILOT_DEMO_DIR", raising=False)
    demo = AlarmEngine(line, tmp_path / "var" / "demo" / "alarms.db", SETTINGS, clock=clock)  # where the demo writes
    raise_alarm(demo, clock, limit())
    demo.close()
    assert main(["alarms", "list"]) == 0
    got = capsys.readouterr()
    assert "product_pump.flow-limit" in got.out and "1 alarm(s)" in got.out
    assert "var/demo/alarms.db" in got.err and "--config" in got.err  # which file, and how to read another
    # a line file: its own state folder (relative to the line file), wherever the command runs
    data = line.model_dump(mode="json")
    data["service"] = {**data["service"], "state_dir": "plant-state"}
    (tmp_path / "lines").mkdir()
    path = tmp_path / "lines" / "line.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    own = AlarmEngine(line, tmp_path / "lines" / "plant-state" / "alarms.db", SETTINGS, clock=clock)
    raise_alarm(own, clock, fault(signal="vibration", value=5.2))
    own.close()
    assert main(["alarms", "--config", str(path), "list"]) == 0
    got = capsys.readouterr()
    assert "product_pump.fault" in got.out and "flow-limit" not in got.out and "plant-state/alarms.db" in got.err
    assert main(["alarms", "--config", str(path), "audit"]) == 0 and "raised" in capsys.readouterr().out


def test_alarms_go_on_when_the_file_fails_and_catch_up(engine, clock, monkeypatch, caplog):
    import sqlite3

    real_write = engine.journal.write

    def full_disk(*args, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(engine.journal, "write", full_disk)
    a = raise_alarm(engine, clock, limit())  # the operator still gets the alarm
    result, events = cmd(engine, "acknowledge", a.alarm_id)
    assert result.ok and [e.event for e in events] == ["acknowledged"]
    assert "cannot store alarm state" in caplog.text and engine.audit() == []
    monkeypatch.setattr(engine.journal, "write", real_write)
    engine.tick()
    assert [e.event for e in engine.audit()] == ["raised", "acknowledged"]
    assert engine.journal.load_alarms()[0].alarm.state is AlarmState.ACTIVE_ACK
