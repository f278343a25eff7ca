"""A recorded day of the simulated line with three faults, replayed through detect and the alarm engine as live.

The engine writes its journal (the audit trail) and the store gets what the service's store station writes:
every alarm event, the copilot's runbook diagnosis of each raised alarm, operators' verdicts and the trends.
Operators act on the data's clock: whatever rings is acknowledged two minutes later by ann; sam takes an
alarm out of service and shelves another across the shift change; ann gives two verdicts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

from factory_copilot.alarms.engine import AlarmEngine, annunciated
from factory_copilot.alarms.evaluate import DataClock
from factory_copilot.config import SIMULATED_LINE, LineConfig, ServicePaths, Shift, load_line
from factory_copilot.copilot.station import Copilot
from factory_copilot.detect.evaluate import replay
from factory_copilot.detect.station import DetectStation
from factory_copilot.records import AlarmEvent, Feedback, OperatorCommand, Reading
from factory_copilot.store import Store
from simulators import FaultScenario, ModeSchedule, simulate_frame

ZONE = "Europe/Berlin"
DAY = "2026-12-03"
SHIFTS = [{"name": "early", "start": "06:00"}, {"name": "late", "start": "14:00"}, {"name": "night", "start": "22:00"}]


def local(hhmm: str) -> float:
    h, m = map(int, hhmm.split(":"))
    d = dt.date.fromisoformat(DAY)
    return dt.datetime(d.year, d.month, d.day, h, m, tzinfo=zoneinfo.ZoneInfo(ZONE)).timestamp()


def shift_line() -> LineConfig:
    """The simulated line with the plant's shifts, in its time zone."""
    line = load_line(SIMULATED_LINE)
    return line.model_copy(update={"timezone": ZONE, "shifts": [Shift(**s) for s in SHIFTS]}).with_path(line.path)


@dataclass
class RecordedDay:
    line: LineConfig
    paths: ServicePaths
    start: float
    events: list[AlarmEvent] = field(default_factory=list)
    shelved: str | None = None
    out_of_service: str | None = None
    confirmed: str | None = None
    false_alarm: str | None = None


def record_day(models, state_dir: Path, hours: float = 24.0, line: LineConfig | None = None) -> RecordedDay:
    line = line or shift_line()
    start = local("00:00")
    faults = [FaultScenario("pump_cavitation", start_s=local("07:10") - start, end_s=local("07:30") - start),
              FaultScenario("belt_slip", start_s=local("09:40") - start, end_s=local("10:00") - start),
              FaultScenario("heater_degradation", start_s=local("12:20") - start)]
    frame = simulate_frame(line, seed=21, duration_s=hours * 3600, start_ts=start, scenarios=faults,
                           schedule=ModeSchedule.running(startup_s=600))
    station = DetectStation(line, detector=models.detector, classifier=models.classifier, checks=models.checks(line))
    rows = replay(station, frame)
    paths = ServicePaths(state_dir)
    clock = DataClock(start)
    engine = AlarmEngine(line, paths.alarms, clock=clock)
    store = Store(paths.store)
    copilot = Copilot(line)
    day = RecordedDay(line, paths, start)
    due: dict[str, float] = {}
    plan = {local("08:00"): "out_of_service", local("09:00"): "confirm", local("11:00"): "false_alarm",
            local("13:30"): "shelve"}
    ts = frame.index.to_numpy(dtype=float)
    keys = [k for k in line.signal_keys(include_mode=True) if k in frame.columns]
    values = frame[keys].to_numpy(dtype=float)
    readings: list[Reading] = []
    try:
        for i, (t, anomalies) in enumerate(zip(ts, rows)):
            clock.t = float(t)
            new = []
            for anomaly in anomalies:
                new += engine.ingest(anomaly)
            new += engine.tick()
            for ev in new:
                if not ev.state.acknowledged and annunciated(ev.alarm):
                    due.setdefault(ev.alarm_id, clock.t + 120)
                else:
                    due.pop(ev.alarm_id, None)
            for alarm_id, when in list(due.items()):
                if when <= clock.t:
                    del due[alarm_id]
                    new += engine.command(OperatorCommand("acknowledge", alarm_id, "ann", ts=clock.t))[1]
            for when in [w for w in plan if w <= clock.t]:
                new += _act(day, engine, store, plan.pop(when), clock.t)
            for ev in new:
                if ev.event == "raised":
                    store.add_diagnosis(dataclasses.replace(copilot.explain_now(ev.alarm), created_at=ev.ts))
            store.add_alarm_events(new)
            day.events += new
            if i % 5 == 0:  # what the store's trend buckets need: a sample per bucket
                readings += [Reading(float(t), *k.split(".", 1), float(v)) for k, v in zip(keys, values[i]) if v == v]
            if len(readings) > 50_000:
                store.add_readings(readings)
                readings = []
        store.add_readings(readings)
    finally:
        engine.close()
        store.close()
    return day


def _fault_alarm(engine: AlarmEngine, asset: str) -> str | None:
    return next((a.alarm_id for a in engine.alarms() if a.asset == asset and a.condition == "fault"), None)


def _act(day: RecordedDay, engine: AlarmEngine, store: Store, what: str, now: float) -> list[AlarmEvent]:
    """sam's and ann's planned actions on the alarms the faults raised."""
    if what == "out_of_service":
        day.out_of_service = _fault_alarm(engine, "product_pump")
        assert day.out_of_service, [a.alarm_id for a in engine.alarms()]
        return engine.command(OperatorCommand("out_of_service", day.out_of_service, "sam", "pump swap", ts=now))[1]
    if what == "confirm":
        day.confirmed = day.out_of_service
        store.add_feedback(Feedback(day.confirmed, "confirmed", actual_cause="pump_cavitation",
                                    fix="cleared the suction strainer", actor="ann", ts=now))
        return []
    if what == "false_alarm":
        day.false_alarm = min((a for a in engine.alarms() if a.raised_at >= local("09:40")),
                              key=lambda a: a.raised_at).alarm_id  # the belt slip's first alarm
        store.add_feedback(Feedback(day.false_alarm, "false_alarm", actor="ann", ts=now))
        return []
    day.shelved = next(a.alarm_id for a in engine.active() if a.alarm_id != day.out_of_service)
    return engine.command(OperatorCommand("shelve", day.shelved, "sam", "heater element on order", shelve_s=4 * 3600,
                                          ts=now))[1]
