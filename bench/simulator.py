"""Benchmark of the simulated line: offline frame speed, per-step cost, and how fast each standard fault shows.

Run: .venv/bin/python bench/simulator.py
Last line: seconds to simulate 8 h at dt 1 s (the figure that matters for training on offline frames).
"""

from __future__ import annotations

import time

import numpy as np

from factory_copilot.catalogue import load_faults
from factory_copilot.config import SIMULATED_FAULTS, SIMULATED_LINE, load_line
from simulators import ModeSchedule, SimulatedLine, simulate_frame, standard_scenarios


def time_to_abnormal(frame, line, fault_type: str, onset_s: float) -> float | None:
    """Seconds from onset until a catalogue signal's 30 s mean leaves its running band (stuck: stops moving)."""
    after = frame[frame.index >= onset_s]
    first = []
    for key in load_faults(SIMULATED_FAULTS)[fault_type].signals:
        s = after[key]
        if fault_type == "stuck_sensor":
            bad = s.rolling(30).std() == 0
        else:
            lo, hi = line.signal(key).normal
            mean = s.rolling(30).mean()
            bad = (mean < lo) | (mean > hi)
        hits = np.flatnonzero(bad.to_numpy())
        if len(hits):
            first.append(after.index[hits[0]] - onset_s)
    return min(first) if first else None


def main() -> None:
    line = load_line(SIMULATED_LINE)
    simulate_frame(line, duration_s=60)  # warm imports

    t0 = time.perf_counter()
    sim = SimulatedLine(line, seed=0, schedule=ModeSchedule.default(), start_ts=0.0)
    n = 3600
    for _ in range(n):
        sim.step()
    step_us = (time.perf_counter() - t0) / n * 1e6
    print(f"SimulatedLine.step(): {step_us:.0f} us per step of {len(line.signal_keys(include_mode=True))} readings "
          f"(real time at 1 s allows a speed factor of ~{1e6 / step_us:.0f}x)")

    print("time to clearly abnormal (30 s mean of a catalogue signal out of its running band):")
    for run in standard_scenarios(seed=0):
        frame = run.frame(line)
        sc = run.scenarios[0]
        t = time_to_abnormal(frame, line, sc.fault_type, sc.start_s)
        shown = "never" if t is None else f"{t / 60:5.1f} min"
        print(f"  {run.name:28s} severity {sc.severity:.1f}: {shown}")

    t0 = time.perf_counter()
    frame = simulate_frame(line, seed=0, duration_s=8 * 3600, schedule=ModeSchedule.default())
    elapsed = time.perf_counter() - t0
    print(f"simulate_frame 8 h at dt 1 s: {len(frame)} rows x {frame.shape[1]} columns")
    print(f"8h_frame_seconds={elapsed:.2f}")


if __name__ == "__main__":
    main()
