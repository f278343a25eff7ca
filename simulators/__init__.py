"""A simulated packaging line that behaves like real equipment: coupled physics, modes, growing faults."""

from simulators import modes
from simulators.line import PLANT_KEYS, SimulatedLine, simulate_frame
from simulators.scenarios import (
    DEFAULT_RAMP_S,
    SENSOR_FAULTS,
    FaultScenario,
    ModeSchedule,
    ScenarioRun,
    Segment,
    normal_runs,
    read_ground_truth,
    standard_scenarios,
    write_ground_truth,
)

__all__ = [
    "DEFAULT_RAMP_S",
    "PLANT_KEYS",
    "SENSOR_FAULTS",
    "FaultScenario",
    "ModeSchedule",
    "ScenarioRun",
    "Segment",
    "SimulatedLine",
    "normal_runs",
    "read_ground_truth",
    "simulate_frame",
    "standard_scenarios",
    "write_ground_truth",
    "modes",
]
