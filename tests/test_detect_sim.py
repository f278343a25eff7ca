"""The detect station on the simulated packaging line, replayed row by row as live: faults caught, normal quiet."""

from __future__ import annotations

import pandas as pd
import pytest

from factory_copilot.config import SIMULATED_LINE, load_line
from factory_copilot.detect.evaluate import SIM_DETECTOR, run_scenario, train_models

simulators = pytest.importorskip("simulators")

LINE = load_line(SIMULATED_LINE)


def frame(run):
    return simulators.simulate_frame(LINE, seed=run.seed, duration_s=run.duration_s, schedule=run.schedule,
                                     scenarios=run.scenarios)


@pytest.fixture(scope="module")
def models():
    # three shifts of history (as `train --simulate`): products (line speeds) and mode stretches enough to learn every mode's normal
    shifts = [frame(r).reset_index(drop=True).assign(run=i) for i, r in enumerate(
        simulators.normal_runs(seed=901, hours=8) + simulators.normal_runs(seed=903, hours=8)
        + simulators.normal_runs(seed=905, hours=8))]
    return train_models(LINE, pd.concat(shifts, ignore_index=True), detector_params=SIM_DETECTOR, progress=False)


def test_every_mode_learnt_and_normal_shifts_stay_quiet(models):
    assert set(models.detector.models_) == {"startup", "running", "changeover", "idle"}
    result = run_scenario(models, LINE, "normal", frame(simulators.normal_runs(seed=902, hours=5)[0]))
    assert result.false_alarms_before == 0  # 5 h across every mode, alarms counted after a 5 s on-delay


@pytest.mark.parametrize("name", ["pump_cavitation_mild", "belt_slip_mild", "stuck_sensor"])
def test_fault_scenarios_are_detected_soon_after_onset(models, name):
    run = next(r for r in simulators.standard_scenarios(seed=7) if r.name == name)
    result = run_scenario(models, LINE, name, frame(run))
    assert result.detected and result.false_alarms_before == 0
    assert result.delay_s < 600
    if name == "stuck_sensor":
        assert result.kinds.get("stuck") and result.named == "stuck_sensor"
    else:
        assert result.kinds.get("multivariate")
