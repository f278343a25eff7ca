"""A foreign test rig with its own small fault catalogue: a pump rig with two accelerometers, flow and pressure.

Not the demo and not the compressor station: rotor imbalance shows as the accelerometers rising out of their
band, a partly closed outlet valve as the flow falling while the outlet pressure rises; a runbook each.
``rig_line(folder)`` writes the line file, catalogue and runbooks.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from factory_copilot.config import LineConfig, load_line
from factory_copilot.records import Reading

SIGNALS = {"accel_x": ("g", (0.2, 0.8)), "accel_y": ("g", (0.2, 0.8)), "flow": ("m3/h", (30, 50)),
           "outlet_pressure": ("bar", (2.0, 3.0))}
HEALTHY = {"accel_x": 0.5, "accel_y": 0.5, "flow": 40.0, "outlet_pressure": 2.5}
RUNBOOK = """---
id: RB-RIG-001
title: Pump rotor imbalance
asset: rig
faults: [rotor_imbalance]
signals: [rig.accel_x, rig.accel_y]
signature: {rig.accel_x: up, rig.accel_y: up}
revision: 2026-12
---
# Pump rotor imbalance

## Symptoms {#symptoms}
- `rig.accel_x` and `rig.accel_y` rising above their band at running speed.

## Checks to confirm {#checks}
1. Check the rotor for deposits or a lost balance weight.

## Corrective actions {#actions}
1. Clean and rebalance the rotor.

## Safety {#safety}
- Lock out the pump before opening the casing.
"""


VALVE = """---
id: RB-RIG-002
title: Outlet valve partly closed
asset: rig
faults: [outlet_valve_partly_closed]
signals: [rig.flow, rig.outlet_pressure]
signature: {rig.flow: down, rig.outlet_pressure: up}
revision: 2026-12
---
# Outlet valve partly closed

## Symptoms {#symptoms}
- `rig.flow` falling while `rig.outlet_pressure` rises.

## Checks to confirm {#checks}
1. Check the outlet valve's position indicator.

## Corrective actions {#actions}
1. Open the outlet valve fully.
"""


def rig_line(folder: Path) -> LineConfig:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "runbooks").mkdir(exist_ok=True)
    (folder / "runbooks" / "RB-RIG-001-rotor-imbalance.md").write_text(RUNBOOK)
    (folder / "runbooks" / "RB-RIG-002-outlet-valve.md").write_text(VALVE)
    (folder / "faults.yaml").write_text(yaml.safe_dump({"faults": [
        {"id": "rotor_imbalance", "name": "Pump rotor imbalance", "asset": "rig", "priority": "high",
         "signals": ["rig.accel_x", "rig.accel_y"]},
        {"id": "outlet_valve_partly_closed", "name": "Outlet valve partly closed", "asset": "rig", "priority": "medium",
         "signals": ["rig.flow", "rig.outlet_pressure"]}]}, sort_keys=False))
    line = {"site": "test-lab", "line": "pump-rig-3", "description": "A pump test rig.", "sampling_interval_s": 1.0,
            "mqtt": {"host": "127.0.0.1", "port": 1883}, "knowledge": {"faults": "faults.yaml", "runbooks": "runbooks"},
            "assets": [{"id": "rig", "name": "Pump rig", "signals": [
                {"name": name, "unit": unit, "normal": list(band),
                 "source": {"mqtt": {"topic": "lab/rig3", "field": name}}} for name, (unit, band) in SIGNALS.items()]}]}
    path = folder / "rig.yaml"
    path.write_text(yaml.safe_dump(line, sort_keys=False))
    return load_line(path)


def readings(moves: dict[str, tuple[float, float]], t0: float = 0.0, t1: float = 600.0, step: float = 2.0) -> list[Reading]:
    """Each signal from its healthy value, or moving linearly between the two values ``moves`` gives it."""
    out = []
    n = int((t1 - t0) / step) + 1
    for i in range(n):
        for name, base in HEALTHY.items():
            start, end = moves.get(name, (base, base))
            value = start + (end - start) * i / (n - 1) + 0.002 * math.sin(i * 1.3 + len(name))
            out.append(Reading(t0 + i * step, "rig", name, value))
    return out
