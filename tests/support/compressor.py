"""The second test line (a compressor station, /work spec in tests/lines/compressor_station/) for copilot tests.

Its runbooks live in ``tests/lines/compressor_station/runbooks/``. The line file and fault
catalogue come from ``tests/lines/compressor_station/`` when that line file is there (the
detector engineer's); until then ``write_line`` writes a small line file and catalogue that
follow the same spec (same site, line, asset, signal and fault ids) into a folder of the test's.
Readings are made here: healthy running at a duty point, plus the symptoms of each fault.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from factory_copilot.config import SEEDS_DIR, LineConfig, load_line
from factory_copilot.records import Reading

HERE = Path(__file__).resolve().parents[1] / "lines" / "compressor_station"
RUNBOOKS = HERE / "runbooks"

# id: (unit, normal band) per spec; bands are what the station shows in healthy running (day regime)
SIGNALS = {
    "compressor_a": {"discharge_pressure": ("bar", (6.8, 7.6)), "discharge_temperature": ("degC", (75, 92)),
                     "oil_temperature": ("degC", (60, 78)), "motor_current": ("A", (80, 140)),
                     "vibration": ("mm/s", (0.5, 3.0))},
    "dryer": {"inlet_temperature": ("degC", (25, 42)), "dew_point": ("degC", (2, 5))},
    "receiver": {"pressure": ("bar", (6.6, 7.5))},
    "header": {"flow": ("m3/min", (4, 24)), "pressure_setpoint": ("bar", (7.0, 7.0))},
}
HEALTHY = {"compressor_a.discharge_pressure": 7.2, "compressor_a.discharge_temperature": 82.0,
           "compressor_a.oil_temperature": 70.0, "compressor_a.motor_current": 110.0, "compressor_a.vibration": 1.6,
           "dryer.inlet_temperature": 33.0, "dryer.dew_point": 3.4, "receiver.pressure": 7.0, "header.flow": 13.0,
           "header.pressure_setpoint": 7.0}
FAULTS = [
    {"id": "oil_cooler_fouling", "name": "Oil cooler fouling", "asset": "compressor_a", "priority": "high",
     "signals": ["compressor_a.oil_temperature", "compressor_a.discharge_temperature", "compressor_a.motor_current"]},
    {"id": "inlet_valve_sticking", "name": "Inlet valve sticking", "asset": "compressor_a", "priority": "medium",
     "signals": ["compressor_a.discharge_pressure", "compressor_a.motor_current", "receiver.pressure"]},
]
# how each fault moves the signals at full severity (value added at the end of the ramp; "swing" oscillates)
SYMPTOMS = {
    "oil_cooler_fouling": {"compressor_a.oil_temperature": 16.0, "compressor_a.discharge_temperature": 14.0,
                           "compressor_a.motor_current": 12.0},
    "inlet_valve_sticking": {"compressor_a.discharge_pressure": -0.9, "receiver.pressure": -0.8,
                             "compressor_a.motor_current": ("swing", 30.0)},
    "dryer_refrigerant_loss": {"dryer.dew_point": 9.0},  # out of the catalogue: nothing covers it
}


def their_line_file() -> Path | None:
    """The shared line file of the compressor station, once it has landed."""
    for path in sorted(HERE.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(data, dict) and data.get("line") == "compressor-station-2" and "assets" in data:
            return path
    return None


def write_line(folder: Path, knowledge: bool = True) -> Path:
    """A line file of the compressor station in ``folder`` (with its catalogue), following the shared spec."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "faults.yaml").write_text(yaml.safe_dump({"faults": FAULTS}, sort_keys=False))
    assets = []
    for asset, signals in SIGNALS.items():
        assets.append({"id": asset, "name": asset.replace("_", " ").title(), "signals": [
            {"name": name, "unit": unit, "normal": list(band),
             "source": {"mqtt": {"topic": f"plant/north-works/cs2/{asset}", "field": name}}}
            for name, (unit, band) in signals.items()]})
    line = {"site": "north-works", "line": "compressor-station-2",
            "description": "Compressor station 2: screw compressor A, refrigerated dryer, receiver, distribution header.",
            "sampling_interval_s": 1.0, "mode_signal": None, "mqtt": {"host": "127.0.0.1", "port": 1883},
            "service": {"source": "mqtt"}, "assets": assets}
    if knowledge:
        line["knowledge"] = {"faults": "faults.yaml", "runbooks": str(RUNBOOKS)}
    path = folder / "compressor_station.yaml"
    path.write_text(yaml.safe_dump(line, sort_keys=False))
    return path


def compressor_line(folder: Path) -> LineConfig:
    theirs = their_line_file()
    return load_line(theirs) if theirs else load_line(write_line(folder))


def readings(fault: str | None, t0: float = 0.0, t1: float = 900.0, onset: float = 300.0, step: float = 5.0,
             severity: float = 1.0) -> list[Reading]:
    """Healthy running at day load, and from ``onset`` the named fault growing to full severity at ``t1``."""
    moves = SYMPTOMS.get(fault or "", {})
    out = []
    n = int((t1 - t0) / step) + 1
    for i in range(n):
        t = t0 + i * step
        grow = max(0.0, min(1.0, (t - onset) / max(1.0, t1 - onset))) * severity
        for key, base in HEALTHY.items():
            wobble = 0.002 * abs(base) * math.sin(i * 1.7 + len(key))  # a healthy sensor always shows a little noise
            move = moves.get(key, 0.0)
            if isinstance(move, tuple):
                value = base + grow * move[1] * math.sin(i * 0.9)
            else:
                value = base + grow * move
            asset, _, signal = key.partition(".")
            out.append(Reading(t, asset, signal, value + wobble))
    return out


def demo_ids() -> dict[str, set[str]]:
    """Every id of the demo line's knowledge: none may appear in another line's diagnoses, prompts or schemas."""
    demo = load_line(SEEDS_DIR / "lines" / "packaging_line.yaml")
    faults = yaml.safe_load((SEEDS_DIR / "faults.yaml").read_text())["faults"]
    runbooks = set()
    for path in (SEEDS_DIR / "runbooks").glob("RB-*.md"):
        runbooks.add("-".join(path.name.split("-")[:3]))
    return {
        "asset": {a.id for a in demo.assets} - {"line"},  # "line" is a plain word too; its keys are checked below
        "signal": set(demo.signal_keys(include_mode=True)),
        "fault": {f["id"] for f in faults},
        "runbook": runbooks,
    }
