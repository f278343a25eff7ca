"""The simulated line as evaluation data: training history, fault scenarios and incidents.

The commands that train, evaluate or explain on the simulated line (``train`` without ``--history``,
``evaluate``, ``explain --scenario``, ``evaluate --copilot``, the demo) get them from here through
``factory_copilot.simulated``: the runtime that serves a real line never imports the simulator.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

import numpy as np
import pandas as pd
from tqdm import tqdm

from factory_copilot.alarms.engine import AlarmSettings
from factory_copilot.alarms.evaluate import AFTER_S, FAULT_S, replay_alarms, summarise
from factory_copilot.alarms.text import alarm_text
from factory_copilot.catalogue import Fault, faults_of, load_faults
from factory_copilot.names import UNKNOWN
from factory_copilot.config import SIMULATED_FAULTS, LineConfig
from factory_copilot.copilot.evaluate import Case
from factory_copilot.detect.evaluate import SIM_DETECTOR, run_scenario, train_models
from factory_copilot.detect.persist import TrainedDetector
from factory_copilot.records import Alarm, AlarmState, Anomaly, Mode, Quality, Reading
from simulators import (
    FaultScenario,
    ModeSchedule,
    normal_runs,
    simulate_frame,
    standard_scenarios,
)


def simulated_history(line: LineConfig, seed: int = 1, normal_hours: float = 24.0, fault_sets: int = 2,
                      progress: bool = True) -> pd.DataFrame:
    """Training history from the simulator: normal shifts (all modes) plus ``fault_sets`` sets of the standard scenarios."""

    runs = [r for h in range(int(np.ceil(normal_hours / 8))) for r in normal_runs(seed=seed * 100 + h, hours=8)]
    for k in range(fault_sets):
        runs += standard_scenarios(seed=seed + 10 * k)
    frames = []
    for i, r in enumerate(tqdm(runs, desc="simulate history", unit="run", disable=not progress)):
        f = simulate_frame(line, seed=r.seed, duration_s=r.duration_s, schedule=r.schedule, scenarios=r.scenarios)
        frames.append(f.reset_index(drop=True).assign(run=i))
    return pd.concat(frames, ignore_index=True)


def evaluate_sim(line: LineConfig, models: TrainedDetector | None = None, seed: int = 2, normal_hours: float = 8.0,
                 progress: bool = True) -> dict:
    """Every standard fault scenario and normal shifts (seeds unseen in training), replayed as live."""

    if models is None:
        models = train_models(line, simulated_history(line, seed=1, progress=progress),
                              detector_params=SIM_DETECTOR, progress=progress)
    runs = standard_scenarios(seed=seed) + [
        r for h in range(int(np.ceil(normal_hours / 8))) for r in normal_runs(seed=seed * 100 + 50 + h, hours=8)
    ]
    results = []
    t0 = time.perf_counter()
    n_rows = 0
    for r in tqdm(runs, desc="sim scenarios", unit="run", disable=not progress):
        frame = simulate_frame(line, seed=r.seed, duration_s=r.duration_s, schedule=r.schedule, scenarios=r.scenarios)
        n_rows += len(frame)
        results.append(run_scenario(models, line, r.name, frame))
    elapsed = time.perf_counter() - t0
    faults = [r for r in results if r.fault != "normal"]
    normals = [r for r in results if r.fault == "normal"]
    tp = sum(r.tp for r in results)
    fp = sum(r.fp for r in results)
    fn = sum(r.fn for r in results)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    normal_hours_run = sum(r.rows for r in normals) * line.sampling_interval_s / 3600 or 1.0
    false_alarms = sum(r.false_alarms_before for r in normals)
    detected = [r for r in faults if r.detected]
    return {
        "scenarios": [r.__dict__ for r in results],
        "detected": len(detected),
        "faults": len(faults),
        "mean_delay_s": float(np.mean([r.delay_s for r in detected])) if detected else None,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "normal_hours": normal_hours_run,
        "false_alarms": false_alarms,
        "false_alarms_per_8h": false_alarms / normal_hours_run * 8,
        "classification_accuracy": (sum(r.named == r.fault for r in detected) / len(detected)) if detected else 0.0,
        "classification_accuracy_first_minute": (
            sum(r.named_first == r.fault for r in detected) / len(detected) if detected else 0.0
        ),
        "rows_per_s_replay": n_rows / elapsed if elapsed else None,
    }


def alarm_runs(seed: int = 2, normal_hours: float = 16.0) -> list:
    """The standard fault scenarios with their fault repaired, and one stretch of normal running (all modes)."""

    runs = []
    for run in standard_scenarios(seed=seed):
        fault = run.scenarios[0]
        repaired = dataclasses.replace(fault, end_s=fault.start_s + FAULT_S)
        runs.append(dataclasses.replace(run, duration_s=repaired.end_s + AFTER_S, scenarios=[repaired]))
    if normal_hours > 0:
        runs += normal_runs(seed=seed * 100 + 77, hours=normal_hours)
    return runs


def evaluate_alarms(line: LineConfig, models: TrainedDetector, seed: int = 2, normal_hours: float = 16.0,
                    settings: AlarmSettings | None = None, faults: Mapping[str, Fault] | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Every standard fault scenario (repaired) and ``normal_hours`` of normal running, through detect and alarms."""

    results = []
    t0 = time.perf_counter()
    rows = 0
    for run in tqdm(alarm_runs(seed, normal_hours), desc="alarm scenarios", unit="run", disable=not progress):
        frame = simulate_frame(line, seed=run.seed, duration_s=run.duration_s, schedule=run.schedule,
                               scenarios=run.scenarios)
        rows += len(frame)
        events = replay_alarms(models, line, frame, settings, faults)
        fault = run.scenarios[0].fault_type if run.scenarios else "normal"
        start, end = float(frame.index[0]), float(frame.index[-1])
        results.append(summarise(run.name, fault, events, start, end))
    elapsed = time.perf_counter() - t0
    faulty = [r for r in results if r["fault"] != "normal"]
    hours = sum(r["hours"] for r in faulty) or 1.0
    return {
        "scenarios": results,
        "fault_alarms_per_hour": sum(r["alarms"] for r in faulty) / hours,
        "worst_peak_10min": max((r["peak_10min"] for r in faulty), default=0),
        "standing_after_clear": sum(len(r["standing"]) for r in faulty),
        "manageable": all(r["manageable"] for r in results),
        "rows_per_s": rows / elapsed if elapsed else None,
    }


def simulated_incident(line: LineConfig, fault_type: str, at_s: float = 600.0, seed: int = 0,
                       window_s: float = 600.0) -> tuple[Alarm, list[Reading]]:
    """Simulate the line with ``fault_type`` injected and return the alarm ``at_s`` after onset with the readings before it.

    The anomaly carries no contributions and no classifier vote: the copilot computes shares from
    how far each signal is outside its normal band (the detector's would replace them in the pipeline).
    """

    faults = load_faults(SIMULATED_FAULTS)  # the simulator injects the demo's faults
    if fault_type not in faults:
        raise SystemExit(f"error: unknown scenario {fault_type!r}; use one of {', '.join(faults)}")
    onset = 1200.0
    frame = simulate_frame(line, seed=seed, duration_s=onset + at_s, scenarios=[FaultScenario(fault_type, start_s=onset)],
                           schedule=ModeSchedule.running())
    t_alarm = float(frame.index[-1])
    recent = frame[frame.index > t_alarm - window_s]
    keys = line.signal_keys()
    readings = [
        Reading(float(ts), *k.split(".", 1), float(v), Quality.GOOD, "simulator", line.signal(k).unit)
        for ts, row in zip(recent.index, recent[keys].itertuples(index=False)) for k, v in zip(keys, row)
    ]
    fault = faults[fault_type]
    mode = Mode(recent["mode"].iloc[-1])
    anomaly = Anomaly(ts=t_alarm, asset=fault.asset, kind="multivariate", score=0.0, threshold=0.0, mode=mode,
                      message="signals departing together")
    # the alarm text as the alarm engine writes it (no classifier vote here, so no fault named: the answer is not given)
    alarm = Alarm(f"sim-{fault_type}", fault.asset, anomaly.condition, AlarmState.ACTIVE_UNACK, fault.priority,
                  alarm_text(line, faults_of(line), anomaly, "moderate"), t_alarm, t_alarm, anomaly)
    return alarm, readings


def simulated_cases(line: LineConfig, at_s: float = 600.0, seed: int = 0, only: list[str] | None = None) -> list[Case]:
    """Every fault of the simulated line, and each again with its knowledge taken away (the answer is then unknown)."""

    cases = []
    unknown = sorted(set(only or []) - set(faults_of(line)))
    if unknown:
        raise SystemExit(f"error: --faults: {', '.join(unknown)} not in the line's catalogue ({', '.join(faults_of(line))})")
    for i, fault in enumerate(faults_of(line)):
        if only and fault not in only:
            continue
        alarm, readings = simulated_incident(line, fault, at_s, seed + i)
        cases.append(Case(fault, fault, alarm, readings))
        cases.append(Case(f"{fault} (not catalogued)", UNKNOWN, alarm, readings, leave_out=fault))
    return cases
