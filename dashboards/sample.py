"""A hand-made half hour of the simulated packaging line in a store file: normal running after a
changeover, a pump cavitation episode with its alarm, diagnosis and conversation, a heat-tunnel
alarm and a returned compressor alarm. For the dashboard's tests, its screenshot and a demo
without the line running:

    .venv/bin/python -m dashboards.sample --db /tmp/demo.db
"""

from __future__ import annotations

import argparse
import math
import random
import time

from factory_copilot.config import SIMULATED_LINE, LineConfig, load_line
from factory_copilot.records import (
    Alarm,
    AlarmEvent,
    AlarmState,
    Anomaly,
    Cause,
    Diagnosis,
    Evidence,
    Priority,
    Reading,
    Step,
    Turn,
)
from factory_copilot.store import Store

# ids and conditions as the alarm engine makes them (alarms/design.py)
CAVITATION_ID = "product_pump.fault"
TUNNEL_ID = "heat_tunnel.zone1_temperature-limit"
COMPRESSOR_ID = "air_compressor.header_pressure-limit"
# what the cavitation explains, folded under it (recorded, not rung)
FLOW_ID = "product_pump.flow-limit"
TANK_ID = "filler.tank_level-limit"

# how each cavitation signal moves at full severity (fraction of its normal band width)
_CAVITATION = {
    "suction_pressure": -1.6,
    "flow": -1.2,
    "discharge_pressure": -1.0,
    "vibration": 1.5,
}


def seed(store: Store, line: LineConfig | None = None, now: float | None = None, minutes: int = 30,
         rng_seed: int = 7) -> dict[str, float]:
    """Write the episode ending at ``now``; returns the times of its landmarks."""
    line = line or load_line(SIMULATED_LINE)
    now = time.time() if now is None else now
    rng = random.Random(rng_seed)
    start = now - minutes * 60
    changeover_end = start + 4 * 60
    onset = now - 9 * 60
    raised = onset + 100
    tunnel_at = now - 4 * 60
    readings = []
    for k in range(minutes * 60):
        ts = start + k
        mode = "changeover" if ts < changeover_end else "running"
        severity = min(1.0, max(0.0, (ts - onset) / 240))
        for asset in line.assets:
            for sig in asset.signals:
                lo, hi = sig.normal_for(mode)
                centre, width = (lo + hi) / 2, max(hi - lo, 1e-6)
                value = centre + width * 0.12 * (math.sin(k / 37 + len(sig.name)) + rng.gauss(0, 0.6))
                if asset.id == "line" and sig.name == "mode":
                    value = float(line.modes.code_of(mode))
                if asset.id == "product_pump" and sig.name in _CAVITATION and mode == "running":
                    value += width * _CAVITATION[sig.name] * severity * (1 + rng.gauss(0, 0.15))
                if asset.id == "heat_tunnel" and sig.name == "zone1_temperature" and ts > tunnel_at - 60:
                    value += min(1.0, (ts - tunnel_at + 60) / 60) * width * 0.9
                readings.append(Reading(ts, asset.id, sig.name, round(value, 4), source="sample"))
    for i in range(0, len(readings), 20_000):
        store.add_readings(readings[i:i + 20_000])

    contributions = {"product_pump.suction_pressure": 0.41, "product_pump.flow": 0.27,
                     "product_pump.vibration": 0.19, "product_pump.discharge_pressure": 0.13}
    anomalies = [
        Anomaly(ts=t, asset="product_pump", kind="multivariate", score=4.0 + (t - onset) / 60, threshold=3.5,
                contributions=contributions, fault_type="pump_cavitation", fault_probability=0.86,
                message="suction pressure and flow falling together")
        for t in range(int(onset + 60), int(now), 5)
    ]
    tunnel_anomaly = Anomaly(ts=tunnel_at, asset="heat_tunnel", kind="limit", score=193.4, threshold=190.0,
                             signal="zone1_temperature", value=193.4, message="zone 1 above its normal band")
    anomalies += [tunnel_anomaly]
    store.add_anomalies(anomalies)

    cav = Alarm(CAVITATION_ID, "product_pump", "fault", AlarmState.ACTIVE_UNACK, Priority.HIGH,
                "Product pump: cavitation suspected (86 %)", raised, raised, anomaly=anomalies[20], severity="severe")
    flow = Alarm(FLOW_ID, "product_pump", "flow-limit", AlarmState.ACTIVE_UNACK, Priority.MEDIUM,
                 "Product pump flow low (82 L/min, normal 95–125 L/min)", raised + 30, raised + 30,
                 suppressed=True, parent_id=CAVITATION_ID, severity="moderate")
    tank = Alarm(TANK_ID, "filler", "tank_level-limit", AlarmState.ACTIVE_UNACK, Priority.LOW,
                 "Filler bowl level low (41 %, normal 45–75 %)", raised + 75, raised + 75,
                 suppressed=True, parent_id=CAVITATION_ID, severity="slight")
    tunnel = Alarm(TUNNEL_ID, "heat_tunnel", "zone1_temperature:limit", AlarmState.ACTIVE_ACK, Priority.CRITICAL,
                   "Heat tunnel zone 1 temperature high (193.4 degC)", tunnel_at, tunnel_at + 40,
                   anomaly=tunnel_anomaly, acked_by="maria", acked_at=tunnel_at + 40, severity="moderate")
    comp_raised = now - 20 * 60
    comp = Alarm(COMPRESSOR_ID, "air_compressor", "header_pressure:limit", AlarmState.RTN_UNACK, Priority.LOW,
                 "Air header pressure low (6.2 bar)", comp_raised, comp_raised + 90, severity="slight")
    store.add_alarm_events([
        AlarmEvent(COMPRESSOR_ID, comp_raised, "raised", AlarmState.ACTIVE_UNACK,
                   _copy(comp, state=AlarmState.ACTIVE_UNACK, updated_at=comp_raised)),
        AlarmEvent(COMPRESSOR_ID, comp_raised + 90, "returned", AlarmState.RTN_UNACK, comp),
        AlarmEvent(CAVITATION_ID, raised, "raised", AlarmState.ACTIVE_UNACK, cav),
        AlarmEvent(FLOW_ID, raised + 30, "raised", AlarmState.ACTIVE_UNACK, flow),
        AlarmEvent(TANK_ID, raised + 75, "raised", AlarmState.ACTIVE_UNACK, tank),
        AlarmEvent(TUNNEL_ID, tunnel_at, "raised", AlarmState.ACTIVE_UNACK,
                   _copy(tunnel, state=AlarmState.ACTIVE_UNACK, updated_at=tunnel_at, acked_by=None, acked_at=None)),
        AlarmEvent(TUNNEL_ID, tunnel_at + 40, "acknowledged", AlarmState.ACTIVE_ACK, tunnel, actor="maria"),
    ])

    ev = [Evidence("signal", "product_pump.suction_pressure", "0.31 bar, below its 0.8-1.3 bar band", 0.31),
          Evidence("signal", "product_pump.flow", "82 L/min at unchanged speed", 82.0),
          Evidence("runbook", "RB-PUMP-002#symptoms", "suction pressure and flow falling together")]
    store.add_diagnosis(Diagnosis(
        CAVITATION_ID,
        summary="The product pump is most likely cavitating: suction pressure fell below its band while flow and "
                "discharge pressure dropped at unchanged speed and vibration rose.",
        causes=[Cause("pump_cavitation", "Pump cavitation (starved suction)", 0.78, ev, origin="model"),
                Cause("clogged_filter", "Clogged inlet filter restricting suction", 0.15,
                      [Evidence("signal", "product_pump.filter_dp", "0.21 bar, still within band", 0.21)],
                      origin="model"),
                Cause("sensor_drift", "Suction pressure transmitter drift", 0.07, [], origin="runbook")],
        steps=[Step("Check the supply tank level against the suction pressure", "check", "RB-PUMP-002#checks", "model"),
               Step("Check the filter differential pressure", "check", "RB-PUMP-003#checks", "runbook"),
               Step("Reduce pump speed to stop the damage while the cause is found", "action",
                    "RB-PUMP-002#actions", "model"),
               Step("Restore suction: open the valve fully, refill the tank, clean the strainer", "action",
                    "RB-PUMP-002#actions", "runbook")],
        safety=["Lock out the pump and isolate suction and discharge before opening the strainer."],
        would_change=["A normal filter dP with a full supply tank points to air ingress at a suction gasket."],
        origin="model", created_at=raised + 6, model="qwen2.5-1.5b-instruct-q4_k_m", latency_s=5.2,
    ))
    store.add_turns([
        Turn(CAVITATION_ID, "operator", "Can we keep running at reduced speed?", raised + 120, "maria", "sample-1"),
        Turn(CAVITATION_ID, "copilot", "Yes, for a short time: reducing product_pump.speed lowers the required "
             "NPSH (RB-PUMP-002#actions). Restore the suction first; do not run against a closed suction valve.",
             raised + 124, None, "sample-1", "model"),
    ])
    return {"start": start, "onset": onset, "raised": raised, "tunnel": tunnel_at, "now": now}


def _copy(alarm: Alarm, **changes) -> Alarm:
    d = alarm.to_dict()
    d.update({k: (v.value if hasattr(v, "value") and not isinstance(v, (int, float)) else v)
              for k, v in changes.items()})
    return Alarm.from_dict(d)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Seed a store file with a sample half hour of the packaging line.")
    p.add_argument("--db", required=True)
    args = p.parse_args()
    with Store(args.db) as s:
        marks = seed(s)
    print(f"seeded {args.db}: cavitation raised at {time.strftime('%H:%M:%S', time.gmtime(marks['raised']))} UTC")
