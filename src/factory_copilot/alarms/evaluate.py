"""Measuring the alarm engine on the simulated line: what an operator would be shown for every fault and in normal running.

Each standard fault scenario is simulated with the fault repaired after it ran for
``FAULT_S`` and the line running on for ``AFTER_S`` (so standing alarms after the
fault is cleared show), replayed row by row through the detect station and the alarm
engine exactly as live, on a clock that follows the data (far faster than real time).
An operator acknowledges whatever rings ``ack_after_s`` later. The EEMUA 191 KPIs
(``kpi.py``) of each run are reported beside the alarms it presented.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from factory_copilot.alarms.engine import AlarmEngine, AlarmSettings, annunciated
from factory_copilot.alarms.kpi import TARGET_PEAK_10MIN, TARGET_PER_HOUR, alarm_kpis
from factory_copilot.catalogue import Fault
from factory_copilot.config import LineConfig
from factory_copilot.detect.evaluate import replay
from factory_copilot.detect.persist import TrainedDetector
from factory_copilot.detect.station import DetectStation
from factory_copilot.records import AlarmEvent, AlarmState, CommandKind, OperatorCommand

FAULT_S = 1200.0  # the fault grows and stands for 20 minutes, then it is repaired ...
AFTER_S = 2400.0  # ... and the line runs on for 40 minutes
ACK_AFTER_S = 120.0
OPERATOR = "evaluation-operator"


class DataClock:
    """The engine's clock in a replay: the time of the row being evaluated."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t



def replay_alarms(
    models: TrainedDetector,
    line: LineConfig,
    frame: pd.DataFrame,
    settings: AlarmSettings | None = None,
    faults: Mapping[str, Fault] | None = None,
    ack_after_s: float | None = ACK_AFTER_S,
) -> list[AlarmEvent]:
    """Every alarm event of a simulated frame replayed through the detect station and the alarm engine as live."""
    station = DetectStation(line, detector=models.detector, classifier=models.classifier, checks=models.checks(line))
    rows = replay(station, frame)
    ts = frame.index.to_numpy(dtype=float)
    clock = DataClock(float(ts[0]) if len(ts) else 0.0)
    engine = AlarmEngine(line, ":memory:", settings, clock=clock, faults=faults)
    events: list[AlarmEvent] = []
    due: dict[str, float] = {}  # alarm id -> when the operator acknowledges it
    try:
        for t, anomalies in zip(ts, rows):
            clock.t = float(t)
            new = []
            for anomaly in anomalies:
                new += engine.ingest(anomaly)
            new += engine.tick()
            if ack_after_s is not None:
                for ev in new:
                    if not ev.state.acknowledged and annunciated(ev.alarm):
                        due.setdefault(ev.alarm_id, clock.t + ack_after_s)
                    else:
                        due.pop(ev.alarm_id, None)
                for alarm_id, when in list(due.items()):
                    if when <= clock.t:
                        del due[alarm_id]
                        result, acked = engine.command(OperatorCommand(CommandKind.ACKNOWLEDGE.value, alarm_id, OPERATOR))
                        new += acked
            events += new
    finally:
        engine.close()
    return events


def summarise(name: str, fault: str, events: list[AlarmEvent], start: float, end: float) -> dict[str, Any]:
    """The KPIs of one run, and what the operator was shown."""
    kpis = alarm_kpis(events, start, end)
    shown = [e for e in events if e.event in ("raised", "realarm", "ungrouped") and annunciated(e.alarm)
             and e.state is AlarmState.ACTIVE_UNACK]
    worst = min((e.alarm.priority for e in events if annunciated(e.alarm) and e.state.active), default=None)
    return {
        "name": name,
        "fault": fault,
        **kpis.to_dict(),
        "shown": [f"{e.alarm_id}" for e in shown],
        "first": shown[0].alarm.message if shown else None,
        "worst_priority": worst.name.lower() if worst else None,
        "escalations": sum(e.event == "escalated" and annunciated(e.alarm) for e in events),
    }



def kpi_table(res: dict[str, Any]) -> str:
    """The alarm KPIs as a table: one row per run, then the totals and EEMUA's targets."""
    rows = [f"{'alarms':26s} {'shown':>5s} {'per h':>6s} {'peak10':>6s} {'flood':>6s} {'standing':>8s} "
            f"{'chatter':>7s} {'folded':>6s} {'worst':>8s}  first alarm shown"]
    for r in res["scenarios"]:
        rows.append(
            f"{r['name']:26s} {r['alarms']:5d} {r['per_hour']:6.1f} {r['peak_10min']:6d} {r['flood_share']:6.1%} "
            f"{len(r['standing']):8d} {len(r['chattering']):7d} {r['folded']:6d} {str(r['worst_priority']):>8s}  "
            f"{r['first'] or '-'}"
        )
    normal = [r for r in res["scenarios"] if r["fault"] == "normal"]
    rows.append(
        f"fault scenarios: {res['fault_alarms_per_hour']:.1f} alarms per hour, at most {res['worst_peak_10min']} in 10 "
        f"minutes, {res['standing_after_clear']} standing after the fault was cleared; "
        + "; ".join(f"{r['hours']:.0f} h normal running: {r['alarms']} alarms ({r['per_hour']:.2f} per hour)"
                    for r in normal)
        + f"; EEMUA 191 manageable (<= {TARGET_PER_HOUR:g}/h, <= {TARGET_PEAK_10MIN} per 10 min, none standing): "
        + ("yes" if res["manageable"] else "NO")
    )
    return "\n".join(rows)
