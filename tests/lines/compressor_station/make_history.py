"""A small physics-ish compressor station for tests: regimes, transitions, drift, and labelled faults.

The station (line.yaml here): an oil-injected screw compressor `compressor_a` with a modulating
inlet valve, a refrigerated `dryer`, an air `receiver` and the distribution `header`. The plant's
air demand (header.flow) moves between three regimes (night, day, peak) with ramps between them;
the compressor holds the receiver at the pressure setpoint. Temperatures follow the load and the
ambient with first-order lags (the oil slowest), the ambient swings over the day. Faults grow
from an onset over a ramp:

  oil_cooler_fouling      oil and discharge temperature creep up (more at high load), current slightly up
  inlet_valve_sticking    stick-slip of the inlet valve: discharge pressure oscillates and sags under load,
                          motor current swings with it
  dryer_refrigerant_loss  dew point rises (out of the catalogue: for "unknown" tests)

    python tests/lines/compressor_station/make_history.py   # writes history.parquet beside it, once

The recorded history is committed; tests that need other runs (a duty point between regimes,
a hot day, a fault the history does not hold) call ``simulate`` with their own seed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

HERE = Path(__file__).resolve().parent
HISTORY = HERE / "history.parquet"
START = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc).timestamp()  # a Monday, 00:00 UTC

# the regimes of the line file, and where the demand sits in each
REGIMES = {"night": (4.0, 8.0), "day": (10.0, 16.0), "peak": (18.0, 24.0)}
CENTRE = {"night": 6.0, "day": 13.0, "peak": 21.0}
FAULTS = ("oil_cooler_fouling", "inlet_valve_sticking", "dryer_refrigerant_loss")
# resolution each signal is recorded at (what the gateway sends)
RESOLUTION = {
    "compressor_a.discharge_pressure": 0.001,
    "compressor_a.discharge_temperature": 0.01,
    "compressor_a.oil_temperature": 0.01,
    "compressor_a.motor_current": 0.1,
    "compressor_a.vibration": 0.001,
    "dryer.inlet_temperature": 0.01,
    "dryer.dew_point": 0.01,
    "receiver.pressure": 0.001,
    "header.flow": 0.01,
    "header.pressure_setpoint": 0.1,
}
SIGNALS = list(RESOLUTION)


@dataclass
class Fault:
    """A fault growing from ``start_s`` (seconds into the run) to full ``severity`` over ``ramp_s``."""

    name: str
    start_s: float
    ramp_s: float = 2400.0
    severity: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in FAULTS:
            raise ValueError(f"unknown fault {self.name!r}; the generator knows {', '.join(FAULTS)}")

    def level(self, t: np.ndarray) -> np.ndarray:
        return self.severity * np.clip((t - self.start_s) / max(self.ramp_s, 1.0), 0.0, 1.0)


def _lag(x: np.ndarray, tau_s: float) -> np.ndarray:
    """First-order lag (1 s steps) started in steady state."""
    a = 1.0 / max(tau_s, 1.0)
    return lfilter([a], [1.0, -(1.0 - a)], x, zi=[(1.0 - a) * x[0]])[0]


def _ar1(rng: np.random.Generator, n: int, tau_s: float, sd: float) -> np.ndarray:
    """Coloured noise with correlation time ``tau_s`` and standard deviation ``sd``."""
    phi = np.exp(-1.0 / tau_s)
    e = rng.normal(scale=sd * np.sqrt(1 - phi**2), size=n)
    return lfilter([1.0], [1.0, -phi], e, zi=[phi * rng.normal(scale=sd)])[0]


def demand(segments: list[tuple[str | float, float, float]], rng: np.random.Generator) -> np.ndarray:
    """Air demand per second: (regime name or flow, duration s, ramp s from the previous level) segments.

    Inside a regime the demand wanders around its centre and stays in its range; a numeric level
    (a duty point between regimes) wanders as much around that level.
    """
    parts = []
    prev = None
    for target, duration, ramp in segments:
        n = int(duration)
        level = CENTRE[target] if isinstance(target, str) else float(target)
        lo, hi = REGIMES[target] if isinstance(target, str) else (level - 1.2, level + 1.2)
        wander = np.clip(level + _ar1(rng, n, 300.0, 0.5) + _ar1(rng, n, 20.0, 0.25), lo + 0.3, hi - 0.3)
        if prev is not None and ramp > 0:
            k = min(int(ramp), n)
            share = np.linspace(0.0, 1.0, k, endpoint=False)
            wander[:k] = prev + share * (wander[:k] - prev)
        parts.append(wander)
        prev = wander[-1]
    return np.concatenate(parts)


def ambient(t: np.ndarray, rng: np.random.Generator, start: float = START, offset: float = 0.0,
            drift_per_h: float = 0.0) -> np.ndarray:
    """Compressor-room temperature: a daily swing (warmest mid-afternoon, by the clock), weather, an optional drift."""
    hour = ((start + t) % 86400.0) / 3600.0
    daily = 21.0 + 3.5 * np.sin(2 * np.pi * (hour - 9.0) / 24.0)
    return daily + _ar1(rng, len(t), 3 * 3600.0, 0.8) + offset + drift_per_h * t / 3600.0


def simulate(
    segments: list[tuple[str | float, float, float]],
    seed: int,
    faults: list[Fault] = (),
    start: float = START,
    setpoints: list[tuple[float, float]] | None = None,
    ambient_offset: float = 0.0,
    ambient_drift_per_h: float = 0.0,
) -> pd.DataFrame:
    """One recording at 1 s: ``ts``, a column per 'asset.signal' (rounded as recorded), ``fault`` (label).

    ``setpoints``: (pressure setpoint bar, duration s) blocks, repeated; default 7.0 bar throughout.
    """
    rng = np.random.default_rng(seed)
    flow = demand(segments, rng)
    n = len(flow)
    t = np.arange(n, dtype=float)
    sp = np.full(n, 7.0)
    if setpoints:
        blocks = np.concatenate([np.full(int(d), v) for v, d in setpoints])
        sp = np.resize(blocks, n)
    amb = ambient(t, rng, start, ambient_offset, ambient_drift_per_h)
    level = {name: np.zeros(n) for name in FAULTS}
    for f in faults:
        level[f.name] = np.maximum(level[f.name], f.level(t))
    fouling, sticking, refrigerant = (level[name] for name in FAULTS)

    # the pressure loop holds the receiver at the setpoint, drooping a little with load
    receiver = _lag(sp, 30.0) - 0.004 * flow + _ar1(rng, n, 8.0, 0.012)
    # a sticking inlet valve: stick-slip around the setpoint (a sawtooth of 20-40 s) and no reserve at high load
    period = 20.0 + 20.0 * rng.random()
    phase = (t / period + _ar1(rng, n, 200.0, 0.3)) % 1.0
    saw = 2.0 * np.abs(phase - 0.5) - 0.5  # triangle, -0.5..0.5
    receiver = receiver + sticking * (0.45 * saw - 0.018 * np.maximum(flow - 8.0, 0.0))
    dryer_drop = 0.0008 * flow**2  # dryer and filters
    discharge_p = receiver + dryer_drop + 0.05 + _ar1(rng, n, 3.0, 0.006)
    current = 55.0 + 6.2 * flow * np.sqrt(np.maximum(discharge_p, 1.0) / 7.0)
    current = _lag(current, 3.0) + sticking * 24.0 * saw + 3.0 * fouling + _ar1(rng, n, 2.0, 0.8)
    oil = _lag(amb + 38.0 + 0.75 * flow + fouling * (6.0 + 0.4 * flow), 400.0) + _ar1(rng, n, 30.0, 0.08)
    discharge_t = _lag(oil + 12.0 + 0.3 * flow, 60.0) + _ar1(rng, n, 5.0, 0.12)
    vibration = 2.1 + 0.025 * flow + sticking * 0.1 * np.abs(saw) + _ar1(rng, n, 1.5, 0.05)
    inlet = _lag(amb + 9.0 + 0.35 * flow, 180.0) + _ar1(rng, n, 20.0, 0.06)
    dew = _lag(3.0 + 0.09 * flow + 0.06 * (inlet - 30.0) + 7.0 * refrigerant, 300.0) + _ar1(rng, n, 10.0, 0.05)
    measured_flow = flow + rng.normal(scale=0.08, size=n)

    values = {
        "compressor_a.discharge_pressure": discharge_p,
        "compressor_a.discharge_temperature": discharge_t,
        "compressor_a.oil_temperature": oil,
        "compressor_a.motor_current": current,
        "compressor_a.vibration": vibration,
        "dryer.inlet_temperature": inlet,
        "dryer.dew_point": dew,
        "receiver.pressure": receiver,
        "header.flow": measured_flow,
        "header.pressure_setpoint": sp,
    }
    frame = pd.DataFrame({"ts": start + t})
    for key, v in values.items():
        step = RESOLUTION[key]
        frame[key] = np.round(np.round(v / step) * step, 6)
    label = np.full(n, "normal", dtype=object)
    for f in faults:
        label[t >= f.start_s] = f.name
    frame["fault"] = label
    return frame


def day_segments(days: int = 1) -> list[tuple[str, float, float]]:
    """A working day's demand: night, ramp up at shift start, day with two peaks, ramp down in the evening."""
    h = 3600.0
    day = [
        ("night", 6 * h, 0), ("day", 3 * h, 1200), ("peak", 2 * h, 900), ("day", 3 * h, 900),
        ("peak", 2 * h, 900), ("day", 6 * h, 900), ("night", 2 * h, 1800),
    ]
    return day * days


# the pressure setpoint the operators use over a day: mostly 7 bar, an hour or two lower or higher at any load
SETPOINTS = [(7.0, 3 * 3600), (6.8, 2 * 3600), (7.2, 2.5 * 3600), (7.0, 4 * 3600), (7.2, 2 * 3600), (6.8, 3 * 3600),
             (7.0, 4 * 3600), (6.8, 1.5 * 3600), (7.2, 2 * 3600)]


def recorded_history(seed: int = 1) -> pd.DataFrame:
    """What history.parquet holds: a day of normal running, then four fault episodes (each its own run)."""
    h = 3600.0
    runs = [simulate(day_segments(1), seed, setpoints=SETPOINTS)]
    episodes = [
        ("day", "oil_cooler_fouling"), ("peak", "oil_cooler_fouling"),
        ("day", "inlet_valve_sticking"), ("peak", "inlet_valve_sticking"),
    ]
    for i, (regime, fault) in enumerate(episodes):
        start = START + 2 * 86400 + i * 86400  # later days, so their clocks never overlap
        runs.append(simulate([(regime, 2 * h, 0)], seed + 10 + i, [Fault(fault, 40 * 60)], start=start))
    return pd.concat([r.assign(run=i) for i, r in enumerate(runs)], ignore_index=True)


def main() -> None:
    history = recorded_history()
    history.to_parquet(HISTORY, index=False, compression="zstd")
    size = HISTORY.stat().st_size
    print(f"wrote {HISTORY} ({len(history)} rows, {size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
