"""What happens to the simulated line over time: the operating-mode schedule, injected faults and their ground truth.

A FaultScenario says which fault from ``seeds/faults.yaml`` starts when, on which asset
(and for sensor faults, which signal), and how its severity grows with time since onset.
A ModeSchedule says which operating mode the line is in at any time. ScenarioRun bundles
both for the standard evaluation runs; the ground truth goes to a JSON-lines file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from factory_copilot.catalogue import load_faults
from factory_copilot.config import SIMULATED_FAULTS
from factory_copilot.records import Mode
from simulators import modes


# Time (s) for a fault to grow from onset to its full severity; faults grow, they don't step.
DEFAULT_RAMP_S: dict[str, float] = {
    "bearing_wear": 720.0,
    "pump_cavitation": 480.0,
    "clogged_filter": 900.0,
    "belt_slip": 360.0,
    "heater_degradation": 600.0,
    "motor_overload": 480.0,
    "air_leak": 480.0,
    "sensor_drift": 720.0,
    "stuck_sensor": 0.0,
}
# Faults that act on a measurement only; the physics goes on undisturbed.
SENSOR_FAULTS = frozenset({"sensor_drift", "stuck_sensor"})
# Bearing damage feeds on itself (spalls roughen the race, which spalls faster): exponential growth.
_EXPONENTIAL = frozenset({"bearing_wear"})
_EXP_RATE = 3.0
# A filter cake builds on itself: the resistance grows slowly, then faster.
_ACCELERATING = frozenset({"clogged_filter"})


@dataclass
class FaultScenario:
    """One injected fault with its ground truth; times are seconds since the simulation started."""

    fault_type: str
    start_s: float
    end_s: float | None = None
    severity: float = 1.0
    asset: str | None = None  # default: the catalogue's asset for that fault
    signal: str | None = None  # sensor faults: the 'asset.signal' whose reading is wrong
    ramp_s: float | None = None  # default: DEFAULT_RAMP_S[fault_type]

    def __post_init__(self) -> None:
        faults = load_faults(SIMULATED_FAULTS)
        if self.fault_type not in faults:
            raise ValueError(f"unknown fault_type {self.fault_type!r}; the catalogue has {', '.join(faults)}")
        entry = faults[self.fault_type]
        if self.fault_type in SENSOR_FAULTS:
            self.signal = self.signal or entry.signals[0]
            if "." not in self.signal:
                raise ValueError(f"{self.fault_type}: signal {self.signal!r} must be an 'asset.signal' key")
            self.asset = self.asset or self.signal.partition(".")[0]
            if self.asset != self.signal.partition(".")[0]:
                raise ValueError(f"{self.fault_type}: signal {self.signal!r} does not belong to asset {self.asset!r}")
        else:
            self.asset = self.asset or entry.asset
            if self.asset != entry.asset:
                raise ValueError(
                    f"{self.fault_type}: the simulator models this fault on {entry.asset!r} only, not {self.asset!r}"
                )
            if self.signal is not None:
                raise ValueError(f"{self.fault_type}: 'signal' applies to sensor faults only")
        if not self.severity > 0:
            raise ValueError(f"{self.fault_type}: severity must be > 0, got {self.severity}")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"{self.fault_type}: end_s {self.end_s} is not after start_s {self.start_s}")
        if self.ramp_s is None:
            self.ramp_s = DEFAULT_RAMP_S[self.fault_type]
        self.start_s = float(self.start_s)

    @property
    def is_sensor_fault(self) -> bool:
        return self.fault_type in SENSOR_FAULTS

    def active_at(self, t_s: float) -> bool:
        return t_s >= self.start_s and (self.end_s is None or t_s < self.end_s)

    def level(self, t_s: float) -> float:
        """How far the fault has grown at time t: 0 before onset and after repair, severity when fully grown."""
        if not self.active_at(t_s):
            return 0.0
        if not self.ramp_s:
            return self.severity
        u = min((t_s - self.start_s) / self.ramp_s, 1.0)
        if self.fault_type in _EXPONENTIAL:
            return self.severity * (math.exp(_EXP_RATE * u) - 1.0) / (math.exp(_EXP_RATE) - 1.0)
        if self.fault_type in _ACCELERATING:
            return self.severity * u * u
        return self.severity * u

    def shifted(self, by_s: float) -> "FaultScenario":
        """The same fault with its times moved by ``by_s`` (for injecting relative to 'now')."""
        return replace(self, start_s=self.start_s + by_s, end_s=None if self.end_s is None else self.end_s + by_s)

    def to_dict(self, start_ts: float | None = None) -> dict[str, Any]:
        """The ground-truth record; ``*_ts`` are epoch seconds when the run's start time is given."""
        return {
            "fault_type": self.fault_type,
            "asset": self.asset,
            "signal": self.signal,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "start_ts": None if start_ts is None else start_ts + self.start_s,
            "end_ts": None if start_ts is None or self.end_s is None else start_ts + self.end_s,
            "severity": self.severity,
            "ramp_s": self.ramp_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FaultScenario":
        keys = ("fault_type", "start_s", "end_s", "severity", "asset", "signal", "ramp_s")
        return cls(**{k: d[k] for k in keys if k in d})


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of a single operating mode; ``index`` counts segments across repeats."""

    index: int
    mode: Mode
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


class ModeSchedule:
    """The sequence of operating modes: (mode, duration_s) segments, optionally repeated forever."""

    def __init__(self, segments: Sequence[tuple[Mode | str, float]], repeat: bool = True):
        if not segments:
            raise ValueError("a mode schedule needs at least one (mode, duration_s) segment")
        parsed: list[tuple[Mode, float]] = []
        for i, (mode, duration) in enumerate(segments):
            mode = modes.named(mode)
            if not duration > 0:
                raise ValueError(f"segment {i} ({mode.value}): duration_s must be > 0, got {duration}")
            if math.isinf(duration) and i != len(segments) - 1:
                raise ValueError(f"segment {i} ({mode.value}): only the last segment may last forever")
            parsed.append((mode, float(duration)))
        self.segments = parsed
        self.repeat = repeat and not math.isinf(parsed[-1][1])
        self._cycle_s = sum(d for _, d in parsed)
        self._changeovers_per_cycle = sum(1 for m, _ in parsed if m is modes.CHANGEOVER)
        self._current = self._locate(0.0)

    @classmethod
    def default(cls) -> "ModeSchedule":
        """A realistic shift pattern (~4.6 h, repeated): runs of one product, changeovers, a break."""
        return cls(
            [
                (modes.STARTUP, 300),
                (modes.RUNNING, 3900),
                (modes.CHANGEOVER, 480),
                (modes.STARTUP, 300),
                (modes.RUNNING, 4500),
                (modes.IDLE, 900),  # break: line stopped, tunnel on standby
                (modes.STARTUP, 300),
                (modes.RUNNING, 3600),
                (modes.CHANGEOVER, 480),
            ]
        )

    @classmethod
    def running(cls, startup_s: float = 300.0) -> "ModeSchedule":
        """Start-up then running forever (the fault scenarios use this)."""
        return cls([(modes.STARTUP, startup_s), (modes.RUNNING, math.inf)], repeat=False)

    def _locate(self, t_s: float) -> Segment:
        t = max(t_s, 0.0)
        n = len(self.segments)
        cycle, offset = 0, 0.0
        if self.repeat:
            cycle = int(t // self._cycle_s)
            offset = cycle * self._cycle_s
        start = offset
        for i, (mode, duration) in enumerate(self.segments):
            if t < start + duration or i == n - 1 and not self.repeat:
                return Segment(cycle * n + i, mode, start, duration)
            start += duration
        # float rounding at the very end of a cycle
        return Segment((cycle + 1) * n, self.segments[0][0], start, self.segments[0][1])

    def segment_at(self, t_s: float) -> Segment:
        seg = self._current
        if seg.start_s <= t_s < seg.end_s:
            return seg
        self._current = seg = self._locate(t_s)
        return seg

    def mode_at(self, t_s: float) -> Mode:
        return self.segment_at(t_s).mode

    def product_at(self, index: int) -> int:
        """Which production run segment ``index`` belongs to: the number of changeovers before it."""
        n = len(self.segments)
        cycles, rest = divmod(index, n)
        return cycles * self._changeovers_per_cycle + sum(1 for m, _ in self.segments[:rest] if m is modes.CHANGEOVER)

    def to_dict(self) -> dict[str, Any]:
        return {"segments": [(m.value, d) for m, d in self.segments], "repeat": self.repeat}

    def __repr__(self) -> str:
        body = ", ".join(f"{m.value}:{d:g}s" for m, d in self.segments)
        return f"ModeSchedule([{body}], repeat={self.repeat})"


@dataclass
class ScenarioRun:
    """One evaluation run: a seed, a duration, a mode schedule and the faults injected."""

    name: str
    seed: int
    duration_s: float
    schedule: ModeSchedule
    scenarios: list[FaultScenario] = field(default_factory=list)

    def frame(self, line: Any, *, dt_s: float = 1.0, start_ts: float = 0.0):
        """The run as an offline frame (see simulate_frame)."""
        from simulators.line import simulate_frame

        return simulate_frame(
            line,
            seed=self.seed,
            duration_s=self.duration_s,
            dt_s=dt_s,
            scenarios=self.scenarios,
            schedule=self.schedule,
            start_ts=start_ts,
        )

    def ground_truth(self, start_ts: float = 0.0) -> list[dict[str, Any]]:
        return [s.to_dict(start_ts) for s in self.scenarios]


FAULT_ONSET_S = 1200.0
RUN_S = 2400.0


def standard_scenarios(seed: int = 0) -> list[ScenarioRun]:
    """Two runs per catalogue fault: full severity at minute 20 of 40, and a milder one (0.7) at minute 25 of 45.

    Each run starts up (5 min), runs normally, then the fault grows to clearly abnormal within
    5-15 min and continues to the end of the run. Seeds differ per run and follow ``seed``.
    """
    runs = []
    for i, fault_type in enumerate(load_faults(SIMULATED_FAULTS)):
        runs.append(
            ScenarioRun(
                name=fault_type,
                seed=seed * 1000 + i,
                duration_s=RUN_S,
                schedule=ModeSchedule.running(),
                scenarios=[FaultScenario(fault_type, start_s=FAULT_ONSET_S)],
            )
        )
        runs.append(
            ScenarioRun(
                name=f"{fault_type}_mild",
                seed=seed * 1000 + 500 + i,
                duration_s=RUN_S + 300,
                schedule=ModeSchedule.running(),
                scenarios=[FaultScenario(fault_type, start_s=FAULT_ONSET_S + 300, severity=0.7)],
            )
        )
    return runs


def normal_runs(seed: int = 0, hours: float = 8.0) -> list[ScenarioRun]:
    """Fault-free runs for false-alarm checks: the default shift pattern (all modes) for ``hours``."""
    return [ScenarioRun(name="normal", seed=seed, duration_s=hours * 3600.0, schedule=ModeSchedule.default())]


def write_ground_truth(path: str | Path, scenarios_or_line: Any, start_ts: float | None = None) -> Path:
    """Write the ground truth as JSON lines, one fault per line.

    Accepts a SimulatedLine (its start time is used), a ScenarioRun, or a sequence of FaultScenario.
    """
    if hasattr(scenarios_or_line, "ground_truth") and callable(scenarios_or_line.ground_truth):
        if start_ts is None:
            records = scenarios_or_line.ground_truth()
        else:
            records = scenarios_or_line.ground_truth(start_ts)
    else:
        records = [s.to_dict(start_ts) for s in _scenarios(scenarios_or_line)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def read_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    """Read a ground-truth JSON-lines file; a bad line is reported with the file and line number."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not a JSON ground-truth record: {exc}") from None
    return out


def _scenarios(items: Iterable[Any]) -> list[FaultScenario]:
    out = []
    for s in items:
        if not isinstance(s, FaultScenario):
            raise TypeError(f"expected FaultScenario, got {type(s).__name__}")
        out.append(s)
    return out
