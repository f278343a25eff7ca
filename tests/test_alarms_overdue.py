"""Overdue alarms: the line file's ``escalation`` tells a group of an alarm nobody acknowledges, once."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from factory_copilot.alarms import AlarmEngine, AlarmSettings
from factory_copilot.config import SIMULATED_LINE, LineConfigError, load_line, parse_line
from factory_copilot.records import Anomaly, OperatorCommand, Priority

T0 = 1_800_000_000.0
SETTINGS = AlarmSettings(on_delay_s=2.0, off_delay_s=5.0, deadband=0.1, silence_s=2.5)
RULES = [{"priority": "high", "after_s": 120, "notify": "supervisors"},
         {"priority": "critical", "after_s": 60, "notify": "shift-lead"},
         {"priority": "high", "after_s": 240, "notify": "plant-manager"}]


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def line():
    return parse_line({**yaml.safe_load(SIMULATED_LINE.read_text()), "escalation": RULES}, SIMULATED_LINE).with_path(SIMULATED_LINE)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make(line, clock, tmp_path):
    engines = []

    def _make(path=None, on_line=None):
        e = AlarmEngine(on_line or line, path or tmp_path / "alarms.db", SETTINGS, clock=clock)
        engines.append(e)
        return e

    yield _make
    for e in engines:
        e.close()


HIGH = Anomaly(ts=0, asset="infeed_conveyor", kind="multivariate", score=20.0, threshold=10.0,
               fault_type="motor_overload", fault_probability=0.87, mode="running")
LOW = Anomaly(ts=0, asset="infeed_conveyor", kind="limit", signal="vibration", value=9.0, score=1.1, threshold=1.0,
              mode="running")


def run(engine, clock, anomaly, seconds):
    """The detect station's stream (one anomaly a second) and the station's tick, for ``seconds``."""
    events = []
    for _ in range(int(seconds)):
        clock.t += 1.0
        events += engine.ingest(dataclasses.replace(anomaly, ts=clock.t))
        events += engine.tick()
    return events


def overdue(events):
    return [e for e in events if e.event == "overdue"]


def raised(engine, clock, anomaly):
    events = run(engine, clock, anomaly, 3)
    (alarm,) = [e.alarm for e in events if e.event == "raised"]
    return alarm, clock.t


def test_an_unacknowledged_high_alarm_is_overdue_once_at_its_time_and_not_again(make, clock):
    engine = make()
    alarm, rang = raised(engine, clock, HIGH)
    assert alarm.priority is Priority.HIGH
    assert overdue(run(engine, clock, HIGH, 119)) == []  # 119 s after it rang
    events = overdue(run(engine, clock, HIGH, 2))
    assert [(e.alarm_id, e.actor) for e in events] == [(alarm.alarm_id, "system")]
    assert events[0].ts == pytest.approx(rang + 120, abs=1.0)
    assert "notify supervisors" in events[0].comment and events[0].alarm.overdue == ["supervisors"]
    assert overdue(run(engine, clock, HIGH, 100)) == []  # once, not again
    later = overdue(run(engine, clock, HIGH, 30))  # 240 s: the next group on the list
    assert [e.alarm.overdue for e in later] == [["supervisors", "plant-manager"]]
    assert later[0].ts == pytest.approx(rang + 240, abs=1.0)
    assert overdue(run(engine, clock, HIGH, 40)) == []
    trail = [e.event for e in engine.audit(alarm_id=alarm.alarm_id)]
    assert trail.count("overdue") == 2


def test_an_acknowledgement_before_its_time_cancels_it(make, clock):
    engine = make()
    alarm, _ = raised(engine, clock, HIGH)
    run(engine, clock, HIGH, 100)
    result, _ = engine.command(OperatorCommand("acknowledge", alarm.alarm_id, "op.anna"))
    assert result.ok, result
    assert overdue(run(engine, clock, HIGH, 700)) == []
    assert engine.get(alarm.alarm_id).unacked_since is None


def test_a_lower_priority_and_a_shelved_alarm_are_never_overdue_and_unshelving_starts_the_wait_anew(make, clock):
    engine = make()
    low, _ = raised(engine, clock, LOW)
    assert low.priority.value > Priority.HIGH.value
    high, _ = raised(engine, clock, HIGH)
    result, _ = engine.command(OperatorCommand("shelve", high.alarm_id, "op.anna", shelve_s=100))
    assert result.ok, result
    events = run(engine, clock, HIGH, 101)
    (back,) = [e.ts for e in events if e.alarm_id == high.alarm_id and e.event == "unshelved"]
    assert overdue(events) == []
    events = run(engine, clock, HIGH, 130)  # the wait counts from when it rings again
    assert [(e.alarm_id, e.ts) for e in overdue(events)] == [(high.alarm_id, pytest.approx(back + 120, abs=1.0))]


def test_a_restarted_engine_remembers_who_was_told(make, clock, tmp_path):
    path = tmp_path / "restart.db"
    engine = make(path=path)
    alarm, _ = raised(engine, clock, HIGH)
    assert len(overdue(run(engine, clock, HIGH, 130))) == 1
    engine.close()
    again = make(path=path)
    assert again.get(alarm.alarm_id).overdue == ["supervisors"]
    assert overdue(run(again, clock, HIGH, 100)) == []


def test_a_critical_alarm_hears_every_rule_of_its_priority_and_below_each_once(line):
    from factory_copilot.alarms.engine import overdue_rules
    assert [r.notify for r in overdue_rules(line, Priority.CRITICAL)] == ["shift-lead", "supervisors", "plant-manager"]
    assert [r.notify for r in overdue_rules(line, Priority.MEDIUM)] == []


@pytest.mark.parametrize("rule, words", [
    ({"priority": "urgent", "after_s": 60, "notify": "supervisors"}, "unknown priority 'urgent'"),
    ({"priority": "high", "after_s": 0, "notify": "supervisors"}, "after_s"),
    ({"priority": "high", "after_s": 60, "notify": "night/shift"}, "not a group name"),
])
def test_a_bad_escalation_rule_is_refused_naming_the_field(rule, words, tmp_path):
    text = SIMULATED_LINE.read_text() + "\nescalation:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in rule.items()) + "\n"
    path = tmp_path / "line.yaml"
    path.write_text(text)
    with pytest.raises(LineConfigError) as err:
        load_line(path)
    assert "escalation" in str(err.value) and words in str(err.value)


def test_the_overdue_event_goes_out_as_event_1_naming_the_group_and_the_retained_state_keeps_who_was_told(make, clock):
    from factory_copilot.publish import payloads
    engine = make()
    raised(engine, clock, HIGH)
    (ev,) = overdue(run(engine, clock, HIGH, 125))
    body = payloads.event(ev, "demo-plant", "packaging-1")
    assert payloads.problems(body, payloads.EVENT) == []
    assert body["notify"] == "supervisors" and body["actor"] == "system"
    state = payloads.alarm_state(ev.alarm, "demo-plant", "packaging-1")
    assert payloads.problems(state, payloads.ALARM) == [] and state["overdue"] == ["supervisors"]
    assert payloads.problems({**state, "overdue": "supervisors"}, payloads.ALARM) != []  # the schema does check it


async def test_a_replayed_fault_nobody_acknowledges_goes_out_overdue_once_per_alarm_at_its_time(broker, tmp_path, sim_models):
    """The whole service on a recorded pump fault (50x): the pager's contract on MQTT, in data time."""
    import asyncio
    import json
    import time

    from factory_copilot.config import MqttConnection, ServicePaths
    from factory_copilot.plumbing.broker import free_port
    from factory_copilot.publish.topics import Topics
    from factory_copilot.service import LineService, _stop_after_replay
    from simulators import FaultScenario, ModeSchedule, simulate_frame
    from tests.support.mqtt import Listener

    line = parse_line({**yaml.safe_load(SIMULATED_LINE.read_text()),
                       "escalation": [{"priority": "low", "after_s": 60, "notify": "supervisors"}]},
                      SIMULATED_LINE).with_path(SIMULATED_LINE)
    line = line.model_copy(update={"mqtt": MqttConnection(host=broker.host, port=broker.port, protocol=broker.protocol)})
    frame = simulate_frame(line, seed=21, duration_s=480, schedule=ModeSchedule.running(startup_s=60),
                           scenarios=[FaultScenario("pump_cavitation", start_s=240, severity=2.0, ramp_s=20)])
    frame["ts"] = time.time() - 86_400 + frame.index.to_numpy() * line.sampling_interval_s
    recording = tmp_path / "pump.csv"
    frame.to_csv(recording, index=False)
    topics = Topics(site=line.site, line=line.line)
    listener = await Listener(broker, [topics.events(), topics.status()]).ready()
    try:
        service = LineService(line, sim_models, ServicePaths(tmp_path / "replay"), replay=recording, speed=50.0,
                              health_port=free_port())
        stop = asyncio.Event()
        summary = asyncio.create_task(_stop_after_replay(service, service.collector.finished, stop, settle_s=20))
        await asyncio.wait_for(service.run(stop), 120)
        await summary
        # the service's last word is its retained 'offline'; the broker keeps one client's messages in order
        await listener.until(lambda m: m.topic == topics.status() and json.loads(m.payload)["state"] == "offline", 30)
    finally:
        listener.close()
    events = [m.body for m in listener.seen if m.topic == topics.events()]
    rang = {e["alarm_id"]: e["ts"] for e in events if e["event"] == "raised" and not e["alarm"]["suppressed"]}
    told = [e for e in events if e["event"] == "overdue"]
    assert any(a.startswith("product_pump.") for a in rang), "the fault must ring"
    assert told, "nobody acknowledged a ringing alarm for minutes: someone must be told"
    assert len({e["alarm_id"] for e in told}) == len(told)  # once per alarm, not again
    for e in told:
        assert e["notify"] == "supervisors" and e["actor"] == "system" and not e["alarm"]["suppressed"]
        assert e["ts"] - e["alarm"]["unacked_since"] == pytest.approx(60, abs=1.5)
        assert e["alarm"]["state"] == "active_unacknowledged"
